"""`mope`: MoPE-CLIP (Lin et al., CVPR 2024): rank modules by their Module-wise Pruning Error.

MoPE(module) = Z(model) - Z(model without the module), Z the task metric itself on calibration data
(retrieval: mean R@1, or zero-shot top-1 with class prompts; classification: top-1; sentence embedding:
cosine to the teacher; BLIP's itm-retrieval: mean R@1 after ITM re-ranking; vqa and captioning: minus the
teacher-forced loss of the gold answer / caption, as generated answers tie on a calibration set). Modules:
every attention head, every FFN neuron group (neurons ordered inside their layer by weight magnitude, then
cut into blocks of ``group_size``), and every layer.
Width first: heads and FFN groups of every tower are ranked by error per removed cost in one global,
cost-exact, aligned cut. Then depth: the error of every layer is recomputed on the width-pruned model
and the layers with the least error per cost are dropped until ``depth_share`` of the cut comes from
depth; a last width cut on the surviving layers lands the plan on ``target``.

Scoring is exact and fast: an ablation starts from the cached input of its block (the blocks below run
once), reuses the clean outputs of the projections upstream of the ablated units in that block (q/k/v for
a head; attention and fc1 for FFN neurons; a removed layer is skipped), and the other towers' outputs are
computed once; on an accelerator several ablations share one batched forward (masks with a leading
ablation dimension). Models whose towers feed each other (BLIP: the text encoder cross-attends to the
image) are scored by one full evaluation per module (`Probe.joint`). ``fast=False`` runs one full
evaluation per module (the naive reference the fast path is tested against). Under torch.distributed
each rank scores a slice of the modules and the errors are summed over ranks."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vltrim.arch import class_name, get_adapter, masks
from vltrim.arch.apply import apply_plan, masked
from vltrim.arch.patches import hookable
from vltrim.checks import integer, number
from vltrim.data.calibration import check_calibration
from vltrim.data.inputs import as_dataset, in_order
from vltrim.methods.common import plan_from_keep, prunable_groups, unit_sums
from vltrim.methods.registry import KD, BudgetConfig, Descriptor, Method, Result, register
from vltrim.progress import bar
from vltrim.report import save_mope_table
from vltrim.structure.groups import Group, UnitKind
from vltrim.structure.plan import Plan
from vltrim.structure.select import ALLOCATION, MAX_RATIO, Budget, select
from vltrim.tasks import Task
from vltrim.tasks.captioning import caption_nll
from vltrim.tasks.classification import class_logits
from vltrim.tasks.itm import evaluate_itm
from vltrim.tasks.retrieval import image_embeds, recall_at_k, text_embeds
from vltrim.tasks.segmentation import evaluate_segmentation
from vltrim.tasks.sentence import sentence_embedding
from vltrim.tasks.vqa import NEEDED as NEEDED_VQA
from vltrim.tasks.vqa import vqa_nll

Outputs = dict[str, torch.Tensor]


# ---- what the metric needs: per-modality inputs and outputs ---------------------------------------------
@dataclass
class Probe:
    """A task metric split by tower: ``batches[m]`` are the inputs of modality m's tower, ``output[m](model,
    batch)`` its per-item outputs, and ``metric(outputs, extras)`` the metric from all outputs at once; so an
    ablation in one tower re-runs that tower only."""

    batches: dict[str, list[dict[str, torch.Tensor]]]
    output: dict[str, Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]]
    metric: Callable[[Outputs, dict[str, torch.Tensor]], float]
    extras: dict[str, torch.Tensor]
    #: the metric of the whole model at once, for tasks whose towers feed each other (BLIP: the text encoder
    #: cross-attends to the image): an ablation re-runs everything, so only `naive_errors` scores them
    joint: Callable[[nn.Module], float] | None = None


def _chunks(data: Any, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return list(in_order(data, batch_size))


def _extra(chunks: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor | None:
    return torch.cat([c[key] for c in chunks]) if all(key in c for c in chunks) else None


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).double().mean().item()


def _retrieval_probe(data: Any, chunks: list[dict[str, torch.Tensor]]) -> Probe:
    labels = _extra(chunks, "label")
    labels = labels if labels is not None else torch.arange(sum(len(c["pixel_values"]) for c in chunks))
    class_texts = getattr(data, "class_texts", None)
    if class_texts is not None:  # zero-shot: images against one prompt per class
        return Probe(
            {"vision": chunks, "text": [dict(class_texts)]},
            {"vision": image_embeds, "text": text_embeds},
            lambda o, e: _top1(o["vision"] @ o["text"].t(), e["label"]),
            {"label": labels},
        )

    def mean_r1(o: Outputs, e: dict[str, torch.Tensor]) -> float:
        sim = o["vision"] @ o["text"].t()
        return (
            recall_at_k(sim, e["label"], e["label"], (1,))[1] + recall_at_k(sim.t(), e["label"], e["label"], (1,))[1]
        ) / 2

    return Probe(
        {"vision": chunks, "text": chunks}, {"vision": image_embeds, "text": text_embeds}, mean_r1, {"label": labels}
    )


def _classification_probe(tower: str) -> Callable[[Any, list[dict[str, torch.Tensor]]], Probe]:
    """Top-1 of a classifier whose one tower (vision or audio) reads the items."""

    def make(data: Any, chunks: list[dict[str, torch.Tensor]]) -> Probe:
        labels = _extra(chunks, "label")
        if labels is None:
            raise ValueError("calib_data for classification needs a 'label' field (the class of each item)")
        return Probe(
            {tower: chunks}, {tower: class_logits}, lambda o, e: _top1(o[tower], e["label"]), {"label": labels}
        )

    return make


def _sentence_probe(data: Any, chunks: list[dict[str, torch.Tensor]]) -> Probe:
    teacher = _extra(chunks, "teacher_embedding")
    if teacher is None:
        raise ValueError(
            "calib_data for sentence-embedding needs 'teacher_embedding' (use vltrim.tasks.SentenceDistillData)"
        )
    return Probe(
        {"text": chunks},
        {"text": sentence_embedding},
        lambda o, e: (o["text"].float() * e["teacher"]).sum(-1).mean().item(),
        {"teacher": teacher.float()},
    )


PROBES = {
    "retrieval": _retrieval_probe,
    "classification": _classification_probe("vision"),
    "audio-classification": _classification_probe("audio"),
    "text-classification": _classification_probe("text"),
    "sentence-embedding": _sentence_probe,
}


def _needs(chunks: list[dict[str, torch.Tensor]], task: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if not chunks or k not in chunks[0]]
    if missing:
        have = sorted(chunks[0]) if chunks else []
        raise ValueError(f"calib_data for {task} needs {', '.join(map(repr, missing))} in every item; they have {have}")


def _itm_probe(items: Any, chunks: list[dict[str, torch.Tensor]], batch_size: int) -> Probe:
    """Mean R@1 both ways after ITM re-ranking of the ITC top k (the task's own metric; ITC alone would give the
    fusion encoder no error)."""
    _needs(chunks, "itm-retrieval", ("pixel_values", "input_ids"))
    return Probe({}, {}, _no_metric, {}, joint=lambda m: evaluate_itm(m, items, batch_size=batch_size)["mean_R@1"])


def _segmentation_probe(items: Any, chunks: list[dict[str, torch.Tensor]], batch_size: int) -> Probe:
    """mIoU of the whole model: the decoder reads hidden states of several backbone layers (DPT), so a block's
    cached input does not stand for the layers below it and every ablation re-runs the model."""
    _needs(chunks, "segmentation", ("pixel_values", "labels"))
    return Probe({}, {}, _no_metric, {}, joint=lambda m: evaluate_segmentation(m, items, batch_size=batch_size)["mIoU"])


def _likelihood_probe(task: str, keys: tuple[str, ...], loss: Callable) -> Callable[..., Probe]:
    """Minus the mean teacher-forced loss of the gold answer / caption: generated exact match and CIDEr tie on a
    calibration set of a few hundred items (most ablations change no output), the likelihood does not."""

    def make(items: Any, chunks: list[dict[str, torch.Tensor]], batch_size: int) -> Probe:
        _needs(chunks, task, keys)
        sizes = [len(c["input_ids"]) for c in chunks]

        def metric(model: nn.Module) -> float:
            return -sum(loss(model, c).item() * n for c, n in zip(chunks, sizes)) / sum(sizes)

        return Probe({}, {}, _no_metric, {}, joint=metric)

    return make


def _no_metric(outputs: Outputs, extras: dict[str, torch.Tensor]) -> float:
    raise AssertionError("a joint probe has no per-tower metric")


#: tasks of models whose towers feed each other, or whose head reads several layers: scored as a whole (`Probe.joint`)
JOINT_PROBES = {
    "segmentation": _segmentation_probe,
    "itm-retrieval": _itm_probe,
    "vqa": _likelihood_probe("vqa", NEEDED_VQA, vqa_nll),
    "captioning": _likelihood_probe("captioning", ("pixel_values", "input_ids"), caption_nll),
}


def make_probe(task: str, data: Any, batch_size: int = 64) -> Probe:
    """The probe of ``task`` on calibration ``data`` (any form `as_dataset` accepts)."""
    data, _ = as_dataset(data, "calib_data")
    probe = _probe(task, data, data, batch_size)  # first: a field the task needs is missing
    check_calibration(data, "calib_data", None, range(len(data)), *DISTINCT)
    return probe


def _probe(task: str, data: Any, items: Any, batch_size: int) -> Probe:
    """The probe of ``task`` on ``items`` (``data`` or a subset of it; class prompts are read from ``data``)."""
    if task in JOINT_PROBES:
        return JOINT_PROBES[task](items, _chunks(items, batch_size), batch_size)
    if task not in PROBES:
        raise ValueError(
            f"mope scores with the task metric; task must be one of {', '.join([*PROBES, *JOINT_PROBES])}, got {task!r}"
        )
    return PROBES[task](data, _chunks(items, batch_size))


# ---- ablations and their errors ---------------------------------------------------------------------
@dataclass(frozen=True)
class Ablation:
    """One module: ``units`` of group ``group`` set to 0 (a head, a block of FFN neurons, or one layer)."""

    group: str
    units: tuple[int, ...]
    kind: str
    modality: str
    layer: int  # the block the module lives in (ablations start from this block's cached input)
    tower: str


@torch.no_grad()
def _outputs(model: nn.Module, probe: Probe, modality: str) -> torch.Tensor:
    return torch.cat([probe.output[modality](model, b).float() for b in probe.batches[modality]])


@torch.no_grad()
def naive_errors(model: nn.Module, probe: Probe, ablations: list[Ablation], progress: bool = False) -> list[float]:
    """MoPE of every ablation by one full evaluation each (every tower, every layer): the reference."""
    adapter, base = get_adapter(model), _metric(model, probe)
    sizes = {g.name: g.size for g in adapter.groups(model)}
    out = []
    with bar(progress) as pb:
        task = pb.add_task("mope (naive)", total=len(ablations), info="")
        for a in ablations:
            v = torch.ones(sizes[a.group])
            v[list(a.units)] = 0
            with masked(model, {a.group: v}):
                out.append(base - _metric(model, probe))
            pb.update(task, advance=1)
    return out


def _metric(model: nn.Module, probe: Probe) -> float:
    if probe.joint is not None:
        return probe.joint(model)
    return probe.metric({m: _outputs(model, probe, m) for m in probe.batches}, probe.extras)


class _Cached(nn.Module):
    """Stands in for a module whose output under the ablations is known (a block below the ablated one, or a
    projection upstream of the ablated units in the ablated block): returns the cached output, ignoring inputs. It
    carries the plain attributes of the module it replaces (a model's forward may read them, ModernBERT's
    ``attention_type``)."""

    def __init__(self, output: Any, replaces: nn.Module | None = None):
        super().__init__()
        plain = (
            {k: v for k, v in vars(replaces).items() if not k.startswith("_") and k != "training"} if replaces else {}
        )
        self.__dict__.update(plain)
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


class _Stop(Exception):
    """Raised by a hook to end a forward once the block of interest has run."""


def _tiled(output: Any, k: int) -> Any:
    """A module output (a tensor, or a tuple holding tensors and None) with every tensor's batch repeated k times."""
    if torch.is_tensor(output):
        return (torch.cat([output] * k) if k > 1 else output) if output.dim() > 0 else output
    return tuple(_tiled(o, k) if o is not None else None for o in output)


def _detached(output: Any) -> Any:
    if torch.is_tensor(output):
        return output.detach()
    return tuple(_detached(o) if o is not None else None for o in output)


@contextmanager
def _swapped(root: nn.Module, target: nn.Module, replacement: nn.Module) -> Iterator[None]:
    """Temporarily put ``replacement`` where ``target`` sits inside ``root``."""
    name = next(n for n, m in root.named_modules() if m is target)
    parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
    leaf = name.rsplit(".", 1)[-1]
    setattr(parent, leaf, replacement)
    try:
        yield
    finally:
        setattr(parent, leaf, target)


@contextmanager
def _start_at(
    t: Any, start: int, entry: dict, k: int, swaps: dict[nn.Module, Any], removed: bool = False
) -> Iterator[None]:
    """Temporarily replace blocks 0..start-1 by what block start-1 returned on the chunk (``entry``, recorded by
    `_block_inputs`; k times tiled): the input block ``start`` gets, with whatever else blocks hand on (WavLM's
    position bias); ``removed``: block start-1 is ablated, its own input is handed on instead (with the rest of its
    output, as a layer mask computes it). Inside block ``start``, each module in ``swaps`` is replaced by its (k times
    tiled) clean output."""
    saved = [t.layers[i] for i in range(start)]
    handed_on = _tiled(_handed_on(entry, start - 1, removed), k) if start else None
    try:
        for i in range(start):
            t.layers[i] = _Cached(handed_on, saved[i])
        with ExitStack() as stack:
            for mod, out in swaps.items():
                stack.enter_context(_swapped(t.layers[start], mod, _Cached(_tiled(out, k), mod)))
            yield
    finally:
        for i, layer in enumerate(saved):
            t.layers[i] = layer


def _upstream(b: Any, group: str, kind: str) -> list[nn.Module]:
    """Modules of a block that run before the ablated units of ``group`` and so see clean inputs: for FFN neurons
    every attention site and the FFN inputs, for heads their site's q, k and v or qkv (once each, should a model share them)."""
    ffn = kind == UnitKind.NEURONS.value
    mods = (
        [*(a.module for a in b.sites), *(lin for lin, _ in b.ffn_inputs().values())]
        if ffn
        else b.site(group.rsplit(".", 2)[-2]).inputs()
    )
    return list({id(m): m for m in mods}.values())


@contextmanager
def _record(modules: list[nn.Module], store: dict) -> Iterator[None]:
    """Record the outputs of ``modules`` (keyed by module)."""

    def make(mod: nn.Module):
        def hook(_mod, _args, out):
            store[mod] = _detached(out)

        return hook

    handles = [m.register_forward_hook(make(m)) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _handed_on(entry: dict, i: int, removed: bool) -> Any:
    """What block i hands the next block: its recorded output, or when it is removed its input in the output's place."""
    out = entry[("out", i)]
    if not removed:
        return out
    x = entry[("in", i)]
    return (x, *out[1:]) if isinstance(out, tuple) else x


@contextmanager
def _block_inputs(t: Any, store: dict) -> Iterator[None]:
    """Record every block's input hidden states and its output (all it returns)."""

    def block_hook(i: int):
        def hook(_mod, args, kwargs, out):
            store[("in", i)] = (args[0] if args else kwargs["hidden_states"]).detach()
            store[("out", i)] = _detached(out)

        return hook

    handles = [layer.register_forward_hook(block_hook(i), with_kwargs=True) for i, layer in enumerate(t.layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _repeat(batch: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    if k == 1:
        return batch
    return {n: torch.cat([v] * k) if torch.is_tensor(v) and v.dim() > 0 else v for n, v in batch.items()}


def default_ablation_batch(model: nn.Module) -> int:
    """Ablations per batched forward: 16 on an accelerator; 1 on CPU, where bigger batches only cost cache misses
    (measured: benchmarks/mope_scoring.py)."""
    p = next(model.parameters(), None)
    return 1 if p is None or p.device.type == "cpu" else 16


@torch.no_grad()
def fast_errors(
    model: nn.Module, probe: Probe, ablations: list[Ablation], ablation_batch: int | None = None, progress: bool = False
) -> list[float]:
    """The same values as `naive_errors`, computed without recomputing anything an ablation cannot change: the
    blocks below the ablated one run once (cached inputs), in the ablated block the projections upstream of the
    ablated units run once (a layer's ablation skips the layer), the other towers' outputs are reused, and several
    ablations share one batched forward. Under torch.distributed each rank scores a slice (summed after)."""
    adapter = get_adapter(model)
    towers = {t.name: t for t in adapter.towers(model)}
    sizes = {g.name: g.size for g in adapter.groups(model)}
    k_max = ablation_batch or default_ablation_batch(model)
    rank, world = _rank_world()
    mine = list(range(rank, len(ablations), world))
    clean, cache = {}, {}
    for m in probe.batches:  # clean outputs of every tower and every block's input, once
        parts = []
        for c, batch in enumerate(probe.batches[m]):
            with ExitStack() as stack:
                for t in towers.values():
                    if t.modality == m:
                        stack.enter_context(_block_inputs(t, cache.setdefault((t.name, c), {})))
                parts.append(probe.output[m](model, batch).float())
        clean[m] = torch.cat(parts)
    base = probe.metric(clean, probe.extras)
    errors = torch.zeros(len(ablations), dtype=torch.float64)
    buckets: dict[tuple[str, int, str, str], list[int]] = {}
    for i in mine:  # ablations of one group share their block's clean upstream outputs
        a = ablations[i]
        buckets.setdefault((a.tower, a.layer, a.kind, a.group), []).append(i)
    with bar(progress) as pb:
        task = pb.add_task("mope scoring", total=len(mine), info="")
        for (tower, layer, kind, group), idx in sorted(buckets.items()):
            t = towers[tower]
            inner = {} if kind == UnitKind.LAYERS.value else _inner_outputs(model, probe, t, layer, cache, kind, group)
            for s in range(0, len(idx), k_max):
                part = idx[s : s + k_max]
                outs = _ablated_outputs(model, probe, t, layer, kind, [ablations[i] for i in part], sizes, cache, inner)
                for i, o in zip(part, outs):
                    errors[i] = base - probe.metric({**clean, t.modality: o}, probe.extras)
                pb.update(task, advance=len(part))
    if world > 1:
        torch.distributed.all_reduce(errors)
    return errors.tolist()


def _inner_outputs(
    model: nn.Module, probe: Probe, t: Any, layer: int, cache: dict, kind: str, group: str
) -> dict[int, dict]:
    """Per calibration chunk, the clean outputs of block ``layer``'s modules upstream of ``group``'s units (the
    forward starts at the block's cached input and stops after the block)."""
    block = t.block(t.layers[layer])
    mods = _upstream(block, group, kind)
    out: dict[int, dict] = {}

    def stop(*_: Any) -> None:
        raise _Stop

    holds = [h for a in block.sites if (h := hookable(a.module)) is not None]  # the Linears run as modules (WavLM)
    try:
        for c, batch in enumerate(probe.batches[t.modality]):
            out[c] = {}
            handle = t.layers[layer].register_forward_hook(stop)
            try:
                with _start_at(t, layer, cache[(t.name, c)], 1, {}), _record(mods, out[c]):
                    probe.output[t.modality](model, batch)
            except _Stop:
                pass
            finally:
                handle.remove()
    finally:
        for h in holds:
            h.remove()
    return out


def _ablated_outputs(
    model: nn.Module,
    probe: Probe,
    t: Any,
    layer: int,
    kind: str,
    abl: list[Ablation],
    sizes: dict[str, int],
    cache: dict,
    inner: dict[int, dict],
) -> list[torch.Tensor]:
    """Outputs of tower ``t`` under each of ``abl`` (all of ``kind`` in block ``layer``), one batched forward per
    chunk. A layer's removal needs no mask: the next block starts from the removed block's input."""
    k = len(abl)
    values: dict[str, torch.Tensor] = {}
    if kind != UnitKind.LAYERS.value:
        for j, a in enumerate(abl):
            v = values.setdefault(a.group, torch.ones(k, sizes[a.group]))
            v[j, list(a.units)] = 0
    handles = masks.attach(get_adapter(model), model, values)
    start = layer + 1 if kind == UnitKind.LAYERS.value else layer
    try:
        parts = []
        for c, batch in enumerate(probe.batches[t.modality]):
            entry = cache[(t.name, c)]
            with _start_at(t, start, entry, k, inner.get(c, {}), removed=kind == UnitKind.LAYERS.value):
                parts.append(probe.output[t.modality](model, _repeat(batch, k)).float())
        stacked = torch.cat([p.unflatten(0, (k, -1)) for p in parts], dim=1)
    finally:
        handles.remove()
    return list(stacked)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ---- modules of a model ---------------------------------------------------------------------------------
def neuron_blocks(model: nn.Module, g: Group, group_size: int) -> list[tuple[int, ...]]:
    """FFN neurons of ``g`` ordered by weight magnitude (fc1 row + fc2 column L1, lowest first) and cut into
    blocks of ``group_size``: the paper's neuron groups, each scored as one module."""
    order = torch.argsort(unit_sums(model, g, torch.abs), stable=True).tolist()
    return [tuple(sorted(order[i : i + group_size])) for i in range(0, g.size, group_size)]


def default_group_size(size: int, align: int) -> int:
    """1/8 of the layer's width, rounded to a multiple of ``align`` (at least one aligned step)."""
    step = max(1, align)
    return max(step, round(size / 8 / step) * step)


def width_ablations(model: nn.Module, groups: list[Group], group_size: int | None, align: int) -> list[Ablation]:
    """One ablation per head and per FFN neuron block of ``groups``."""
    adapter, out = get_adapter(model), []
    for g in groups:
        t, layer, _ = adapter.locate(model, g.name)
        if g.kind == UnitKind.HEADS:
            units = [(h,) for h in range(g.size)]
        else:
            units = neuron_blocks(model, g, group_size or default_group_size(g.size, align))
        out += [Ablation(g.name, u, g.kind.value, g.modality, layer, t.name) for u in units]
    return out


def layer_ablations(model: nn.Module) -> list[Ablation]:
    """One ablation per block of every tower."""
    return [
        Ablation(f"{t.name}.layers", (i,), UnitKind.LAYERS.value, t.modality, i, t.name)
        for t in get_adapter(model).towers(model)
        for i in range(len(t.layers))
    ]


def mope_table(ablations: list[Ablation], errors: list[float], costs: dict[str, float]) -> list[dict[str, Any]]:
    """Rows (module, modality, kind, layer, units, error, cost) for the saved CSV and the heat map."""
    return [
        {
            "group": a.group,
            "modality": a.modality,
            "kind": a.kind,
            "layer": a.layer,
            "units": " ".join(map(str, a.units)),
            "error": e,
            "cost": costs[a.group] * len(a.units),
        }
        for a, e in zip(ablations, errors)
    ]


# ---- the method -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoPEConfig(BudgetConfig):
    """Settings of mope: module-wise pruning error, width then depth.

    Its plans record (``plan_settings``) the unit kinds cut, depth_share, the number of calibration items used
    (calib_size, at most the data's length), the task, group_size and fast; rounds when > 1 and the modalities (sorted)
    when given; the budget options are in the plan's target."""

    units: str | tuple[str, ...] = "heads,neurons"
    depth_share: float = 0.0
    group_size: int | None = None
    calib_size: int = 256
    eval_batch: int = 64
    ablation_batch: int | None = None
    fast: bool = True
    modalities: list[str] | None = None
    rounds: int = 1

    def validate(self) -> None:
        number("depth_share", self.depth_share, high=1.0, low_open=False)
        integer("rounds", self.rounds, 1)
        if self.group_size is not None:
            integer("group_size", self.group_size, 1)
        if self.ablation_batch is not None:
            integer("ablation_batch", self.ablation_batch, 1)
        integer("calib_size", self.calib_size, 1)

    def plan_settings(self, **found: Any) -> dict[str, Any]:
        return {
            "units": found["units"],
            "depth_share": self.depth_share,
            "calib_size": found["calib_size"],
            "task": found["task"],
            "group_size": self.group_size,
            "fast": self.fast,
            **({"rounds": self.rounds} if self.rounds > 1 else {}),
            **({"modalities": sorted(self.modalities)} if self.modalities else {}),
        }


@register
class MoPEMethod(Method):
    name = "mope"
    Config = MoPEConfig
    descriptor = Descriptor(
        data="required",
        calib_option="data",
        runtime=("data", "task", "progress", "seed", "loss_fn", "batch_size"),
        kd=KD(hidden=1.0, embed=1.0),  # the paper's uni-modal distillation: hidden states and tower embeddings
    )

    def task_settings(self, task: Task, loss: Callable) -> dict[str, Any]:
        """What vltrim.plan's ``task`` gives the search: the task whose metric scores the modules (its name)."""
        return {"task": task.name}

    def search(self, model: nn.Module, target: float, **settings: Any) -> Plan:
        """The plan of `search_result`."""
        return self.search_result(model, target, **settings).plan

    def search_result(
        self,
        model: nn.Module,
        target: float,
        data: Any = None,
        task: str = "retrieval",
        metric: str = "params",
        align: int = 8,
        units: str = "heads,neurons",
        allocation: str = ALLOCATION,
        max_ratio: float = MAX_RATIO,
        depth_share: float = 0.0,
        group_size: int | None = None,
        calib_size: int = 256,
        eval_batch: int = 64,
        ablation_batch: int | None = None,
        fast: bool = True,
        modalities: list[str] | None = None,
        progress: bool = False,
        seed: int = 0,
        loss_fn: Callable | None = None,
        batch_size: int | None = None,
        rounds: int = 1,
    ) -> Result:
        """Width then depth by MoPE on the first ``calib_size`` items of ``data``; returns the Plan with the
        MoPE table of both stages as the artefact "scores_table" (compress reports it). ``loss_fn``, ``batch_size`` and
        ``seed`` are accepted for compress's sake and unused: the scores are deterministic and need no loss.
        ``modalities`` (e.g. ['vision']) prunes those towers only (the paper's fine-tuning stage may prune one tower;
        its pre-training stage prunes both, the default). ``rounds`` > 1 cuts the width in that many steps, re-scoring
        the kept modules after each (not in the paper; each round costs one more scoring of what is left)."""
        config = MoPEConfig.pick(locals())
        if data is None:
            raise ValueError(
                "mope scores modules with the task metric: pass calibration data (vltrim.plan: calib_data=...; "
                "compress passes train_data or calib_data)"
            )
        data, _ = as_dataset(data, "calib_data")
        calib = torch.utils.data.Subset(data, range(min(calib_size, len(data))))
        for attr in ("collate", "class_texts", "captions_by_label"):
            if hasattr(data, attr):
                setattr(calib, attr, getattr(data, attr))
        probe = _probe(task, data, calib, eval_batch)  # first: a field the task needs is missing
        check_calibration(data, "calib_data", model, range(len(calib)), *DISTINCT)
        work = copy.deepcopy(model).eval()
        score = _warn_if_flat(
            (lambda m, ab: fast_errors(m, probe, ab, ablation_batch, progress))
            if fast and probe.joint is None
            else (lambda m, ab: naive_errors(m, probe, ab, progress)),
            len(calib),
        )
        groups = prunable_groups(work, units, modalities)
        if any(g.kind == UnitKind.HEAD_DIMS for g in groups):
            raise ValueError(
                "mope scores whole attention heads and FFN neuron groups: units must be 'heads,neurons' (or one of them)"
            )
        budget = Budget(target, metric, align, allocation, max_ratio)
        keep, table = _width_then_depth(work, groups, budget, depth_share, group_size, score, rounds)
        settings = config.plan_settings(units=sorted({g.kind.value for g in groups}), calib_size=len(calib), task=task)
        plan = plan_from_keep(
            work,
            groups + [g for g in get_adapter(work).groups(work) if g.kind == UnitKind.LAYERS],
            keep,
            budget,
            self.name,
            settings,
        )
        return Result(plan, artifacts={"scores_table": table})


#: MoPE ranks modules by how much the task metric drops without each: the fewest distinct calibration items that can
#: make two modules' errors differ, and why (`vltrim.data.calibration.check_calibration` puts it in its error)
DISTINCT = (
    2,
    "mope ranks modules by how much the task metric drops without each, and on fewer distinct items every module "
    "scores the same (the plan would be arbitrary)",
)


def _warn_if_flat(
    score: Callable[[nn.Module, list[Ablation]], list[float]], items: int
) -> Callable[[nn.Module, list[Ablation]], list[float]]:
    """``score`` that warns when every module of a scoring gets the same error: the plan is then arbitrary (ties are
    broken by weight magnitude), typically because the calibration data are too few or too alike for the metric."""

    def scored(model: nn.Module, ablations: list[Ablation]) -> list[float]:
        errors = score(model, ablations)
        if len(errors) > 1 and max(errors) == min(errors):
            warnings.warn(
                f"mope: all {len(errors)} modules scored the same error ({errors[0]:.4g}) on {items} calibration "
                "items, so the metric cannot tell them apart and the cut is decided by weight magnitude alone; "
                "give more (and more varied) calibration items",
                stacklevel=2,
            )
        return errors

    return scored


def _unit_scores(
    groups: list[Group], ablations: list[Ablation], errors: list[float], metric: str, proxy: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Each unit's score: its module's error per removed cost (cost-exact ranking), ties broken by weight magnitude."""
    by_name = {g.name: g for g in groups}
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for a, e in zip(ablations, errors):
        g = by_name[a.group]
        scores[a.group][list(a.units)] = e / (len(a.units) * g.cost_per_unit(metric))
    spread = max((s.abs().max().item() for s in scores.values()), default=0.0) or 1.0
    for n, s in scores.items():  # tie-break (discrete metrics often tie): a tiny, order-preserving magnitude term
        q = torch.argsort(torch.argsort(proxy[n], stable=True), stable=True).double() / max(1, len(s))
        s += 1e-9 * spread * q
    return scores


def _width_cut(
    model: nn.Module,
    groups: list[Group],
    budget: Budget,
    group_size: int | None,
    score: Callable[[nn.Module, list[Ablation]], list[float]],
    rounds: int = 1,
) -> tuple[dict[str, list[int]], dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Width cut to ``budget`` by MoPE: one scoring of every head and FFN group (the paper), or with ``rounds`` R > 1
    the cut in R equal steps, the modules still kept re-scored on the model narrowed by the steps before (a module's
    error then counts the ones already removed). Returns the keep-map, the unit scores (units cut in earlier rounds
    rank below all others) and the MoPE table (each module's latest error, original indices)."""
    metric, keep = budget.metric, {}
    scores = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    rows: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
    for r in range(1, rounds + 1):
        narrow = apply_plan(model, _plain_plan(model, groups, keep)) if keep else model
        index = {g.name: keep.get(g.name, list(range(g.size))) for g in groups}
        by_name = {g.name: g for g in get_adapter(narrow).groups(narrow)}
        ngroups = [by_name[g.name] for g in groups]
        ab = width_ablations(narrow, ngroups, group_size, budget.align)
        errors = score(narrow, ab)
        here = _unit_scores(ngroups, ab, errors, metric, {g.name: unit_sums(narrow, g, torch.abs) for g in ngroups})
        floor = min(float(v.min()) for v in here.values()) - 1.0
        for g in groups:
            cut = torch.ones(g.size, dtype=torch.bool)
            cut[index[g.name]] = False
            scores[g.name][cut] = torch.minimum(scores[g.name][cut], torch.tensor(floor))  # earlier cuts stay lowest
            scores[g.name][index[g.name]] = here[g.name]
        costs = {g.name: g.cost_per_unit(metric) for g in groups}
        for _a, row in zip(
            ab,
            mope_table(
                [dataclasses.replace(a, units=tuple(index[a.group][u] for u in a.units)) for a in ab], errors, costs
            ),
        ):
            rows[(row["group"], row["units"])] = row
        keep = select(groups, scores, dataclasses.replace(budget, target=budget.target * r / rounds))
    return keep, scores, list(rows.values())


def _width_then_depth(
    model: nn.Module,
    groups: list[Group],
    budget: Budget,
    depth_share: float,
    group_size: int | None,
    score: Callable[[nn.Module, list[Ablation]], list[float]],
    rounds: int = 1,
) -> tuple[dict[str, list[int]], list[dict[str, Any]]]:
    """Keep-map of width then depth pruning (see the module docstring) and the MoPE table of both stages."""
    metric = budget.metric
    proxy = {g.name: unit_sums(model, g, torch.abs) for g in groups}
    table: list[dict[str, Any]] = []
    keep: dict[str, list[int]] = {}
    scores = None
    if depth_share < 1.0:
        width = dataclasses.replace(budget, target=budget.target * (1 - depth_share))
        keep, scores, table = _width_cut(model, groups, width, group_size, score, rounds)
    if depth_share == 0.0:
        return keep, table
    narrow = apply_plan(model, _plain_plan(model, groups, keep)) if keep else model
    towers = {g.name.split(".layers.")[0] for g in groups}  # only the towers being pruned lose layers
    ab = [a for a in layer_ablations(narrow) if a.tower in towers]
    errors = score(narrow, ab)
    remaining = _layer_costs(groups, keep, metric)
    table += mope_table(ab, errors, {a.group: 0 for a in ab})
    for row, a in zip(table[-len(ab) :], ab):
        row["cost"] = remaining[(a.tower, a.layer)]
    total = sum(g.size * g.cost_per_unit(metric) for g in groups)
    dropped = _drop_layers(ab, errors, remaining, budget.target * depth_share * total)
    final = _final_width(groups, scores, proxy, dropped, budget, total)
    final.update(
        {
            f"{tower}.layers": [i for i in range(n) if (tower, i) not in dropped]
            for tower, n in _tower_sizes(ab).items()
            if any(d[0] == tower for d in dropped)
        }
    )
    return final, table


def _plain_plan(model: nn.Module, groups: list[Group], keep: dict[str, list[int]]):
    return Plan.from_keep(class_name(model), groups, keep, method="mope-width")


def _tower_sizes(ab: list[Ablation]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for a in ab:
        sizes[a.tower] = max(sizes.get(a.tower, 0), a.layer + 1)
    return sizes


def _layer_costs(groups: list[Group], keep: dict[str, list[int]], metric: str) -> dict[tuple[str, int], float]:
    """Prunable cost still in each block after the width cut (what dropping the block removes)."""
    out: dict[tuple[str, int], float] = {}
    for g in groups:
        tower, rest = g.name.split(".layers.", 1)
        key = (tower, int(rest.split(".")[0]))
        out[key] = out.get(key, 0) + len(keep.get(g.name, range(g.size))) * g.cost_per_unit(metric)
    return out


def _drop_layers(
    ab: list[Ablation], errors: list[float], remaining: dict[tuple[str, int], float], need: float
) -> set[tuple[str, int]]:
    """Blocks with the least error per remaining cost, dropped until ``need`` cost is removed (one block per tower stays)."""
    left = _tower_sizes(ab)
    order = sorted(range(len(ab)), key=lambda i: (errors[i] / max(remaining[(ab[i].tower, ab[i].layer)], 1e-12), i))
    dropped: set[tuple[str, int]] = set()
    done = 0.0
    for i in order:
        if done >= need:
            break
        key = (ab[i].tower, ab[i].layer)
        if left[key[0]] > 1:
            dropped.add(key)
            left[key[0]] -= 1
            done += remaining[key]
    return dropped


def _final_width(
    groups: list[Group],
    scores: dict[str, torch.Tensor] | None,
    proxy: dict[str, torch.Tensor],
    dropped: set[tuple[str, int]],
    budget: Budget,
    total: float,
) -> dict[str, list[int]]:
    """Width cut on the surviving blocks that brings the whole plan to ``budget.target`` (MoPE scores of the
    width stage; weight magnitude when there was none)."""

    def block(g: Group) -> tuple[str, int]:
        tower, rest = g.name.split(".layers.", 1)
        return tower, int(rest.split(".")[0])

    alive = [g for g in groups if block(g) not in dropped]
    gone = sum(g.size * g.cost_per_unit(budget.metric) for g in groups if block(g) in dropped)
    rest = sum(g.size * g.cost_per_unit(budget.metric) for g in alive)
    share = (budget.target * total - gone) / rest if rest else 0.0
    if share <= 0 or not alive:
        return {}
    s = scores if scores is not None else proxy
    try:
        return select(alive, {g.name: s[g.name] for g in alive}, dataclasses.replace(budget, target=min(share, 0.999)))
    except ValueError:
        return select(
            alive,
            {g.name: s[g.name] for g in alive},
            dataclasses.replace(budget, target=min(share, 0.999), max_ratio=1.0),
        )


save_table = save_mope_table  # the documented name: mope.csv and mope.png from report["scores_table"]
