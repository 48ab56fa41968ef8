"""The `vltrim` command: inspect, measure, compress (search or --plan), clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import vltrim
from vltrim.cli import app

runner = CliRunner()


def test_inspect_and_measure():
    r = runner.invoke(app, ["inspect", "tiny:VisionTextDualEncoderModel"])
    assert r.exit_code == 0 and "head_dims" in r.output and "vision" in r.output and "text" in r.output
    r = runner.invoke(app, ["measure", "tiny:ViTModel", "--rounds", "2", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["params"] > 0


@pytest.mark.slow
def test_compress_saves_a_loadable_smaller_model(tmp_path):
    r = runner.invoke(
        app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "a"), "--target", "0.4", "--metric", "macs"]
    )
    assert r.exit_code == 0, r.output
    small = vltrim.load(tmp_path / "a")
    plan = vltrim.plans_of(small)[0]
    assert plan.achieved["macs_removed"] >= 0.4
    # the saved plan applies again through --plan and gives the same shapes
    r = runner.invoke(
        app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "b"), "--plan", str(tmp_path / "a" / "plan.json")]
    )
    assert r.exit_code == 0, r.output
    assert vltrim.count_params(vltrim.load(tmp_path / "b")) == vltrim.count_params(small)
    # --plan goes through compress like a search: retrain (with KD) and evaluate before/after
    r = runner.invoke(
        app,
        [
            "compress",
            "tiny:CLIPModel",
            "--out",
            str(tmp_path / "c"),
            "--plan",
            str(tmp_path / "a" / "plan.json"),
            "--data",
            "builtin",
            "--eval-data",
            "builtin",
            "--retrain-steps",
            "2",
            "--batch-size",
            "16",
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["method"] == "l1" and report["target"] == 0.4 and {"before", "after_search", "after"} <= set(report)
    r = runner.invoke(app, ["inspect", str(tmp_path / "a"), "--all"])
    assert r.exit_code == 0 and "vision.layers.0.mlp.neurons" in r.output


def test_errors_exit_2_with_a_message(tmp_path):
    r = runner.invoke(app, ["compress", "tiny:BertModel", "--out", str(tmp_path), "--target", "1.5"])
    assert r.exit_code == 2 and "target" in r.output
    r = runner.invoke(
        app, ["compress", "tiny:BertModel", "--out", str(tmp_path), "--plan", str(tmp_path / "none.json")]
    )
    assert r.exit_code == 2
    r = runner.invoke(app, ["inspect", "tiny:NoSuchModel"])
    assert r.exit_code == 2 and "no tiny config" in r.output


@pytest.mark.slow
def test_compress_upop_with_builtin_data_and_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: upop\ntarget: 0.3\nsearch_steps: 4\nretrain_steps: 2\nbatch_size: 16\ndata: builtin\n")
    r = runner.invoke(
        app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "o"), "--recipe", str(recipe), "--target", "0.4"]
    )
    assert r.exit_code == 0, r.output
    plan = vltrim.plans_of(vltrim.load(tmp_path / "o"))[0]
    assert plan.method == "upop" and plan.target["target"] == 0.4  # the command line wins over the recipe
    assert plan.settings["steps"] == 4
    assert json.loads((tmp_path / "o" / "report.json").read_text())["speed"]["params_ratio"] > 1.2


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methd: upop\n")
    r = runner.invoke(app, ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "o"), "--recipe", str(bad)])
    assert r.exit_code == 2 and "unknown keys" in r.output
    r = runner.invoke(
        app, ["compress", "tiny:BertModel", "--out", str(tmp_path / "o"), "--method", "upop", "--data", "builtin"]
    )
    assert r.exit_code == 2 and "image-text model" in r.output


@pytest.mark.slow
def test_compress_work_dir_logs_checkpoints_and_resume(tmp_path):
    args = [
        "compress",
        "tiny:CLIPModel",
        "--method",
        "upop",
        "--data",
        "builtin",
        "--target",
        "0.3",
        "--search-steps",
        "4",
        "--batch-size",
        "16",
        "--work-dir",
        str(tmp_path / "w"),
        "--checkpoint-every",
        "2",
    ]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w" / "search" / "log.jsonl").exists() and (tmp_path / "w" / "search" / "checkpoint-2").is_dir()
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--resume"])
    assert r.exit_code == 0, r.output
    keep = lambda d: vltrim.plans_of(vltrim.load(tmp_path / d))[0].keep  # noqa: E731
    assert keep("a") == keep("b")


def test_cli_compress_passes_allocation_cap_and_seed(tmp_path):
    from typer.testing import CliRunner

    from vltrim.cli import app

    plans = []
    for seed in (1, 2):
        out = tmp_path / f"s{seed}"
        r = CliRunner().invoke(
            app,
            [
                "compress",
                "tiny:BertModel",
                "--out",
                str(out),
                "--method",
                "random",
                "--target",
                "0.3",
                "--seed",
                str(seed),
                "--allocation",
                "uniform",
                "--max-ratio",
                "0.5",
                "--latency-batch",
                "0",
            ],
        )
        assert r.exit_code == 0, r.output
        plans.append(vltrim.Plan.load(out / "plan.json"))
    assert plans[0].target["allocation"] == "uniform" and plans[0].target["max_ratio"] == 0.5
    assert plans[0].settings["seed"] == 1 and plans[0].keep != plans[1].keep
