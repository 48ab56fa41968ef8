"""`vltrim export`: a saved vltrim model as an ONNX file, checked against torch.

The model is exported with torch.onnx (the torch.export-based exporter; it needs the ``export`` extra: onnx and
onnxscript) with dynamic batch axes (images and texts of a dual encoder each their own) and a dynamic sequence axis.
Then the ONNX model runs on inputs of another batch size and a shorter sequence than the export's, and its outputs are
compared with the torch model's (max abs diff). With onnxruntime installed it runs the ONNX model and times it against
torch (median of interleaved rounds); without it onnx's reference evaluator checks parity and nothing is timed.
``int8``: onnxruntime's dynamic quantisation (int8 weights of every MatMul, activations quantised at run time) of
the exported, already pruned model, with the cosine of its outputs to the pruned fp32 torch model's."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io as _io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vltrim import io
from vltrim.arch import get_adapter
from vltrim.arch.inputs import MODEL_INPUTS, SEQUENCE_INPUTS
from vltrim.checks import integer, number
from vltrim.measure import _latency_stats, _time_rounds
from vltrim.measure import _runner as torch_runner

FORMATS = ("onnx",)
EXTRA = "pip install 'vltrim[export]'"
SINGLE_FILE_BYTES = 1 << 30  # larger models keep their weights in FILE.data beside the .onnx (protobuf's 2 GiB limit)


class ExportError(RuntimeError):
    """An export that cannot run (a package missing) or whose result does not match the torch model."""


def export(
    path: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    int8: bool = False,
    batch_size: int = 2,
    atol: float = 1e-4,
    rounds: int = 10,
) -> dict[str, Any]:
    """Export the vltrim directory ``path`` to ``out`` (default: path/model.onnx); returns what was written and checked.

    Raises ExportError when the outputs differ from torch by more than ``atol`` x max(1, largest output magnitude)."""
    if format not in FORMATS:
        raise ValueError(f"--format {format!r} is not supported: vltrim export writes {', '.join(FORMATS)}")
    batch_size, rounds, atol = (
        integer("--batch-size", batch_size, 2),
        integer("--rounds", rounds, 1),
        number("--atol", atol),
    )
    io._check_files(Path(path))  # noqa: SLF001 - "not a vltrim model directory" before anything else
    file = _out_file(path, out)
    _require(["onnx", "onnxscript"] + (["onnxruntime"] if int8 else []), "--int8" if int8 else "ONNX export")
    model = io.load(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(model, batch_size)
    names = _export(model, inputs, file)
    check = _parity_inputs(model, batch_size + 1)
    want = _torch_outputs(model, check, names)
    result: dict[str, Any] = {
        "file": str(file),
        "format": format,
        "inputs": _dims(file, "inputs"),
        "outputs": _dims(file, "outputs"),
    }
    result["parity"] = _parity(file, check, want, atol)
    result["latency"] = _latency(model, file, inputs, rounds) if _has("onnxruntime") else None
    if int8:
        result["int8"] = _int8(model, file, check, want, inputs, rounds)
    return result


def _out_file(path: str | Path, out: str | Path | None) -> Path:
    """The .onnx file to write (default: path/model.onnx), checked before any work: a directory, or a name not ending
    in .onnx (another file it would overwrite: a model's config.json or weights, a user's file), is refused."""
    file = Path(out) if out is not None else Path(path) / "model.onnx"
    if file.is_dir():
        raise ValueError(f"--out {file} is a directory; give the .onnx file to write")
    if file.suffix.lower() != ".onnx":
        raise ValueError(
            f"--out {file} does not end in .onnx: vltrim export writes only .onnx files (and FILE.data, "
            "<name>.int8.onnx beside them), so it never overwrites another file; give a name such as model.onnx"
        )
    return file


# ---- packages ---------------------------------------------------------------------------------------------------
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _require(modules: list[str], what: str) -> None:
    """ExportError naming the missing packages and the extra that installs them."""
    missing = [m for m in modules if not _has(m)]
    if missing:
        raise ExportError(f"{what} needs {', '.join(missing)} (not installed): {EXTRA}")


# ---- export -----------------------------------------------------------------------------------------------------
class _Forward(nn.Module):
    """The model with named tensor inputs and a tuple of its tensor outputs (what an ONNX graph takes and gives)."""

    def __init__(self, model: nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(  # noqa: D102 - one keyword per model input (arch/inputs.py); EXPORTED_INPUTS reads this signature
        self,
        pixel_values=None,
        input_values=None,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
    ):
        given = dict(
            pixel_values=pixel_values,
            input_values=input_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
        )
        out = get_adapter(self.model).forward(self.model, {k: v for k, v in given.items() if v is not None})
        return tuple(out[k] for k in self.outputs)


#: the model inputs the exported graph takes (the keyword inputs of _Forward.forward)
EXPORTED_INPUTS = tuple(inspect.signature(_Forward.forward).parameters)[1:]


def _inputs(model: nn.Module, batch_size: int) -> dict[str, torch.Tensor]:
    """The adapter's reference input; ValueError for a model input the export does not know."""
    inputs = get_adapter(model).reference_inputs(model, batch_size)
    unknown = sorted(set(inputs) - set(EXPORTED_INPUTS))
    if unknown:
        raise ValueError(f"vltrim export does not know the model inputs {unknown} of {type(model).__name__}")
    return inputs


def _output_names(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The tensor outputs of one forward, by name (nested model outputs left out)."""
    with torch.no_grad():
        out = get_adapter(model).forward(model, inputs)
    return [k for k, v in out.items() if torch.is_tensor(v)]


def _dynamic_shapes(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, Any]]:
    """Batch axes (image and text batches apart in a dual encoder, one batch where the model pairs them) and the
    sequence axes (a decoder's own: a VQA answer is not as long as its question), as torch.export Dims."""
    from torch.export import Dim

    paired = get_adapter(model).paired_inputs(model)
    modalities = ["batch"] if paired else sorted({MODEL_INPUTS[k].modality for k in inputs})
    names = {"vision": "image_batch", "text": "text_batch"}
    batch = {m: Dim(names.get(m, f"{m}_batch") if len(modalities) > 1 else "batch") for m in modalities}
    seq = {"text": "sequence", "audio": "samples"}  # token positions; a waveform's samples
    seq_name = lambda k: ("decoder_" if k.startswith("decoder_") else "") + seq[MODEL_INPUTS[k].modality]  # noqa: E731
    seqs = {n: Dim(n) for n in {seq_name(k) for k in inputs if k in SEQUENCE_INPUTS}}
    axis = lambda k: "batch" if paired else MODEL_INPUTS[k].modality  # noqa: E731
    return {k: {0: batch[axis(k)], **({1: seqs[seq_name(k)]} if k in SEQUENCE_INPUTS else {})} for k in inputs}


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter's progress lines, warnings and logs kept off the terminal (its errors still raise)."""
    logs = [
        logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "")
    ]  # "": onnxruntime's quantiser logs to root
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _export(model: nn.Module, inputs: dict[str, torch.Tensor], file: Path) -> list[str]:
    """Write ``file`` (weights inside it unless the model is large); returns the output names."""
    names = _output_names(model, inputs)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > SINGLE_FILE_BYTES
    try:
        with _quiet():
            torch.onnx.export(
                _Forward(model, names).eval(),
                (),
                str(file),
                kwargs=inputs,
                input_names=list(inputs),
                output_names=names,
                dynamic_shapes=_dynamic_shapes(model, inputs),
                dynamo=True,
                external_data=big,
            )
    except Exception as e:  # the exporter raises many kinds; one line with its summary
        why = str(e).strip().splitlines()
        raise ExportError(
            f"torch.onnx could not export {type(model).__name__} to {file}: {type(e).__name__}: "
            f"{next((ln for ln in why if 'summary' in ln.lower() or 'Error' in ln), why[0] if why else '')}"
        ) from e
    return names


def _dims(file: Path, which: str) -> dict[str, list[Any]]:
    """Each input or output of the ONNX graph with its axes (dynamic axes by name)."""
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    values = graph.input if which == "inputs" else graph.output
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


# ---- parity and speed -------------------------------------------------------------------------------------------
def _parity_inputs(model: nn.Module, batch_size: int) -> dict[str, torch.Tensor]:
    """Inputs unlike the export's: another batch size (one image fewer than texts in a dual encoder) and a sequence a
    quarter shorter (its last token, e.g. eos, kept)."""
    inputs = _inputs(model, batch_size)
    if "pixel_values" in inputs and "input_ids" in inputs and not get_adapter(model).paired_inputs(model):
        inputs["pixel_values"] = inputs["pixel_values"][:-1]
    for k in SEQUENCE_INPUTS:
        if k in inputs and inputs[k].shape[1] > 2:
            keep = max(2, inputs[k].shape[1] * 3 // 4)
            inputs[k] = torch.cat([inputs[k][:, : keep - 1], inputs[k][:, -1:]], dim=1)
    return inputs


def _torch_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = _Forward(model, names)(**inputs)
    return dict(zip(names, out))


def _runner(file: Path) -> tuple[str, Callable[[dict[str, torch.Tensor]], list[Any]]]:
    """A function running the ONNX file on torch inputs: onnxruntime (threads as torch's) or onnx's reference evaluator."""
    feed = lambda inputs: {k: v.numpy() for k, v in inputs.items()}  # noqa: E731
    if _has("onnxruntime"):
        sess = _session(file)
        return "onnxruntime", lambda inputs: sess.run(None, feed(inputs))
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(str(file))
    return "onnx.reference", lambda inputs: ref.run(None, feed(inputs))


def _session(file: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])


def _parity(file: Path, inputs: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float) -> dict[str, Any]:
    """Max abs diff of every output to torch's; ExportError past the tolerance."""
    runtime, run = _runner(file)
    got = run(inputs)
    diffs = {k: float((torch.from_numpy(g) - w).abs().max()) for (k, w), g in zip(want.items(), got)}
    scale = max(1.0, max(float(w.abs().max()) for w in want.values()))
    worst = max(diffs.values())
    out = {
        "runtime": runtime,
        "max_abs_diff": worst,
        "by_output": diffs,
        "tolerance": atol * scale,
        "shapes": {k: list(v.shape) for k, v in inputs.items()},
    }
    if worst > atol * scale:
        raise ExportError(
            f"{file} does not match the torch model: max abs diff {worst:.3g} > {atol * scale:.3g} "
            f"(outputs {diffs}); do not use it"
        )
    return out


def _latency(model: nn.Module, file: Path, inputs: dict[str, torch.Tensor], rounds: int) -> dict[str, Any]:
    """Median ms of torch and onnxruntime on the export's inputs, timed in interleaved rounds; ratio = torch / onnxruntime."""
    sess, feed = _session(file), {k: v.numpy() for k, v in inputs.items()}
    tt, to = _time_rounds([torch_runner(model, inputs), lambda: sess.run(None, feed)], rounds, 2, 0.05)
    t, o = _latency_stats(tt)["latency_ms"], _latency_stats(to)["latency_ms"]
    return {
        "torch_ms": t,
        "onnxruntime_ms": o,
        "ratio": t / o,
        "batch": {k: list(v.shape) for k, v in inputs.items()},
        "threads": torch.get_num_threads(),
        "rounds": rounds,
    }


# ---- int8 -------------------------------------------------------------------------------------------------------
def _int8(
    model: nn.Module,
    file: Path,
    check: dict[str, torch.Tensor],
    want: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    rounds: int,
) -> dict[str, Any]:
    """Dynamic int8 quantisation of the exported model, its cosine to the pruned fp32 torch outputs and its speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = file.with_name(file.stem + ".int8.onnx")
    with _quiet():
        quantize_dynamic(
            str(file),
            str(q),
            weight_type=QuantType.QInt8,
            use_external_data_format=(file.with_name(file.name + ".data")).exists(),
        )
    got = _session(q).run(None, {k: v.numpy() for k, v in check.items()})
    cos = {k: _cosine(torch.from_numpy(g), w) for (k, w), g in zip(want.items(), got)}
    speed = _latency(model, q, inputs, rounds)
    return {
        "file": str(q),
        "cosine": min(cos.values()),
        "cosine_by_output": cos,
        "bytes": q.stat().st_size,
        "fp32_bytes": file.stat().st_size,
        "torch_ms": speed["torch_ms"],
        "onnxruntime_ms": speed["onnxruntime_ms"],
        "ratio": speed["ratio"],
    }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples (first axis) of the cosine of the flattened outputs."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())
