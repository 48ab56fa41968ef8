"""A pruned model on disk: config.json (unpruned architecture) + plan.json + model.safetensors + README.md,
and vltrim.json: the SHA-256 of config.json, plan.json and model.safetensors recorded at save time. config.json
also holds an ``auto_map`` to modeling_vltrim.py (written beside it), so transformers loads the directory with
``AutoModel.from_pretrained(path, trust_remote_code=True)`` through ``load`` (see hf.py); with ``source`` the
tokenizer / processor / sentence-transformers files of the original model are copied too. This module saves and
loads models only: a caller may hand ``save`` more files to write into the directory (``extra``; `vltrim.save` of a
`CompressResult` writes its report.json, widths.png and MoPE's mope.csv / mope.png so, see `vltrim.run.artifacts`):
they are installed with the model files, and report.json's SHA-256 goes in vltrim.json under "reports" (for
`vltrim report`; ``load`` does not check it, the model does not depend on it). Files are 0644 and the
directory 0755 (less what the umask removes).

``load`` checks those checksums, rebuilds the unpruned architecture from config.json, applies the plans
to get the pruned shapes (sliced groups and factorised Linears; no SVD is computed, no weight is zeroed), then
loads the weights strictly: every tensor must be there with its exact shape; last, every sparsified Linear must
hold the pattern and sparsity its plan records. Every problem with a directory is a
``ModelDirError`` (or ``PlanError`` for plan.json's content) whose message names the file."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from vltrim._version import __version__
from vltrim.arch.apply import BASE_CONFIG_ATTR, PLANS_ATTR, apply_plan, base_config, plans_of
from vltrim.arch.registry import UnsupportedModelError, class_name, get_adapter, model_class
from vltrim.checks import device as checked_device
from vltrim.checks import path as checked_path
from vltrim.io import remote_code
from vltrim.io.layout import (
    _DTYPES,
    CARD,
    CHECKED,
    CHECKSUMS,
    CHECKSUMS_FORMAT,
    CHECKSUMS_VERSION,
    CONFIG,
    EXPORTS,
    MODELING,
    PLAN,
    REPORT,
    REPORT_FILES,
    RUN_FORMAT,
    RUN_RECORD,
    WEIGHTS,
    MissingModelFileError,
    ModelDirError,
)
from vltrim.report import model_card, report_from_plans
from vltrim.structure.plan import PLAN_FORMAT, PLANS_FORMAT, Plan, PlanError, dumps_plans, read_json, read_plans
from vltrim.structure.result import CompressResult
from vltrim.structure.sparsify import check_sparsity

PLAN_FORMATS = (PLAN_FORMAT, PLANS_FORMAT)


# ---- save ---------------------------------------------------------------------------------------------
def save(
    model: nn.Module,
    path: str | Path,
    card_extra: str = "",
    source: str | Path | None = None,
    card: str | None = None,
    extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write the model directory (with vltrim.json checksums and modeling_vltrim.py); returns its path.

    ``source``: the directory of the model it was compressed from (a transformers or sentence-transformers save);
    its tokenizer, processor and sentence-transformers files are copied (hf.copy_source_files), never its weights.
    ``card``: README.md's text (None: the model card of the model and its plans, with ``card_extra`` added).
    ``extra``: called with the directory being written, after the model files and before vltrim.json, to write more
    files into it (a run's report and artefacts: `vltrim.run.artifacts`); a report.json among them gets its SHA-256
    recorded in vltrim.json's "reports". A `CompressResult` is saved with `vltrim.save`, which writes its report.
    Every file is written to a temporary directory next to ``path`` first, so a bad plan or a crash never
    leaves a directory that ``load`` accepts while being wrong. ``path`` must be new, empty, or a directory vltrim
    wrote (a saved model, a run's work_dir): an existing vltrim model directory is overwritten, and files derived from
    the model it held are removed (`vltrim export`'s model.onnx, and report files when this save has none); a file,
    a directory holding other files, the root of the file system, and ``source`` or a folder above it are refused
    before anything is written (`check_save_destination`)."""
    if isinstance(model, CompressResult):
        raise TypeError(
            "vltrim.io.save writes a model: save a CompressResult with vltrim.save, which writes its report too"
        )
    out = save_destination(model, path, source)
    plans = saved_plans(model)
    texts = {
        CONFIG: remote_code.config_text(base_config(model), model),
        PLAN: dumps_plans(plans),
        CARD: model_card(model, plans, extra=card_extra) if card is None else card,
        MODELING: remote_code.modeling_source(model),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.resolve().parent / f".{out.resolve().name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        save_model(model, str(tmp / WEIGHTS))
        if source is not None:
            remote_code.copy_source_files(source, tmp)
        if extra is not None:
            extra(tmp)
        reported = (tmp / REPORT).is_file()
        (tmp / CHECKSUMS).write_text(_checksums_text(tmp), encoding="utf-8")  # last: config.json is final
        _make_readable(tmp)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name in EXPORTS + (() if reported else REPORT_FILES):  # they described the model saved before
        (out / name).unlink(missing_ok=True)
    return out


def save_destination(model: nn.Module, path: str | Path, source: str | Path | None = None) -> Path:
    """Where ``save`` writes ``model``, checked before anything is written: an unsupported model, a bad path, or a
    destination ``save`` refuses (see `check_save_destination`) fail here."""
    get_adapter(model)
    out = checked_path("path", path)
    check_save_destination(out, source=source)
    return out


def saved_plans(model: nn.Module) -> list[Plan]:
    """The plans ``save`` writes to plan.json: the model's, or one empty plan for a model no plan changed."""
    return plans_of(model) or [Plan(class_name(model), {}, {}, {}, method="none")]


def _make_readable(folder: Path) -> None:
    """Files 0644 and folders 0755 less the umask (safetensors writes 0600): a saved model is shared like any output."""
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _make_readable_files(files: list[Path]) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for f in files:
        f.chmod(0o666 & ~mask)


def check_save_destination(out: str | Path, source: str | Path | None = None) -> None:
    """ModelDirError unless ``save`` may write to ``out`` without losing or littering anyone's files: ``out`` must not
    exist, be an empty directory, or be a directory vltrim wrote (`vltrim_files`: a saved model, which is then
    replaced, or a run's work_dir). Refused: a file; the root of the file system; the directory of the ``source``
    model or any folder above it (saving there would overwrite or mix in with the model compressed); any other
    non-empty directory. Callers check it before long work."""
    out = checked_path("path", out)
    where = out.resolve()
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"cannot save a model to {out}: it is a file, not a directory")
    if where == Path(where.anchor):
        raise ModelDirError(
            f"cannot save a model to {out}: it is the root of the file system; choose a new or empty directory"
        )
    if source is not None:
        src = checked_path("source", source).resolve()
        if where == src or where in src.parents:
            what = "the directory of the source model" if where == src else f"a folder above the source model {src}"
            raise ModelDirError(
                f"cannot save a model to {out}: it is {what}, whose files saving would overwrite or mix in with; "
                "choose a new or empty directory"
            )
    if not out.is_dir() or vltrim_files(out):
        return
    names = sorted(p.name for p in out.iterdir())
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ModelDirError(
            f"cannot save a model to {out}: it holds files vltrim did not write ({shown}) and no {CHECKSUMS}; saving "
            "would mix the model's files in with them. Choose a new or empty directory"
        )


def vltrim_files(folder: str | Path) -> str | None:
    """What vltrim wrote ``folder`` as: "model" (a saved model: vltrim.json, or plan.json of a save that recorded no
    checksums), "run" (a compress run's work_dir: run.json) or None (empty, missing, or anything else)."""
    folder = Path(folder)
    if _json_format(folder / CHECKSUMS) == CHECKSUMS_FORMAT or _json_format(folder / PLAN) in PLAN_FORMATS:
        return "model"
    if _json_format(folder / RUN_RECORD) == RUN_FORMAT:
        return "run"
    return None


def _json_format(file: Path) -> Any:
    """The "format" field of a small JSON file (None if it is missing, unreadable or not such a file)."""
    try:
        if not file.is_file() or file.stat().st_size > (1 << 24):
            return None
        d = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d.get("format") if isinstance(d, dict) else None


def _install(tmp: Path, out: Path) -> None:
    """Move the finished files into ``out``: a rename for a new directory; for an existing one, vltrim.json first,
    so that until every file is in place the directory fails verification instead of loading a mix (a copied
    sentence-transformers module folder replaces the old one whole; other files already in ``out`` stay)."""
    if not out.exists():
        try:
            os.replace(tmp, out)
            return
        except OSError:  # created meanwhile by someone else: fall through to file by file
            if not out.is_dir():
                raise
    for name in sorted((p.name for p in tmp.iterdir()), key=lambda n: n != CHECKSUMS):
        if (tmp / name).is_dir() and (out / name).is_dir():
            shutil.rmtree(out / name)
        os.replace(tmp / name, out / name)


def _checksums_text(folder: Path) -> str:
    """vltrim.json for the files in ``folder``: the SHA-256 of config.json, plan.json, model.safetensors and (when
    there) modeling_vltrim.py, which transformers runs; report.json's apart (load does not check it)."""
    files = {name: sha256_file(folder / name) for name in CHECKED + (MODELING,) if (folder / name).is_file()}
    reports = {REPORT: sha256_file(folder / REPORT)} if (folder / REPORT).is_file() else {}
    return json.dumps(
        {
            "format": CHECKSUMS_FORMAT,
            "version": CHECKSUMS_VERSION,
            "written_by": f"vltrim {__version__}",
            "algorithm": "sha256",
            "files": files,
            **({"reports": reports} if reports else {}),
        },
        indent=1,
    )


def report_checksum_ok(path: Path) -> bool | None:
    """Whether report.json matches the SHA-256 vltrim.json recorded at save time (None: none recorded)."""
    try:
        recorded = json.loads((path / CHECKSUMS).read_text(encoding="utf-8")).get("reports", {}).get(REPORT)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(recorded, str) or not (path / REPORT).is_file():
        return None
    return sha256_file(path / REPORT) == recorded


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (fast, constant memory)."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---- load ---------------------------------------------------------------------------------------------
def load(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> nn.Module:
    """Rebuild a model saved by ``save`` (same class, same pruned shapes, bit-exact weights), in eval mode.

    With ``verify`` (default) config.json, plan.json, model.safetensors and modeling_vltrim.py (when its checksum
    was recorded) must match the SHA-256 recorded in vltrim.json, or ModelDirError names the file that changed or is
    missing; a directory without vltrim.json (deleted, or saved before vltrim recorded checksums) is refused with a
    MissingModelFileError. ``verify=False`` loads without checking, knowingly (files edited on purpose, an old save).
    (``vltrim.load`` also takes the names "reference" and "tiny:<Class>": see vltrim.models.)"""
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}")
    path, device = checked_path("path", path), checked_device("device", device)
    _check_files(path)
    if verify:
        _verify(path)
    plans = read_plans(path / PLAN)
    header = _read_header(path / WEIGHTS)
    model, cfg, base_shapes = _build(path, plans, _stored_dtype(header))
    _check_shapes(model, header, base_shapes, path)
    _load_weights(model, path, header, device)
    _check_sparse_patterns(model, path)
    model.to(device)
    setattr(model, BASE_CONFIG_ATTR, cfg)
    setattr(model, PLANS_ATTR, [p for p in plans if not p.empty])
    return model.eval()


def _check_files(path: Path) -> None:
    """MissingModelFileError saying what is missing and what the directory looks like."""
    if not path.exists():
        raise MissingModelFileError(f"{path} does not exist")
    if not path.is_dir():
        raise ModelDirError(f"{path} is a file; vltrim.load takes the directory written by vltrim.save")
    folders = [n for n in (CONFIG, PLAN, WEIGHTS) if (path / n).is_dir()]
    if folders:
        raise ModelDirError(
            f"{path / folders[0]} is a directory, not a file: {path} is not a vltrim model directory as saved"
        )
    have = {n for n in (CONFIG, PLAN, WEIGHTS) if (path / n).is_file()}
    if PLAN not in have:
        raise MissingModelFileError(f"{path} has no {PLAN}: not a vltrim model directory ({_looks_like(path)})")
    missing = [n for n in (CONFIG, WEIGHTS) if n not in have]
    if missing:
        raise MissingModelFileError(
            f"{path} has {PLAN} but no {' and no '.join(missing)}: the save is incomplete "
            "(interrupted, or files moved); save the model again"
        )


def _looks_like(path: Path) -> str:
    """What a directory without plan.json seems to be, for the error message."""
    names = sorted(p.name for p in path.iterdir())
    if CONFIG in names:
        return (
            f"it has {CONFIG} but no {PLAN}, like a Hugging Face model directory: load it with transformers' "
            "from_pretrained, or pass it to vltrim's CLI as a model directory"
        )
    if not names:
        return "it is empty"
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"it holds {shown}"


def _verify(path: Path, skip: tuple[str, ...] = ()) -> None:
    """Compare each recorded file's SHA-256 with vltrim.json; ModelDirError naming every file that differs. A
    directory without vltrim.json is refused: nothing in it could be checked."""
    if not (path / CHECKSUMS).is_file():
        raise MissingModelFileError(
            f"{path} has no {CHECKSUMS}, so none of its files can be verified: it was deleted, or the directory was "
            f"saved by a vltrim that recorded no checksums. To load it unverified knowingly, pass verify=False "
            f"(vltrim.load({str(path)!r}, verify=False)); saving the model again writes a new {CHECKSUMS}"
        )
    recorded = {n: d for n, d in _read_checksums(path, skip).items() if n not in skip}
    changed = [n for n, digest in recorded.items() if sha256_file(path / n) != digest]
    if changed == [MODELING]:
        raise ModelDirError(
            f"{MODELING} in {path} does not match the checksum recorded at save time in {CHECKSUMS} (truncated or "
            "edited?): it is the code transformers runs for AutoModel.from_pretrained(..., trust_remote_code=True). "
            f"{_REWRITE_MODELING.format(path=str(path))}"
        )
    if changed:
        verb = "does" if len(changed) == 1 else "do"
        raise ModelDirError(
            f"{' and '.join(changed)} in {path} {verb} not match the checksum recorded at save time in "
            f"{CHECKSUMS} (edited or corrupted?); pass verify=False to load it anyway"
        )


_REWRITE_MODELING = (
    "vltrim.io.restore_modeling({path!r}) writes it again (after checking the other files), "
    "or pass verify=False to load the directory without checking anything"
)


def restore_modeling(path: str | Path) -> Path:
    """Write a saved model's modeling_vltrim.py again (deleted, truncated or edited) and record its new SHA-256 in
    vltrim.json; config.json, plan.json and model.safetensors are verified first (ModelDirError if they do not
    match). Returns the file written."""
    path = checked_path("path", path)
    _check_files(path)
    _verify(path, skip=(MODELING,))
    try:
        cls = model_class(read_plans(path / PLAN)[0].model_class)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{path / PLAN}: {e}") from None
    ref = _read_config(path).get("auto_map", {})
    ref = ref.get("AutoModel") if isinstance(ref, dict) else None
    name = (
        ref.rsplit(".", 1)[-1]
        if isinstance(ref, str) and ref.isascii() and ref.rsplit(".", 1)[-1].isidentifier()
        else None
    )
    file = path / MODELING
    tmp = path / f".{MODELING}.tmp-{secrets.token_hex(4)}"
    tmp.write_text(remote_code.modeling_text(cls, name), encoding="utf-8")
    os.replace(tmp, file)
    d = read_json(path / CHECKSUMS, error=ModelDirError)
    d["files"][MODELING] = sha256_file(file)
    tmp = path / f".{CHECKSUMS}.tmp-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(d, indent=1), encoding="utf-8")
    os.replace(tmp, path / CHECKSUMS)
    _make_readable_files([file, path / CHECKSUMS])
    return file


def _read_checksums(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{file: sha256} from vltrim.json, every field checked; every checked file must be listed and present."""
    file = path / CHECKSUMS
    hint = "; pass verify=False to load without checking"
    d = read_json(file, error=ModelDirError)
    if not isinstance(d, dict) or d.get("format") != CHECKSUMS_FORMAT:
        raise ModelDirError(f'{file} is not a vltrim checksum file (no "format": "{CHECKSUMS_FORMAT}"){hint}')
    if d.get("version") != CHECKSUMS_VERSION or d.get("algorithm") != "sha256":
        raise ModelDirError(
            f"{file} has version {d.get('version')!r}, algorithm {d.get('algorithm')!r}; this vltrim "
            f"reads version {CHECKSUMS_VERSION}, sha256{hint}"
        )
    files = d.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and len(v) == 64 for v in files.values()):
        raise ModelDirError(f'{file}: "files" must map file names to SHA-256 hex digests{hint}')
    unlisted = [n for n in CHECKED if n not in files]
    if unlisted:
        raise ModelDirError(f"{file} records no checksum for {', '.join(unlisted)}{hint}")
    absent = [n for n in files if n not in skip and not _inside(path, n)]
    if absent == [MODELING]:
        raise MissingModelFileError(
            f"{path} has no {MODELING}, which {file} records: it was deleted or moved, and without it transformers' "
            f"AutoModel.from_pretrained(..., trust_remote_code=True) cannot load the directory. "
            f"{_REWRITE_MODELING.format(path=str(path))}"
        )
    if absent:
        raise MissingModelFileError(f"{file} records {', '.join(absent)}, which {path} does not hold")
    return files


def _inside(path: Path, name: Any) -> bool:
    """``name`` is a plain file name (no path parts) of an existing file in ``path``."""
    return isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..") and (path / name).is_file()


def _read_config(path: Path) -> dict:
    """config.json as a dict (HF writes NaN/Infinity as JSON constants, so they are accepted here)."""
    d = read_json(path / CONFIG, error=ModelDirError, allow_nonfinite=True)
    if not isinstance(d, dict):
        raise ModelDirError(f"{path / CONFIG} must hold a JSON object (a model config), got {type(d).__name__}")
    return d


def _build(path: Path, plans: list[Plan], dtype: torch.dtype) -> tuple[nn.Module, Any, dict[str, list[int]]]:
    """The unpruned model from config.json (random init), then every plan applied: the saved shapes.
    Also returns the unpruned tensor shapes (to tell a config edit from a swapped plan)."""
    try:
        cls = model_class(plans[0].model_class)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{path / PLAN}: {e}") from None
    d = _read_config(path)
    want = getattr(cls.config_class, "model_type", None)
    if want and d.get("model_type") not in (None, want):
        raise ModelDirError(
            f"{path / PLAN} is for {cls.__name__} (model_type {want!r}) but {path / CONFIG} describes "
            f"model_type {d.get('model_type')!r}: one of them was replaced"
        )
    _check_types(d, _default_config(cls), f"{path / CONFIG}: ")
    try:
        cfg = cls.config_class.from_dict(d)
        model = cls(cfg).to(dtype)
    except Exception as e:  # transformers/torch raise many kinds for a bad config; the user needs one clear one
        raise ModelDirError(
            f"{path / CONFIG} does not describe a valid {cls.__name__}: {type(e).__name__}: {e}"
        ) from None
    cfg = copy.deepcopy(model.config)  # the unpruned config: dropping layers changes model.config's layer counts
    base_shapes = {k: list(t.shape) for k, t in model.state_dict().items()}
    for p in plans:
        if not p.empty:
            try:
                model = apply_plan(
                    model, p, inplace=True, compute_factors=False, zero_weights=False
                )  # weights from the file
            except PlanError as e:
                raise PlanError(f"{path / PLAN} does not fit the model described by {path / CONFIG}: {e}") from None
    return model, cfg, base_shapes


def _default_config(cls: type) -> dict:
    """The config class's defaults as a dict ({} if it has no default, e.g. a dual encoder's)."""
    try:
        return cls.config_class().to_dict()
    except Exception:
        return {}


def _check_types(d: dict, default: dict, where: str) -> None:
    """ModelDirError for a scalar config value whose JSON type differs from the class default's (a string size, a
    float layer count); lists where a number is the default are left to the model to accept or refuse."""
    for key, dv in default.items():
        v = d.get(key)
        if v is None or dv is None:
            continue
        if isinstance(dv, dict) and isinstance(v, dict):
            _check_types(v, dv, f"{where}{key}.")
        elif not _same_json_type(v, dv):
            raise ModelDirError(
                f"{where}{key} must be {type(dv).__name__} like {json.dumps(dv)[:40]}, "
                f"got {type(v).__name__} {json.dumps(v)[:40]}"
            )


def _same_json_type(v: Any, dv: Any) -> bool:
    scalars = (bool, int, float, str)
    if not (isinstance(v, scalars) and isinstance(dv, scalars)):
        return True
    if isinstance(dv, bool) or isinstance(v, bool):
        return isinstance(v, bool) and isinstance(dv, bool)
    if isinstance(dv, float):
        return isinstance(v, (int, float))
    return isinstance(v, str) if isinstance(dv, str) else isinstance(v, int)


def _read_header(file: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor: (dtype, shape)} of a safetensors file; ModelDirError if it is not a readable one."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # SafetensorError and friends: truncated, garbage, not safetensors
        raise ModelDirError(f"{file} is not a readable safetensors file (truncated or corrupted?): {e}") from None


def _stored_dtype(header: dict[str, tuple[str, list[int]]]) -> torch.dtype:
    """dtype of the first floating tensor in the file (the model is rebuilt in it)."""
    return next((_DTYPES[dt] for dt, _ in header.values() if dt in _DTYPES), torch.float32)


def _check_shapes(
    model: nn.Module, header: dict[str, tuple[str, list[int]]], base_shapes: dict[str, list[int]], path: Path
) -> None:
    """ModelDirError naming a tensor whose saved shape differs from the one config.json + plan.json give; it blames
    config.json when the tensor is one no plan changed, else plan.json."""
    state = model.state_dict()
    wrong = [
        (k, header[k][1], list(t.shape)) for k, t in state.items() if k in header and header[k][1] != list(t.shape)
    ]
    if not wrong:
        return
    by_config = [w for w in wrong if base_shapes.get(w[0]) == w[2]]
    k, saved, built = (by_config or wrong)[0]
    more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
    if by_config:
        raise ModelDirError(
            f"{CONFIG} does not match {WEIGHTS} in {path}: tensor {k!r} has shape {saved} in {WEIGHTS} but "
            f"{built} in the model {CONFIG} describes{more}. Was {CONFIG} edited?"
        )
    raise ModelDirError(
        f"{PLAN} does not match {WEIGHTS} in {path}: tensor {k!r} has shape {saved} in {WEIGHTS} but "
        f"{built} in the model rebuilt from {CONFIG} and {PLAN}{more}. Was {PLAN} replaced by a plan "
        "for another model or target?"
    )


def _load_weights(model: nn.Module, path: Path, header: dict, device: str | torch.device) -> None:
    """Strict load (every tensor present, none extra); ModelDirError listing the differences."""
    try:
        load_model(model, str(path / WEIGHTS), strict=True, device=str(device))
    except RuntimeError as e:
        state = set(model.state_dict())
        missing, extra = sorted(state - set(header)), sorted(set(header) - state)
        if not missing and not extra:
            raise ModelDirError(f"cannot load {path / WEIGHTS}: {e}") from None
        raise ModelDirError(
            f"{WEIGHTS} in {path} does not match {CONFIG} and {PLAN}: "
            f"{_names('missing', missing)}{'; ' if missing and extra else ''}{_names('unexpected', extra)}"
        ) from None


def _check_sparse_patterns(model: nn.Module, path: Path) -> None:
    """ModelDirError naming the file and the Linear when a sparsified Linear's loaded weights break its recorded
    pattern (too few exact zeros; a 2:4 group with fewer than 2 zeros): the zeros are part of the saved model."""
    names = {id(m): n for n, m in get_adapter(model).linears(model).items()}
    bad = check_sparsity(model, names)
    if bad:
        name, why = bad[0]
        more = f" (and {len(bad) - 1} more Linears)" if len(bad) > 1 else ""
        raise ModelDirError(
            f"{path / WEIGHTS} does not hold the sparsity {PLAN} records for {name!r}: {why}{more}. "
            "Were the weights edited or retrained without keeping zeros (vltrim.structure.sparsify.freeze_zeros)?"
        )


def _names(what: str, names: list[str]) -> str:
    if not names:
        return ""
    return f"{len(names)} {what} tensor(s): {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


# ---- reading a saved report -----------------------------------------------------------------------------------
def read_report(directory: str | Path) -> tuple[dict[str, Any], bool | None]:
    """A vltrim directory's report.json (or, saved without one, what plan.json tells) and whether it matches the
    checksum recorded at save time (None: none recorded). Errors name the directory or file."""
    path = Path(directory)
    _check_files(path)
    if not (path / REPORT).is_file():
        return report_from_plans(read_plans(path / PLAN)), None
    rep = read_json(path / REPORT, error=ModelDirError, allow_nonfinite=True)
    if not isinstance(rep, dict):
        raise ModelDirError(f"{path / REPORT} must hold a JSON object (a vltrim report), got {type(rep).__name__}")
    return rep, report_checksum_ok(path)
