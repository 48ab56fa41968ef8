"""Tasks: a loss to train with, a distillation loss against the teacher, and a metric to judge by."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from vltrim.checks import kept_modes
from vltrim.data.inputs import Sample
from vltrim.tasks.captioning import caption_kd, caption_loss, evaluate_captioning
from vltrim.tasks.classification import classification_kd, classification_loss, evaluate_classification
from vltrim.tasks.itm import evaluate_itm, itm_kd, itm_loss
from vltrim.tasks.retrieval import (
    contrastive_loss,
    evaluate_retrieval,
    recall_at_k,
    similarity_kd_loss,
    zero_shot_accuracy,
)
from vltrim.tasks.segmentation import evaluate_segmentation, segmentation_kd, segmentation_loss
from vltrim.tasks.sentence import SentenceDistillData, TokenizedTexts, embedding_loss, evaluate_embeddings
from vltrim.tasks.sources import check_token_ids
from vltrim.tasks.vqa import evaluate_vqa, vqa_kd, vqa_loss


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    kd: Callable[[nn.Module, nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None  # None: the loss already distils
    evaluate: Callable[..., dict[str, float]]
    metric: str  # the headline key of evaluate()'s result
    needs: str  # what kind of model the task trains and evaluates (shown when a model does not fit)
    fits: Callable[[nn.Module], bool]
    embed_kd: bool = False  # kd takes embed_weight: uni-modal distillation of each tower's final embedding

    def check(self, model: nn.Module) -> None:
        """Refuse a model this task cannot train or evaluate, before any work (names task and model, and the tasks
        that do fit the model)."""
        if not self.fits(model):
            fitting = [n for n, t in TASKS.items() if t.fits(model)]
            pick = f"task={fitting[0]!r} (--task {fitting[0]})" if fitting else f"one of {', '.join(sorted(TASKS))}"
            raise ValueError(
                f"task {self.name!r} needs {self.needs}; {type(model).__name__} is not one. "
                f"Pick the task that fits the model: {pick}"
            )

    def try_data(self, model: nn.Module, data: Any, option: str, evaluate: bool = False) -> None:
        """Run the task's loss (``evaluate``: its evaluation) on the first and last items of ``data``, so data
        the model cannot take (image size, vocabulary, labels) fails now with ``option`` named, not after a search."""
        sample = Sample(data, sorted({0, len(data) - 1}))
        batch = getattr(sample, "collate", default_collate)([sample[i] for i in range(len(sample))])
        check_token_ids(model, batch, option, sample.indices)
        try:
            with torch.no_grad(), kept_modes(model):
                model.eval()
                if evaluate:
                    self.evaluate(model, sample)
                else:
                    dev = next(model.parameters()).device
                    self.loss(model, {k: v.to(dev) for k, v in batch.items()})
        except Exception as e:  # torch and transformers raise many kinds: the user needs the option and the cause
            raise ValueError(
                f"{option}: {type(model).__name__} cannot run the {self.name} task on items {sample.indices} "
                f"({type(e).__name__}: {_first_line(e)})"
            ) from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _vision_language(model: nn.Module, *parts: str) -> bool:
    return all(isinstance(getattr(model, p, None), nn.Module) for p in ("vision_model", *parts))


def _image_text_matching(model: nn.Module) -> bool:
    """BLIP-style retrieval: a text encoder cross-attending to the image, with an image-text matching head."""
    return _vision_language(model, "text_encoder", "itm_head", "vision_proj", "text_proj")


def _question_answering(model: nn.Module) -> bool:
    """BLIP-style VQA: a question encoder cross-attending to the image, an answer decoder reading the question."""
    return _vision_language(model, "text_encoder", "text_decoder")


def _captioner(model: nn.Module) -> bool:
    """BLIP-style captioning: a text decoder cross-attending to the image, no text encoder."""
    return _vision_language(model, "text_decoder") and not hasattr(model, "text_encoder")


def _dual(model: nn.Module) -> bool:
    return hasattr(model, "get_image_features") and hasattr(model, "get_text_features")


def _image_classifier(model: nn.Module) -> bool:
    return "ForImageClassification" in type(model).__name__


def _audio_classifier(model: nn.Module) -> bool:
    """A clip classifier over a waveform (HuBERT / wav2vec 2.0 / WavLM ...ForSequenceClassification)."""
    return "input_values" in inspect.signature(model.forward).parameters and hasattr(model, "classifier")


def _text_classifier(model: nn.Module) -> bool:
    """A sequence classifier over token ids (BERT / RoBERTa / DistilBERT / MPNet / ModernBERT
    ...ForSequenceClassification): input_ids in, one logit per class out."""
    params = inspect.signature(model.forward).parameters
    return (
        "input_ids" in params and "pixel_values" not in params and "ForSequenceClassification" in type(model).__name__
    )


def _segmenter(model: nn.Module) -> bool:
    """A per-pixel classifier (DPTForSemanticSegmentation, any *ForSemanticSegmentation)."""
    return "ForSemanticSegmentation" in type(model).__name__


def _text_encoder(model: nn.Module) -> bool:
    params = inspect.signature(model.forward).parameters
    return (
        "input_ids" in params and "pixel_values" not in params and not _dual(model) and not hasattr(model, "classifier")
    )


TASKS: dict[str, Task] = {
    "retrieval": Task(
        "retrieval",
        contrastive_loss,
        similarity_kd_loss,
        evaluate_retrieval,
        "mean_R@1",
        "an image-text model with get_image_features and get_text_features (CLIP, SigLIP, a dual encoder)",
        _dual,
        embed_kd=True,
    ),
    "classification": Task(
        "classification",
        classification_loss,
        classification_kd,
        evaluate_classification,
        "top1",
        "an image classifier (a *ForImageClassification model with a head)",
        _image_classifier,
    ),
    "sentence-embedding": Task(
        "sentence-embedding",
        embedding_loss,
        None,
        evaluate_embeddings,
        "cosine_to_teacher",
        "a text encoder returning last_hidden_state (BERT, MiniLM, a CLIP text tower)",
        _text_encoder,
    ),
    "text-classification": Task(
        "text-classification",
        classification_loss,
        classification_kd,
        evaluate_classification,
        "top1",
        "a text classifier (a *ForSequenceClassification model reading input_ids: BERT, RoBERTa, DistilBERT, MPNet, "
        "ModernBERT)",
        _text_classifier,
    ),
    "itm-retrieval": Task(
        "itm-retrieval",
        itm_loss,
        itm_kd,
        evaluate_itm,
        "mean_R@1",
        "an image-text matching model: a text encoder cross-attending to the image, with an ITM head "
        "(BlipForImageTextRetrieval)",
        _image_text_matching,
    ),
    "vqa": Task(
        "vqa",
        vqa_loss,
        vqa_kd,
        evaluate_vqa,
        "accuracy",
        "a visual question answering model: a question encoder over the image and an answer decoder "
        "(BlipForQuestionAnswering)",
        _question_answering,
    ),
    "captioning": Task(
        "captioning",
        caption_loss,
        caption_kd,
        evaluate_captioning,
        "CIDEr",
        "an image captioning model: a text decoder cross-attending to the image (BlipForConditionalGeneration)",
        _captioner,
    ),
    "audio-classification": Task(
        "audio-classification",
        classification_loss,
        classification_kd,
        evaluate_classification,
        "top1",
        "an audio classifier reading a waveform (HubertForSequenceClassification, Wav2Vec2ForSequenceClassification, "
        "WavLMForSequenceClassification)",
        _audio_classifier,
    ),
    "segmentation": Task(
        "segmentation",
        segmentation_loss,
        segmentation_kd,
        evaluate_segmentation,
        "mIoU",
        "a semantic segmenter (a *ForSemanticSegmentation model, e.g. DPTForSemanticSegmentation)",
        _segmenter,
    ),
}


def check_task_fit(model: Any, task: Any, *data: Any) -> None:
    """Refuse ``task`` (a name) for ``model`` before any work, even when no data is given (``data``: the run's train /
    eval / calibration data, None when not given): a task that does not fit the model would be recorded in the
    report as if it had judged it. Refused when the task does not fit and data is given or another task fits the model
    (a model no task fits, compressed without data, keeps the task it was given: nothing uses it). What is not a
    model or a task name here is left to the option checks that follow."""
    if not isinstance(task, str) or task not in TASKS or not isinstance(model, nn.Module):
        return
    if not hasattr(model, "config"):
        return
    t = TASKS[task]
    if not t.fits(model) and (any(d is not None for d in data) or any(x.fits(model) for x in TASKS.values())):
        t.check(model)


def default_task(model: nn.Module) -> str:
    """The first task that fits ``model`` (retrieval, classification, sentence-embedding, text-classification,
    itm-retrieval, vqa, captioning, audio-classification, segmentation); 'retrieval' when none does."""
    return next((t.name for t in TASKS.values() if t.fits(model)), "retrieval")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = [
    "TASKS",
    "SentenceDistillData",
    "TokenizedTexts",
    "Task",
    "caption_kd",
    "caption_loss",
    "check_task_fit",
    "classification_kd",
    "classification_loss",
    "contrastive_loss",
    "default_task",
    "embedding_loss",
    "evaluate_captioning",
    "evaluate_classification",
    "evaluate_embeddings",
    "evaluate_itm",
    "evaluate_retrieval",
    "evaluate_segmentation",
    "evaluate_vqa",
    "get_task",
    "itm_kd",
    "itm_loss",
    "recall_at_k",
    "segmentation_kd",
    "segmentation_loss",
    "similarity_kd_loss",
    "vqa_kd",
    "vqa_loss",
    "zero_shot_accuracy",
]
