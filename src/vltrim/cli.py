"""`vltrim` command line: demo, inspect, measure, compress, study, report, export."""

from __future__ import annotations

import json
import typing
from collections import defaultdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from vltrim import api, io, models
from vltrim.arch import get_adapter, model_class
from vltrim.arch.inputs import audio_inputs
from vltrim.checks import choice, integer, number
from vltrim.checks import device as checked_device
from vltrim.data.audio import SAMPLING_RATE
from vltrim.demo import results_table, run_demo
from vltrim.export import export
from vltrim.io import ModelDirError, check_save_destination, read_report, vltrim_files
from vltrim.measure import machine, measure
from vltrim.report import NOT_RETRAINED, WIDTHS_PNG, sections, speedup_text, split_rows
from vltrim.run.artifacts import save as save_result
from vltrim.run.compress import compress as run_compress
from vltrim.run.options import CompressOptions
from vltrim.run.runner import MAX_SEED
from vltrim.run.study import check_batches, check_methods, check_out, check_ratios, study
from vltrim.structure.plan import Plan, PlanError, read_json
from vltrim.tasks import TASKS, default_task, get_task
from vltrim.tasks.sources import DataSource, model_directory

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help text is plain: "pip install 'vltrim[export]'" keeps its brackets
    no_args_is_help=True,
    help="Make vision-language and unimodal Transformers smaller and really faster.",
)
out_console = Console()

MODEL_HELP = "a vltrim model directory, a Hugging Face model directory, 'reference' (the built-in CLIP teacher) or 'tiny:<Class>'"


def load_any(spec: str):
    """Model from a vltrim directory, an HF directory, 'reference' or 'tiny:<Class>' (random init)."""
    named = models.named_model(spec)
    if named is not None:
        return named
    path = Path(spec)
    if (path / "plan.json").exists():
        return io.load(path)
    path = model_directory(spec) or path  # a sentence-transformers pipeline: its transformer folder
    if (path / "config.json").exists():
        return model_class(_architecture(path)).from_pretrained(path).eval()
    hint = (
        ""
        if path.exists() or "/" not in spec or spec.startswith(("/", "."))
        else f"; vltrim never downloads: fetch a Hub model first (hf download {spec} --local-dir DIR) and pass DIR"
    )
    raise typer.BadParameter(f"{spec!r} is not {MODEL_HELP}{hint}")


def source_dir(spec: str) -> Path | None:
    """The model directory ``spec`` names (HF or vltrim), whose tokenizer files ``save`` copies; None otherwise."""
    return (
        Path(spec) if Path(spec).is_dir() else None
    )  # a directory always wins over 'reference' / 'tiny:' (io.is_named_model)


def _architecture(path: Path) -> str:
    """The model class a Hugging Face directory's config.json names (clear errors for unreadable configs)."""
    file = path / "config.json"
    cfg = read_json(file, error=typer.BadParameter, allow_nonfinite=True)
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)):
        raise typer.BadParameter(
            f"{path} has no plan.json, so it is not a vltrim model directory, and {file} names no "
            "'architectures', so it is no transformers save_pretrained directory either: "
            "load the model in Python and use the API"
        )
    return archs[0]


def _fail(e: Exception) -> None:
    """One clear line (the message is printed as text: brackets in it are not rich markup)."""
    Console(stderr=True).print(Text("error: ", style="red") + Text(str(e)), highlight=False)
    raise typer.Exit(2)


USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, typer.BadParameter)  # shown as one line, not a traceback


@app.command()
def demo(
    out: Path = typer.Option(Path("vltrim-demo"), help="where the compressed model and results.json go"),
    method: str = typer.Option("upop", help="compression method"),
    target: float = typer.Option(0.5, help="fraction of prunable params to remove"),
    search_steps: int = typer.Option(100, help="training steps of the search (methods that train while pruning: upop)"),
    retrain_steps: int = typer.Option(
        50, help="fine-tuning steps of the pruned model, with distillation from the teacher"
    ),
    train_size: int = typer.Option(8000, help="built-in training pairs for fine-tuning"),
) -> None:
    """Compress the built-in CLIP teacher 2x with UPop, fine-tune briefly, and print teacher vs compressed."""
    try:
        _check_demo_options(out, target, search_steps, retrain_steps, train_size)
        r = run_demo(
            out,
            method=method,
            target=target,
            search_steps=search_steps,
            retrain_steps=retrain_steps,
            train_size=train_size,
        )
    except USER_ERRORS as e:
        _fail(e)
    out_console.print(results_table(r))
    out_console.print(
        f"saved to {out}/ (config.json, plan.json, model.safetensors, README.md, report.json, widths.png, results.json)"
    )


def _check_demo_options(out: Path, target: float, search_steps: int, retrain_steps: int, train_size: int) -> None:
    """The demo's options and output directory, before the teacher loads and the run starts."""
    number("--target", target, high=1.0)
    integer("--search-steps", search_steps)
    integer("--retrain-steps", retrain_steps)
    integer("--train-size", train_size, 1)
    check_save_destination(out)


@app.command()
def inspect(
    model: str = typer.Argument(..., help=MODEL_HELP),
    all_groups: bool = typer.Option(False, "--all", help="one row per group"),
) -> None:
    """List the prunable groups: modality, unit kind, sizes and exact per-unit costs."""
    try:
        m = load_any(model)
        groups = api.inspect(m)
    except Exception as e:  # noqa: BLE001 - shown to the user as one clear line
        _fail(e)
    tab = Table(title=f"{type(m).__name__}: prunable groups (costs for one reference input)")
    if all_groups:
        for col in ("group", "size", "params/unit", "MACs/unit"):
            tab.add_column(col, justify="left" if col == "group" else "right")
        for g in groups:
            tab.add_row(g.name, str(g.size), f"{g.params_per_unit:,}", f"{g.macs_per_unit:,}")
    else:
        for col in ("modality", "kind", "groups", "units", "params/unit", "MACs/unit"):
            tab.add_column(col, justify="left" if col in ("modality", "kind") else "right")
        agg: dict = defaultdict(list)
        for g in groups:
            agg[(g.modality, g.kind.value)].append(g)
        span = lambda vals: f"{min(vals):,}" if min(vals) == max(vals) else f"{min(vals):,}-{max(vals):,}"  # noqa: E731
        for (mod, kind), gs in agg.items():
            tab.add_row(
                mod,
                kind,
                str(len(gs)),
                str(sum(g.size for g in gs)),
                span([g.params_per_unit for g in gs]),
                span([g.macs_per_unit for g in gs]),
            )
    out_console.print(tab)


@app.command("measure")
def measure_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    batch_size: int = typer.Option(1, help="batch of the reference input"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    rounds: int = typer.Option(15, help="timing rounds (median reported)"),
    seconds: float | None = typer.Option(
        None, help="speech models: the clip length in seconds (default: the 1 s reference clip)"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="print the measurement as JSON (with the machine) instead of a table"
    ),
) -> None:
    """Params, MACs and median latency on the model's reference input, with the machine they were measured on."""
    try:
        dev = checked_device("--device", device)
        m = load_any(model).to(dev)
        inputs = clip_inputs(m, batch_size, seconds)
        r = {**measure(m, inputs=inputs, batch_size=batch_size, rounds=rounds), "machine": machine()}
    except Exception as e:  # noqa: BLE001
        _fail(e)
    if as_json:
        out_console.print_json(json.dumps(r))
        return
    tab = Table(title=f"{type(m).__name__}: {model}")
    tab.add_column("")
    tab.add_column("value", justify="right")
    for k, v in (
        ("params", f"{r['params']:,}"),
        ("MACs", f"{r['macs']:,}"),
        ("latency ms (median)", f"{r['latency_ms']:.3f}"),
        ("latency IQR ms", f"{r['latency_iqr_ms']:.3f}"),
        *(
            (
                f"{part}: params / MACs",
                f"{p['params']:,} ({p['params_share']:.1%}) / {p['macs']:,} ({p['macs_share']:.1%})",
            )
            for part, p in r.get("split", {}).items()
        ),
        ("batch size", str(r["batch_size"])),
        ("rounds", str(r["rounds"])),
        ("device", r["device"]),
        ("threads", str(r["threads"])),
        ("dtype", r["dtype"]),
    ):
        tab.add_row(k, v)
    out_console.print(tab)
    mach = r["machine"]
    out_console.print(
        f"machine: {mach['gpu'] or mach['cpu']}, {mach['cores']} cores; torch {mach['torch']}, "
        f"transformers {mach['transformers']}",
        highlight=False,
    )


def clip_inputs(model, batch_size: int, seconds: float | None) -> dict | None:
    """The --seconds clip of a speech model (a waveform at 16 kHz); None (the reference input) without --seconds."""
    if seconds is None:
        return None
    number("--seconds", seconds)
    if "input_values" not in get_adapter(model).input_names(model):
        raise ValueError(f"--seconds: {type(model).__name__} reads no waveform; it applies to speech models")
    return audio_inputs(integer("--batch-size", batch_size, 1), round(seconds * SAMPLING_RATE))


@app.command("report")
def report_cmd(
    directory: Path = typer.Argument(..., help="a vltrim model directory (vltrim compress --out, vltrim.save)"),
    as_json: bool = typer.Option(False, "--json", help="print report.json as saved"),
) -> None:
    """Print the report saved with a compressed model: source, method and settings, data and steps, metric before and
    after, params, MACs, latency and machine, warnings."""
    try:
        rep, checked = read_report(directory)
    except USER_ERRORS as e:
        _fail(e)
    if as_json:
        out_console.print_json(json.dumps(rep, default=str))
        return
    _print_report(rep, checked, directory)


def _print_warnings(rep: dict) -> None:
    """A report's warnings: "pruned without retraining" loud in a red panel, the others as notes."""
    from rich.panel import Panel

    for w in rep.get("warnings", []):
        loud = w.startswith(NOT_RETRAINED)
        out_console.print(
            Panel(Text(w), title="WARNING", style="bold red") if loud else Text("note: " + w, style="yellow")
        )


def _print_report(rep: dict, checked: bool | None, directory: Path) -> None:
    """Warnings (loud in a red panel), then one table per report section, then where the files are."""
    from rich.panel import Panel

    if checked is False:
        out_console.print(
            Panel(
                Text(
                    f"report.json in {directory} does not match the checksum vltrim.json recorded at save "
                    "time: it was edited after saving"
                ),
                style="bold red",
            )
        )
    _print_warnings(rep)
    for s in sections(rep):
        tab = Table(title=s.title, title_justify="left", show_header=any(s.headers))
        for i, h in enumerate(s.headers):
            tab.add_column(h, justify="left" if i == 0 or not any(s.headers) else "right")
        for row in s.rows:
            tab.add_row(*(Text(str(v)) for v in row))
        out_console.print(tab)
        if s.note:
            out_console.print(Text(s.note, style="dim"))
    if (directory / WIDTHS_PNG).is_file():
        out_console.print(f"kept widths per layer: {directory / WIDTHS_PNG}", highlight=False)


@app.command("export")
def export_cmd(
    directory: Path = typer.Argument(..., help="a vltrim model directory"),
    fmt: str = typer.Option("onnx", "--format", help="output format: onnx"),
    out: Path | None = typer.Option(
        None, help="file to write (default: DIRECTORY/model.onnx); --int8 adds <name>.int8.onnx beside it"
    ),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="also write a dynamically int8-quantised copy (onnxruntime) and report its cosine to the fp32 model",
    ),
    batch_size: int = typer.Option(2, help="batch of the example input (at least 2; the batch axis is dynamic)"),
    rounds: int = typer.Option(10, help="timing rounds of torch vs onnxruntime (median reported)"),
    atol: float = typer.Option(1e-4, help="parity tolerance: max abs diff to torch, times max(1, largest output)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Export a compressed model to ONNX (dynamic batch and sequence axes), check it against torch (max abs diff) and
    time it with onnxruntime when installed (pip install 'vltrim[export]')."""
    try:
        r = export(directory, fmt, out, int8=int8, batch_size=batch_size, atol=atol, rounds=rounds)
    except USER_ERRORS as e:
        _fail(e)
    if as_json:
        out_console.print_json(json.dumps(r))
        return
    _print_export(r)


def _print_export(r: dict) -> None:
    """The written files, their axes, parity, speed and (with --int8) the quantised copy's cosine and speed."""
    axes = lambda d: ", ".join(f"{k} [{', '.join(map(str, v))}]" for k, v in d.items())  # noqa: E731
    tab = Table(title=Text(f"exported {r['file']}"), title_justify="left", show_header=False)
    tab.add_column("")
    tab.add_column("")
    add = lambda k, v: tab.add_row(k, Text(v))  # noqa: E731 - shapes in brackets are text, not rich markup
    p, lat, q = r["parity"], r["latency"], r.get("int8")
    add("inputs", axes(r["inputs"]))
    add("outputs", axes(r["outputs"]))
    add("parity vs torch", f"max abs diff {p['max_abs_diff']:.3g} ({p['runtime']}, inputs {axes(p['shapes'])})")
    add(
        "latency",
        f"torch {lat['torch_ms']:.3f} ms, onnxruntime {lat['onnxruntime_ms']:.3f} ms: torch / onnxruntime "
        f"{lat['ratio']:.2f}x (inputs {axes(lat['batch'])}, {lat['threads']} threads)"
        if lat
        else "not timed: onnxruntime is not installed (pip install 'vltrim[export]')",
    )
    if q:
        add("int8 file", f"{q['file']} ({q['bytes']:,} bytes, fp32 {q['fp32_bytes']:,})")
        add("int8 cosine to fp32", f"{q['cosine']:.5f} (lowest over outputs)")
        add(
            "int8 latency",
            f"onnxruntime {q['onnxruntime_ms']:.3f} ms vs torch fp32 {q['torch_ms']:.3f} ms: {q['ratio']:.2f}x",
        )
    out_console.print(tab)
    out_console.print(f"max abs diff vs torch: {p['max_abs_diff']:.3g}", highlight=False)


def _check_cli_options(o: dict, out: Path, model: str, force: bool) -> None:
    """What can be checked before the model and data are loaded: counts, rates, flags and paths (`check_compress_out`)."""
    for k in ("search_steps", "retrain_steps", "latency_batch", "checkpoint_every"):
        integer(f"--{k.replace('_', '-')}", o[k])
    integer("--seed", o["seed"], maximum=MAX_SEED)
    integer("--batch-size", o["batch_size"], 1)
    integer("--grad-accum", o["grad_accum"], 1)
    integer("--align", o["align"], 1)
    number("--lr", o["lr"])
    number("--kd-weight", o["kd_weight"], low_open=False)
    number("--task-weight", o["task_weight"], low_open=False)
    if o["kd_attention"] is not None:
        number("--kd-attention", o["kd_attention"], low_open=False)
    number("--target", o["target"], high=1.0)
    choice("--mixed-precision", o["mixed_precision"], ("no", "fp16", "bf16"))
    _check_task_options(o)
    if (o["checkpoint_every"] or o["resume"]) and o["work_dir"] is None:
        raise typer.BadParameter("--checkpoint-every and --resume need --work-dir (checkpoints are written there)")
    if o["override"] and not o["resume"]:
        raise typer.BadParameter("--override only applies to --resume")
    check_compress_out(out, model, force=force, resume=o["resume"], work_dir=o["work_dir"])  # now, not after the run


def check_compress_out(
    out: Path, model: str, force: bool = False, resume: bool = False, work_dir: Path | None = None
) -> None:
    """compress's --out, before anything is loaded or written: a new or empty directory; a previous vltrim output or
    work_dir only with --resume (the same run continued) or --force (replaced); never a file, the root of the file
    system, the source model's directory or a folder above it, or a directory holding other files (not even with
    --force). A --work-dir inside --out is refused too: the run would fill --out with files before the save."""
    try:
        check_save_destination(out, source=source_dir(model))
    except ModelDirError as e:
        note = " (--force replaces only a previous vltrim output)" if force and out.is_dir() else ""
        raise typer.BadParameter(f"--out: {e}{note}") from None
    where = out.resolve()
    if work_dir is not None and where in work_dir.resolve().parents:
        raise typer.BadParameter(
            f"--work-dir {work_dir} is inside --out {out}: give --out a directory of its own, or the work_dir itself"
        )
    kind = vltrim_files(out) if out.is_dir() else None
    if kind is None or force or resume:
        return
    what = "model saved by vltrim" if kind == "model" else "vltrim run (a work_dir)"
    raise typer.BadParameter(
        f"--out {out} holds a previous {what}: pass --force to replace it, --resume (with its --work-dir) to "
        "continue that run, or choose a new or empty directory"
    )


def _check_task_options(o: dict) -> None:
    """--task (when given) and --retrain-lr (when given)."""
    if o["task"] is not None:
        choice("--task", o["task"], tuple(TASKS))
    if o["retrain_lr"] is not None:
        number("--retrain-lr", o["retrain_lr"])


RECIPE_KEYS = (
    "method",
    "target",
    "metric",
    "align",
    "units",
    "data",
    "eval_data",
    "tokenizer",
    "search_steps",
    "retrain_steps",
    "kd_weight",
    "lr",
    "batch_size",
    "latency_batch",
    "grad_accum",
    "mixed_precision",
    "work_dir",
    "checkpoint_every",
    "resume",
    "allocation",
    "max_ratio",
    "seed",
    "override",
    "depth_share",
    "task_weight",
    "kd_attention",
    "task",
    "retrain_lr",
)


def apply_recipe(ctx: typer.Context, recipe: Path | None, values: dict) -> dict:
    """Recipe (YAML) values replace defaults; options given on the command line win over the recipe."""
    if recipe is None:
        return values
    import yaml

    loaded = _read_recipe(recipe, yaml) or {}
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"recipe {recipe} must be a mapping of option: value")
    loaded = _recipe_keys(recipe, loaded)
    unknown = sorted(set(loaded) - set(RECIPE_KEYS))
    if unknown:
        raise typer.BadParameter(f"recipe {recipe} has unknown keys {unknown}; allowed: {', '.join(RECIPE_KEYS)}")
    for k, v in loaded.items():
        v = _recipe_value(recipe, k, v)  # checked even where the command line wins: a bad recipe is refused
        if (
            getattr(ctx.get_parameter_source(k), "name", None) != "COMMANDLINE"
        ):  # typer ships its own ParameterSource enum
            values[k] = v
    return values


def _recipe_keys(recipe: Path, loaded: dict) -> dict:
    """Recipe keys in the option names' spelling: 'search-steps' (as on the command line) and 'search_steps' both
    mean --search-steps (a leading '--' is dropped too); one option given in both spellings is refused."""
    out: dict = {}
    for k, v in loaded.items():
        name = k.lstrip("-").replace("-", "_") if isinstance(k, str) else k
        if name in out:
            raise typer.BadParameter(
                f"recipe {recipe}: {name!r} is given twice (as {k!r} and in another spelling); keep one"
            )
        out[name] = v
    return out


def _read_recipe(recipe: Path, yaml):
    """The recipe's YAML, parsed; a missing, non-UTF-8 or malformed file, or a key given twice, is one clear error."""

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
            if twice is not None:
                raise typer.BadParameter(
                    f"recipe {recipe}: {twice!r} is given twice (line {node.start_mark.line + 1}); keep one"
                )
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(recipe.read_text(encoding="utf-8"), Loader=Loader)
    except UnicodeDecodeError as e:
        raise typer.BadParameter(f"recipe {recipe} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise typer.BadParameter(f"cannot read recipe {recipe}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise typer.BadParameter(
            f"recipe {recipe} is not valid YAML{where}: {getattr(e, 'problem', None) or e}"
        ) from None


def _recipe_types() -> dict[str, tuple[type, bool]]:
    """(type, may be empty) of every recipe key, read from the `compress` command's annotations."""
    out = {}
    for k, h in typing.get_type_hints(compress).items():
        args = [t for t in typing.get_args(h) if t is not type(None)]
        out[k] = (args[0] if args else h, bool(typing.get_args(h)))
    return out


def _recipe_value(recipe: Path, key: str, value):
    """A recipe value of the option's type: YAML may give 'no' (a string) for a flag or '1e-4' (a string) for a
    number, which would silently mean something else; refuse them with the key named."""
    kind, optional = _recipe_types()[key]
    if value is None:
        if not optional:
            raise typer.BadParameter(f"recipe {recipe}: {key} is empty; give a value or remove the key")
        return None
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }.get(kind, lambda v: isinstance(v, str))
    if not ok(value):
        want = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
        raise typer.BadParameter(f"recipe {recipe}: {key} must be {want}, got {value!r} ({type(value).__name__})")
    return Path(value) if kind is Path else value


def make_data(spec: str, model, split: str, tokenizer: str | None, model_spec: str, task: str = "retrieval"):
    """The dataset a --data ('train' split) or --eval-data string names for ``task`` (see vltrim.tasks.sources:
    'builtin', manifests, image folders, sentence files, hf:DIR)."""
    return DataSource(model, model_spec, task, tokenizer).open(
        spec, "--data" if split == "train" else "--eval-data", split
    )


def cli_data(o: dict, m, model_spec: str) -> tuple:
    """compress's task (--task, else the one that fits the model) and its train / eval datasets, each checked before
    any data is read (the task fits the model; a --tokenizer fits its embedding table)."""
    task = o["task"] or default_task(m)
    if o["data"] or o["eval_data"]:
        get_task(task).check(m)
    src = DataSource(m, model_spec, task, o["tokenizer"])
    src.check([o["data"], o["eval_data"]])
    train = src.open(o["data"], "--data", "train") if o["data"] else None
    val = src.open(o["eval_data"], "--eval-data", "val") if o["eval_data"] else None
    return task, train, val


def _plan_option(file: Path | None):
    """The plan of ``--plan`` (None without it); errors name the option."""
    if file is None:
        return None
    if not file.is_file():
        raise typer.BadParameter(
            f"--plan {file} " + ("is a directory; give its plan.json" if file.is_dir() else "does not exist")
        )
    try:
        return Plan.load(file)
    except PlanError as e:
        raise typer.BadParameter(f"--plan: {e}") from None


def _method_settings(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as method settings (VALUE read as JSON when it is JSON, else as a string)."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(
                f"--set {item!r}: give KEY=VALUE, e.g. --set pattern=2:4 or --set layers='{{\"vision\": 2}}'"
            )
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


THEN = "--then"
STAGES_KEY = "vltrim.stages"  # ctx.meta key: the argument lists after each --then
# the `compress` command's parameters whose vltrim.compress option has another name (the others have compress's
# names, or are the command's own: out, tokenizer, recipe); `STAGE_PARAMS` follows the command
COMPRESS_OPTION_OF = {"data": "train_data", "plan_file": "plan", "settings": "method_settings"}


def split_then(args: list[str]) -> list[list[str]]:
    """The command line split at each ``--then`` (or ``--then=NAME``): the part before, then one part per stage, each
    starting with the stage's method name."""
    parts: list[list[str]] = [[]]
    for a in args:
        if a == THEN:
            parts.append([])
        elif a.startswith(THEN + "="):
            parts.append([a[len(THEN) + 1 :]])
        else:
            parts[-1].append(a)
    return parts


class ChainCommand(TyperCommand):
    """`compress` that takes ``--then NAME [stage options]`` (a chain): click parses the part before the first
    ``--then``; the stage parts wait in ``ctx.meta`` for `cli_stages`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        first, *stages = split_then(list(args))
        ctx.meta[STAGES_KEY] = stages
        return super().parse_args(ctx, first)


def cli_stages(ctx: typer.Context, method: str, settings: dict, depth_share: float | None) -> list | None:
    """The chain ``--then`` builds, as compress's ``method`` list (None without ``--then``): the first stage is
    ``--method`` with the ``--set`` and ``--depth-share`` given before the first ``--then`` (settings of that method);
    every other option before it is shared by all stages. Each ``--then NAME`` stage takes the options in
    `STAGE_PARAMS` that follow it, which override the shared ones for that stage."""
    parts = ctx.meta.get(STAGES_KEY) or []
    if not parts:
        return None
    first = {"method_settings": settings, **({"depth_share": depth_share} if depth_share is not None else {})}
    return [(method, first)] + [_cli_stage(ctx.command, part, i) for i, part in enumerate(parts, 2)]


def _option(name: str) -> str:
    return "--set" if name == "settings" else "--" + name.replace("_", "-")


_NO_MODEL, _NO_OUT = "<model>", "<vltrim: a stage has no --out>"  # placeholders, never used


def _cli_stage(command: TyperCommand, part: list[str], i: int) -> tuple[str, dict]:
    """One ``--then NAME [options]`` part as (NAME, the options given on it), parsed by the compress command itself
    (same names, types and checks); an option of the whole chain, or an unknown one, is refused naming the stage."""
    where = f"{THEN} {part[0]} (stage {i})" if part and not part[0].startswith("-") else f"{THEN} (stage {i})"
    if not part or part[0].startswith("-"):
        raise typer.BadParameter(f"{where}: {THEN} needs a method name first, e.g. {THEN} heads --target 0.3")
    try:  # MODEL and --out are required by the command: placeholders, never used
        sub = command.make_context(THEN, [_NO_MODEL, "--out", _NO_OUT, *part[1:]])
    except Exception as e:  # click's usage errors (no such option, bad value), from typer's bundled click
        raise typer.BadParameter(f"{where}: {e.format_message() if hasattr(e, 'format_message') else e}") from None
    given = {
        n: v
        for n, v in sub.params.items()
        if n not in ("model", "out") and getattr(sub.get_parameter_source(n), "name", None) == "COMMANDLINE"
    }
    if str(sub.params.get("out")) != _NO_OUT:  # a stage's --out (the last given wins over the placeholder)
        given["out"] = sub.params["out"]
    if "method" in given:
        raise typer.BadParameter(f"{where}: a stage's method is the name after {THEN}; drop --method there")
    shared = sorted(_option(n) for n in set(given) - set(STAGE_PARAMS))
    if shared:
        raise typer.BadParameter(
            f"{where}: {', '.join(shared)} {'applies' if len(shared) == 1 else 'apply'} to the whole "
            f"chain: give {'it' if len(shared) == 1 else 'them'} before the first {THEN} (a stage takes "
            f"{', '.join(_option(n) for n in STAGE_PARAMS)}; its method is the name after {THEN})"
        )
    settings = _method_settings(given.pop("settings", None))
    return part[0], {**given, "method_settings": settings}


@app.command(cls=ChainCommand)
def compress(
    ctx: typer.Context,
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(
        ...,
        help="output directory for the compressed model: new or empty (a previous vltrim output needs --force, or "
        "--resume for the same run); never the source model's directory or a folder holding other files",
    ),
    force: bool = typer.Option(
        False, "--force", help="replace the previous vltrim output in --out (never a directory of other files)"
    ),
    method: str = typer.Option(
        "l1",
        help="compression method (l1, taylor, random, upop, mope, modal-adaptive, heads, distill, lowrank, magnitude); "
        "'--then NAME [--target ... --set ...]' chains another method on the result (stage options follow it)",
    ),
    target: float = typer.Option(0.5, help="fraction of prunable cost to remove, in (0, 1)"),
    metric: str = typer.Option("params", help="params or macs"),
    align: int = typer.Option(8, help="kept widths are multiples of this (1 = any width)"),
    units: str | None = typer.Option(
        None, help="unit kinds: head_dims or heads, and neurons (default: the method's; mope: heads,neurons)"
    ),
    allocation: str | None = typer.Option(
        None,
        help="where the cut falls: global (one ranking), uniform (every group alike) or modality; default: the method's",
    ),
    max_ratio: float | None = typer.Option(
        None, help="at most this share of any one group's units is removed; default: the method's"
    ),
    seed: int = typer.Option(0, help="seed of the search (random scores, calibration, batch order) and retraining"),
    depth_share: float | None = typer.Option(
        None, help="mope: the part of the cut that comes from whole layers (0: width only, 1: depth only)"
    ),
    plan_file: Path | None = typer.Option(None, "--plan", help="apply this plan.json instead of searching"),
    task: str | None = typer.Option(
        None,
        help="retrieval (image-text), classification (image classifier), audio-classification (speech classifier), "
        "sentence-embedding (text encoder), text-classification (text sequence classifier), "
        "itm-retrieval, vqa or captioning (BLIP), segmentation (semantic segmenter): the loss that retrains and the "
        "metric that judges; default: the one "
        "that fits the model",
    ),
    data: str | None = typer.Option(
        None,
        help="training data: retrieval: 'builtin', an image-caption manifest (.jsonl/.csv) or an "
        "image folder; classification: an image folder root/<class>/<images>; audio-classification: an audio "
        "folder root/<class>/<clips> (.wav/.flac/.ogg) or a manifest (.csv/.jsonl with 'audio' and 'label'); "
        "sentence-embedding: "
        "sentences (.txt one per line, .jsonl/.csv with a 'text' field); text-classification: .jsonl/.csv with "
        "'text' and 'label'; itm-retrieval / captioning: 'builtin' "
        "or an image-caption manifest; vqa: 'builtin' or a manifest with image, question, answer; segmentation: "
        "'builtin' or a folder root/images/<name>.png|jpg + root/masks/<name>.png (class index per pixel); any task: hf:DIR "
        "(datasets.save_to_disk)",
    ),
    eval_data: str | None = typer.Option(None, help="evaluation data, same forms as --data"),
    tokenizer: str | None = typer.Option(
        None,
        help="local tokenizer directory, or 'builtin' (the reference model's); default: the "
        "model directory's ('builtin' for reference); never downloaded",
    ),
    search_steps: int = typer.Option(300, help="training steps of a training-based search (upop)"),
    retrain_steps: int = typer.Option(0, help="retraining steps of the compressed model (needs --data)"),
    kd_weight: float = typer.Option(1.0, help="weight of distillation from the original model"),
    kd_attention: float | None = typer.Option(
        None,
        help="weight of attention-map distillation (MSE of every block's attention to its teacher block's; runs attention eager while training); default: the method's (0)",
    ),
    task_weight: float = typer.Option(
        1.0,
        help="weight of the task loss; 0: distillation only (MoPE's pre-training stage on unlabelled image-text pairs)",
    ),
    lr: float = typer.Option(1e-4, help="learning rate of the search"),
    retrain_lr: float | None = typer.Option(None, help="learning rate of retraining (default 2e-4)"),
    batch_size: int = typer.Option(64, help="training batch size"),
    latency_batch: int = typer.Option(1, help="batch size for the before/after latency comparison (0: no timing)"),
    grad_accum: int = typer.Option(1, help="micro-batches per optimizer step"),
    mixed_precision: str = typer.Option("no", help="no, bf16 or fp16"),
    work_dir: Path | None = typer.Option(None, help="logs (log.jsonl) and checkpoints of search and retrain"),
    checkpoint_every: int = typer.Option(0, help="checkpoint every N steps (needs --work-dir)"),
    resume: bool = typer.Option(False, help="continue from the latest checkpoints in --work-dir"),
    override: bool = typer.Option(
        False, help="with --resume: continue even though options, data or model differ from the checkpoints' run.json"
    ),
    recipe: Path | None = typer.Option(None, help="YAML file with any of these options (command-line options win)"),
    settings: list[str] | None = typer.Option(
        None,
        "--set",
        help="a setting of the method, KEY=VALUE, repeatable (e.g. --set pattern=2:4, --set layers=2, --set mode=energy --set energy=0.9)",
    ),
) -> None:
    """Compress a model (search or --plan), optionally retrain it, save it and compare it with the original.
    '--then NAME [stage options]' chains another method on the result (the options before the first --then are
    shared by every stage, except --set and --depth-share, which belong to --method)."""
    try:
        o = apply_recipe(
            ctx,
            recipe,
            dict(
                method=method,
                target=target,
                metric=metric,
                align=align,
                units=units,
                data=data,
                eval_data=eval_data,
                tokenizer=tokenizer,
                search_steps=search_steps,
                retrain_steps=retrain_steps,
                kd_weight=kd_weight,
                lr=lr,
                batch_size=batch_size,
                latency_batch=latency_batch,
                grad_accum=grad_accum,
                mixed_precision=mixed_precision,
                work_dir=work_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
                allocation=allocation,
                max_ratio=max_ratio,
                seed=seed,
                override=override,
                depth_share=depth_share,
                task_weight=task_weight,
                kd_attention=kd_attention,
                task=task,
                retrain_lr=retrain_lr,
            ),
        )
        ms = _method_settings(settings)
        chain = cli_stages(ctx, o["method"], ms, o["depth_share"])  # a stage's --out or --force is refused first
        _check_cli_options(o, out, model, force)
        if chain is not None and plan_file is not None:
            raise typer.BadParameter(f"--plan applies one saved plan; it cannot start a chain ({THEN})")
        m = load_any(model)
        task_name, train_ds, eval_ds = cli_data(o, m, model)
        one = (
            {} if chain is not None else dict(depth_share=o["depth_share"], method_settings=ms)
        )  # a chain has them per stage
        res = run_compress(
            m,
            chain or o["method"],
            o["target"],
            train_data=train_ds,
            eval_data=eval_ds,
            search_steps=o["search_steps"],
            retrain_steps=o["retrain_steps"],
            kd_weight=o["kd_weight"],
            lr=o["lr"],
            batch_size=o["batch_size"],
            metric=o["metric"],
            align=o["align"],
            units=o["units"],
            latency_batch=o["latency_batch"],
            grad_accum=o["grad_accum"],
            mixed_precision=o["mixed_precision"],
            work_dir=o["work_dir"],
            checkpoint_every=o["checkpoint_every"],
            resume=o["resume"],
            allocation=o["allocation"],
            max_ratio=o["max_ratio"],
            seed=o["seed"],
            override=o["override"],
            kd_attention=o["kd_attention"],
            task_weight=o["task_weight"],
            plan=_plan_option(plan_file),
            task=task_name,
            **({"retrain_lr": o["retrain_lr"]} if o["retrain_lr"] is not None else {}),
            **one,
        )
        report = res.report
        report.update(source_model=model, data_given={"train": o["data"], "eval": o["eval_data"]})
        save_result(
            res, out, source=source_dir(model)
        )  # with report.json, widths.png (and mope.csv / mope.png) and the card
    except USER_ERRORS as e:
        _fail(e)
    c = report["speed"]
    tab = Table(title=" -> ".join(p.summary() for p in res.plans))
    for col in ("", "original", "compressed", "ratio"):
        tab.add_column(col)
    for key in _metric_keys(report):
        if "before" in report and key in report["before"]:
            tab.add_row(
                key,
                f"{report['before'][key]:.3f}",
                f"{report['after'][key]:.3f}",
                f"{report['after'][key] / max(report['before'][key], 1e-9):.1%}",
            )
    written = io.read_report(out)[0]  # the report as saved: source and compressed costs, warnings
    src, now = written.get("source") or {}, written.get("model") or {}
    for key, label in (("params", "params"), ("macs", "MACs")):
        a, b = (c["a"][key], c["b"][key]) if c is not None else (src.get(key), now.get(key))
        if isinstance(a, int) and isinstance(b, int) and b:
            tab.add_row(label, f"{a:,}", f"{b:,}", f"{a / b:.2f}x")
    for row in split_rows(src.get("split"), now.get("split")):
        tab.add_row(*row)
    if c is not None:
        tab.add_row(
            f"latency ms ({c['device']}, {c['threads']} thr, batch {c['batch_size']})",
            f"{c['a']['latency_ms']:.3f}",
            f"{c['b']['latency_ms']:.3f}",
            speedup_text(c),
        )
    out_console.print(tab)
    _print_warnings(written)
    out_console.print(f"saved to {out}/ (with report.json); reload with vltrim.load('{out}')")


STAGE_PARAMS = tuple(
    n
    for n in typing.get_type_hints(compress)
    if COMPRESS_OPTION_OF.get(n, n) in CompressOptions.of_scope("stage", "method")
)  # `compress` options a --then stage may set: the command's parameters for compress's stage options, in its order


def _metric_keys(report: dict) -> list[str]:
    """The metrics compress prints: the task's headline metric, then zero-shot / probe accuracy when measured."""
    keys = [get_task(report["task"]).metric, "zero_shot_top1", "probe_top1"]
    return [k for k in keys if k in report.get("after", {})]


def _csv_option(option: str, value: str, kind: type) -> list:
    """A comma-separated option as a list of ``kind`` (empty items dropped); a bad item is an error naming the option."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise typer.BadParameter(f"{option} {value!r}: give {kind.__name__} values separated by commas") from None


def _short(n: int | None) -> str:
    """1234567 -> '1.23M' (a terminal table; results.md has the exact counts)."""
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _front_codes(front: str) -> str:
    """'latency b1, params, MACs' as 't1 p m' (the study table's Pareto column, short enough for a terminal)."""
    codes = {"params": "p", "MACs": "m"}
    return " ".join(codes.get(f, f.replace("latency b", "t")) for f in front.split(", ") if f) or "-"


@app.command("study")
def study_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(
        Path("study"),
        help="study directory: cells/, models/, results.csv/.md/.json and PNG plots (a rerun skips finished cells)",
    ),
    task: str = typer.Option("retrieval", help="the task whose loss retrains and whose metric judges every cell"),
    data: str | None = typer.Option(None, help="training data: 'builtin' or an image-caption manifest (.jsonl/.csv)"),
    eval_data: str | None = typer.Option(
        None, help="evaluation data, same forms as --data (default with --data builtin: its held-out split)"
    ),
    tokenizer: str | None = typer.Option(
        None, help="tokenizer directory for a manifest (default: the model directory)"
    ),
    methods: str = typer.Option(
        "magnitude,2:4,heads,lowrank,distill,l1,upop",
        help="methods, comma-separated; '2:4' is magnitude with the 2:4 pattern (one cell, 50%)",
    ),
    ratios: str = typer.Option(
        "0.25,0.5,0.75",
        help="ratios in (0, 1), comma-separated: magnitude's sparsity, distill's share of layers dropped, else the share of prunable params removed",
    ),
    retrain_steps: int = typer.Option(100, help="retraining steps of every cell (the same budget for all)"),
    search_steps: int | None = typer.Option(
        None, help="search steps of training-based searches (upop); default: --retrain-steps"
    ),
    batch_size: int = typer.Option(64, help="training batch size"),
    seed: int = typer.Option(0, help="seed of every cell's search and retraining"),
    latency_batches: str = typer.Option(
        "1,32", help="batch sizes timed (all models in one interleaved run per batch), comma-separated"
    ),
    latency_rounds: int = typer.Option(15, help="timing rounds per batch (median reported)"),
    override: bool = typer.Option(
        False, help="reuse an --out holding a study of other settings: its cells are recomputed"
    ),
) -> None:
    """Compress a model with every method at every ratio, time all of them in one run, and chart metric vs cost."""
    try:
        ms = check_methods(_csv_option("--methods", methods, str), "--methods")
        rs = check_ratios(_csv_option("--ratios", ratios, float), "--ratios")
        bs = check_batches(_csv_option("--latency-batches", latency_batches, int), "--latency-batches")
        integer("--retrain-steps", retrain_steps)
        if search_steps is not None:
            integer("--search-steps", search_steps)
        integer("--batch-size", batch_size, 1)
        integer("--latency-rounds", latency_rounds, 1)
        check_out(out, "--out")
        if eval_data is None and data != "builtin":
            raise typer.BadParameter(
                "--eval-data is needed: every cell is judged on it (it defaults to the held-out split only with --data builtin)"
            )
        m = load_any(model)
        train_ds = make_data(data, m, "train", tokenizer, model, task) if data else None
        eval_ds = make_data(eval_data or "builtin", m, "val", tokenizer, model, task)
        res = study(
            m,
            task=task,
            train_data=train_ds,
            eval_data=eval_ds,
            methods=ms,
            ratios=rs,
            retrain_steps=retrain_steps,
            search_steps=search_steps,
            out=out,
            seed=seed,
            batch_size=batch_size,
            latency_batches=bs,
            latency_rounds=latency_rounds,
            override=override,
        )
    except USER_ERRORS as e:
        _fail(e)
    big = max(bs) if bs else None
    tab = Table(
        title=f"{type(m).__name__}: {res.settings['metric']} vs cost ({res.settings['retrain_steps']} retrain steps per cell)"
    )
    for col in (
        "method",
        "ratio",
        res.settings["metric"],
        "of teacher",
        "params",
        "MACs",
        *([f"speedup b{min(bs)}", f"speedup b{big}"] if bs and big != min(bs) else [f"speedup b{big}"] if bs else []),
        "Pareto",
    ):
        tab.add_column(col, justify="left" if col in ("method", "Pareto") else "right", overflow="fold")
    for r in res.rows:
        sizes = list(dict.fromkeys([min(bs), big])) if bs else []
        speed = [_study_speedup(r, b) for b in sizes]
        tab.add_row(
            r["method"],
            "-" if r["ratio"] is None else f"{r['ratio']:g}",
            "-" if r["metric"] is None else f"{r['metric']:.4f}",
            "-" if r["metric_vs_teacher"] is None else f"{r['metric_vs_teacher']:.1%}",
            _short(r["params"]),
            _short(r["macs"]),
            *speed,
            _front_codes(r["pareto"]),
        )
    out_console.print(tab)
    out_console.print(
        "Pareto: on the front of the metric vs tN = latency at batch N, p = params, m = MACs"
        + ("; ? = speedup not conclusive (the paired rounds disagree: see results.md)" if bs else ""),
        highlight=False,
    )
    out_console.print(
        f"written to {out}/: " + ", ".join(p.name for p in res.files.values()) + ", cells/, models/ "
        "(results.md: every column, what each ratio means, the machine)",
        highlight=False,
    )


def _study_speedup(row: dict, batch: int) -> str:
    """'1.84x', '0.97x?' when the cell's paired rounds do not agree (`measure.speedup_verdict`), '-' when not timed."""
    v = row.get(f"speedup_b{batch}")
    if v is None:
        return "-"
    return f"{v:.2f}x" + ("?" if row.get(f"speedup_b{batch}_conclusive") is False else "")


if __name__ == "__main__":
    app()
