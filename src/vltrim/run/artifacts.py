"""What a compress run leaves beside its saved model: report.json (source model, method and settings of every stage,
data and steps, metric before / after search / after retraining, params, MACs, latency and machine, warnings),
widths.png (kept widths per layer and tower), MoPE's module errors (mope.csv, mope.png) and the report's sections
in the model card (README.md). They are written here, through `vltrim.io.save`'s ``extra`` files, so they are
installed with the model files in one step and vltrim.json records report.json's SHA-256; io itself only saves
and loads models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltrim import io
from vltrim.report import (
    REPORT,
    WIDTHS_PNG,
    build_report,
    model_card,
    plot_widths,
    report_text,
    save_mope_table,
    widths_cut,
)
from vltrim.structure.result import CompressResult


def save(model: Any, path: str | Path, card_extra: str = "", source: str | Path | None = None) -> Path:
    """`vltrim.save`: write the model directory (see `vltrim.io.save`); returns its path.

    ``model``: a model, or a `CompressResult` (what `vltrim.compress` returns): then its report is written too, as
    report.json, widths.png (when a layer or width was cut) and in the model card (README.md); a MoPE run also writes
    its module errors (mope.csv, mope.png). ``source``: the directory of the model it was compressed from, whose
    tokenizer, processor and sentence-transformers files are copied (never its weights)."""
    if not isinstance(model, CompressResult):
        return io.save(model, path, card_extra=card_extra, source=source)
    if not isinstance(model.report, dict):
        raise TypeError(
            f"the CompressResult's report must be a dict (as compress makes it), got {type(model.report).__name__}"
        )
    net, run = model.model, model.report
    out = io.save_destination(net, path, source)  # before the report is built: a bad destination fails first
    plans = io.saved_plans(net)
    report = build_report(net, [p for p in plans if not p.empty], run, source)
    return io.save(
        net,
        out,
        source=source,
        card=model_card(net, plans, extra=card_extra, report=report),
        extra=lambda folder: write_artifacts(report, run, folder),
    )


def write_artifacts(report: dict[str, Any], run: dict[str, Any], folder: Path) -> None:
    """report.json, widths.png (when a layer or width was cut) and (MoPE: the run's ``scores_table``) mope.csv /
    mope.png into ``folder``."""
    (folder / REPORT).write_text(report_text(report), encoding="utf-8")
    if widths_cut(report.get("widths")):
        plot_widths(report["widths"], folder / WIDTHS_PNG, title=f"{report['model']['class']}: kept widths per layer")
    if run.get("scores_table"):
        save_mope_table(run["scores_table"], folder)
