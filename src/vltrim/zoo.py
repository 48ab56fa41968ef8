"""Small random-init models of every supported class (for tests, examples and quick experiments)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf
from torch import nn

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
TINY_VISION = dict(TINY, image_size=32, patch_size=8)
TINY_TEXT = dict(TINY, vocab_size=64, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _clip_cfg() -> tf.CLIPConfig:
    return tf.CLIPConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT), projection_dim=32)


def _siglip_cfg() -> tf.SiglipConfig:
    return tf.SiglipConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT))


def _bert_cfg(**kw) -> tf.BertConfig:
    return tf.BertConfig(**dict(TINY, vocab_size=64, max_position_embeddings=32), **kw)


# BLIP: text ids as the built-in word tokenizer numbers them ([pad] 0, [bos] 2 starts a decoder, [eos] 3 ends one)
TINY_BLIP_TEXT = dict(
    TINY_TEXT, vocab_size=96, bos_token_id=2, eos_token_id=3, sep_token_id=3, max_position_embeddings=24
)
# BlipVisionConfig's initializer_range defaults to 1e-10: a tiny tower would give every image the same states.
TINY_BLIP_VISION = dict(TINY_VISION, intermediate_size=80, initializer_range=0.02)


def _blip_cfg(vision_width: int = 48) -> tf.BlipConfig:
    """Vision narrower than text, so a cross-attention's key/value width is not its query width (the VQA answer
    decoder cross-attends to the question encoder, built with ``encoder_hidden_size``: both widths must agree)."""
    return tf.BlipConfig(
        vision_config=dict(TINY_BLIP_VISION, hidden_size=vision_width),
        text_config=dict(TINY_BLIP_TEXT, encoder_hidden_size=vision_width),
        projection_dim=32,
        image_text_hidden_size=32,
    )


# speech: the usual 320x CNN stride (1 s -> 49 frames) with narrow convolutions; no layer drop or time masking
TINY_AUDIO = dict(
    TINY,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    classifier_proj_size=32,
    layerdrop=0.0,
    mask_time_prob=0.0,
)


def _roberta(model: type, config: type, **kw) -> Callable[[], nn.Module]:
    """Positions start after the padding index (1): 16 usable tokens."""
    text = dict(TINY, vocab_size=64, max_position_embeddings=18, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return lambda: model(config(**text, **kw))


def _distilbert(model: type, **kw) -> Callable[[], nn.Module]:
    cfg = dict(vocab_size=64, max_position_embeddings=32, dim=64, hidden_dim=96, n_layers=2, n_heads=4, pad_token_id=0)
    return lambda: model(tf.DistilBertConfig(**cfg, **kw))


def _mpnet(model: type, **kw) -> Callable[[], nn.Module]:
    """Positions start after the padding index (1)."""
    text = dict(TINY, vocab_size=64, max_position_embeddings=18)
    return lambda: model(tf.MPNetConfig(**text, pad_token_id=1, bos_token_id=0, eos_token_id=2, **kw))


def _modernbert(model: type, **kw) -> Callable[[], nn.Module]:
    """3 layers: global, local (a window of 4 tokens each way on 16 positions), global; no biases (as released)."""
    text = dict(TINY, num_hidden_layers=3, vocab_size=64, max_position_embeddings=16, local_attention=8)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    return lambda: model(tf.ModernBertConfig(**text, **ids, global_attn_every_n_layers=2, **kw))


def _dinov2(model: type, **kw) -> Callable[[], nn.Module]:
    """The classifier's tiny config has the SwiGLU FFN (a gated FFN with a separate gate), the bare model the MLP."""
    return lambda: model(tf.Dinov2Config(**dict(TINY_VISION, mlp_ratio=2), **kw))


def _dpt(model: type, **kw) -> Callable[[], nn.Module]:
    """4 layers, each read by the segmenter's neck (narrow reassemble and fusion convolutions); the segmenter: 5
    classes. Weights drawn wider than transformers' std 0.02 (0.1; the neck's and heads' convolutions at torch's default
    init): at 0.02 a tiny neck's logits are ~1e-8 and a pruned block changes them by ~1e-4, where no test can see it."""
    neck = dict(backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)

    def build() -> nn.Module:
        cfg = tf.DPTConfig(**dict(TINY_VISION, num_hidden_layers=4), **neck, initializer_range=0.1, **kw)
        m = model(cfg)
        for name, conv in m.named_modules():
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and not name.startswith("dpt."):
                conv.reset_parameters()
        return m

    return build


def _speech(model: type, config: type, **kw) -> Callable[[], nn.Module]:
    return lambda: model(config(**TINY_AUDIO, **kw))


def _dual() -> nn.Module:
    vision = tf.ViTModel(tf.ViTConfig(**TINY_VISION))
    text = tf.BertModel(_bert_cfg())
    return tf.VisionTextDualEncoderModel(vision_model=vision, text_model=text)


_BUILDERS = {
    "CLIPModel": lambda: tf.CLIPModel(_clip_cfg()),
    "CLIPVisionModel": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY_VISION)),
    "CLIPVisionModelWithProjection": lambda: tf.CLIPVisionModelWithProjection(
        tf.CLIPVisionConfig(**TINY_VISION, projection_dim=32)
    ),
    "CLIPTextModel": lambda: tf.CLIPTextModel(tf.CLIPTextConfig(**TINY_TEXT)),
    "CLIPTextModelWithProjection": lambda: tf.CLIPTextModelWithProjection(
        tf.CLIPTextConfig(**TINY_TEXT, projection_dim=32)
    ),
    "SiglipModel": lambda: tf.SiglipModel(_siglip_cfg()),
    "SiglipVisionModel": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY_VISION)),
    "SiglipTextModel": lambda: tf.SiglipTextModel(tf.SiglipTextConfig(**TINY_TEXT)),
    "ViTModel": lambda: tf.ViTModel(tf.ViTConfig(**TINY_VISION)),
    "ViTForImageClassification": lambda: tf.ViTForImageClassification(tf.ViTConfig(**TINY_VISION, num_labels=5)),
    "DeiTModel": lambda: tf.DeiTModel(tf.DeiTConfig(**TINY_VISION)),
    "DeiTForImageClassification": lambda: tf.DeiTForImageClassification(tf.DeiTConfig(**TINY_VISION, num_labels=5)),
    "DeiTForImageClassificationWithTeacher": lambda: tf.DeiTForImageClassificationWithTeacher(
        tf.DeiTConfig(**TINY_VISION, num_labels=5)
    ),
    "BertModel": lambda: tf.BertModel(_bert_cfg()),
    "BertForSequenceClassification": lambda: tf.BertForSequenceClassification(_bert_cfg(num_labels=3)),
    "VisionTextDualEncoderModel": _dual,
    "BlipModel": lambda: tf.BlipModel(_blip_cfg()),
    "BlipForImageTextRetrieval": lambda: tf.BlipForImageTextRetrieval(_blip_cfg()),
    "BlipForQuestionAnswering": lambda: tf.BlipForQuestionAnswering(_blip_cfg(vision_width=64)),
    "BlipForConditionalGeneration": lambda: tf.BlipForConditionalGeneration(_blip_cfg()),
    "RobertaModel": _roberta(tf.RobertaModel, tf.RobertaConfig),
    "RobertaForSequenceClassification": _roberta(tf.RobertaForSequenceClassification, tf.RobertaConfig, num_labels=3),
    "XLMRobertaModel": _roberta(tf.XLMRobertaModel, tf.XLMRobertaConfig),
    "XLMRobertaForSequenceClassification": _roberta(
        tf.XLMRobertaForSequenceClassification, tf.XLMRobertaConfig, num_labels=3
    ),
    "DistilBertModel": _distilbert(tf.DistilBertModel),
    "DistilBertForSequenceClassification": _distilbert(tf.DistilBertForSequenceClassification, num_labels=3),
    "MPNetModel": _mpnet(tf.MPNetModel),
    "MPNetForSequenceClassification": _mpnet(tf.MPNetForSequenceClassification, num_labels=3),
    "ModernBertModel": _modernbert(tf.ModernBertModel),
    "ModernBertForSequenceClassification": _modernbert(tf.ModernBertForSequenceClassification, num_labels=3),
    "Dinov2Model": _dinov2(tf.Dinov2Model),
    "Dinov2ForImageClassification": _dinov2(tf.Dinov2ForImageClassification, num_labels=5, use_swiglu_ffn=True),
    "DPTModel": _dpt(tf.DPTModel),
    "DPTForSemanticSegmentation": _dpt(tf.DPTForSemanticSegmentation, num_labels=5),
    "HubertModel": _speech(tf.HubertModel, tf.HubertConfig),
    "HubertForSequenceClassification": _speech(tf.HubertForSequenceClassification, tf.HubertConfig, num_labels=5),
    "Wav2Vec2Model": _speech(tf.Wav2Vec2Model, tf.Wav2Vec2Config, do_stable_layer_norm=True, feat_extract_norm="layer"),
    "Wav2Vec2ForSequenceClassification": _speech(tf.Wav2Vec2ForSequenceClassification, tf.Wav2Vec2Config, num_labels=5),
    "WavLMModel": _speech(tf.WavLMModel, tf.WavLMConfig, num_buckets=32, max_bucket_distance=64),
    "WavLMForSequenceClassification": _speech(
        tf.WavLMForSequenceClassification, tf.WavLMConfig, num_labels=5, num_buckets=32, max_bucket_distance=64
    ),
}

TINY_CLASSES = sorted(_BUILDERS)  # the built-in families' classes


def register_tiny(name: str, builder: Callable[[], nn.Module]) -> None:
    """Add a tiny model of class ``name`` for ``tiny_model`` (a family defined outside vltrim, e.g. in a test)."""
    _BUILDERS[name] = builder


def tiny_model(name: str, seed: int = 0) -> nn.Module:
    """A tiny random-init model of class ``name`` in eval mode (deterministic for a seed)."""
    if name not in _BUILDERS:
        raise ValueError(f"no tiny config for {name!r}; available: {', '.join(sorted(_BUILDERS))}")
    torch.manual_seed(seed)
    model = _BUILDERS[name]()
    _perturb_norms(model, seed)
    return model.eval()


def _perturb_norms(model: nn.Module, seed: int) -> None:
    """Give LayerNorms and zero-init biases random values so tests see every weight path matter."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:  # ModernBERT's norms have none
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=g))
