"""The command line refuses bad options, recipes and directories with one clear line (exit 2), before any work
and without writing outputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vltrim.cli import app

runner = CliRunner()
BASE = ["compress", "tiny:CLIPModel", "--method", "l1", "--latency-batch", "0"]


def refused(args: list[str], *words: str) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    for w in words:
        assert w in text, (w, text)
    return text


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--checkpoint-every", "2"], ["--checkpoint-every", "--work-dir"]),
        (["--resume"], ["--resume", "--work-dir"]),
        (["--batch-size", "-1"], ["--batch-size", "-1"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--search-steps", "-5"], ["--search-steps"]),
        (["--retrain-steps", "-1"], ["--retrain-steps"]),
        (["--latency-batch", "-2"], ["--latency-batch"]),
        (["--lr", "nan"], ["--lr", "nan"]),
        (["--lr", "inf"], ["--lr"]),
        (["--kd-weight", "nan"], ["--kd-weight"]),
        (["--target", "2"], ["--target"]),
        (["--mixed-precision", "fp8"], ["--mixed-precision", "fp8"]),
        (["--override"], ["--override", "--resume"]),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(tmp_path, extra, words):
    refused([*BASE, "--out", str(tmp_path / "o"), *extra], *words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "line,words",
    [
        ("resume: 'no'\nwork_dir: w\n", ["resume", "true or false", "'no'"]),
        ("resume: yes-please\n", ["resume", "true or false"]),
        ("batch_size: '16'\n", ["batch_size", "an integer", "'16'"]),
        ("lr: 1e-4\n", ["lr", "a number", "'1e-4'"]),  # YAML 1.1 reads 1e-4 (no dot) as a string
        ("target: [0.5]\n", ["target", "a number"]),
        ("method: 3\n", ["method", "a string"]),
        ("seed: 1.5\n", ["seed", "an integer"]),
        ("batch_size:\n", ["batch_size", "empty"]),
        ("- a\n- b\n", ["mapping"]),
    ],
)
def test_recipe_values_of_the_wrong_type_are_refused_naming_the_key(tmp_path, line, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(line)
    refused([*BASE, "--out", str(tmp_path / "o"), "--recipe", str(recipe)], str(recipe), *words)


def test_recipe_flag_false_is_false(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("resume: false\ntarget: 0.3\n")
    r = runner.invoke(app, [*BASE, "--out", str(tmp_path / "o"), "--recipe", str(recipe)])
    assert r.exit_code == 0, r.output


def test_directories_that_are_not_models_say_what_they_lack(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    refused(["measure", str(tmp_path / "cfg")], "no plan.json", "architectures")
    (tmp_path / "cfg" / "config.json").write_bytes(b'{"architectures": ["CLIPModel"')
    refused(["measure", str(tmp_path / "cfg")], "config.json", "not valid")
    (tmp_path / "cfg" / "config.json").write_bytes(b"\xff\xfe{}")
    refused(["inspect", str(tmp_path / "cfg")], "config.json", "UTF-8")
    refused(["measure", str(tmp_path / "nothing")], "nothing")


def test_out_that_is_a_file_is_refused_before_work(tmp_path):
    (tmp_path / "f").write_text("x")
    refused([*BASE, "--out", str(tmp_path / "f")], str(tmp_path / "f"), "is a file")
