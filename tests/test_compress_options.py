"""compress's options are declared once (`vltrim.run.options.CompressOptions`): its fields are compress's parameters
(names, defaults, order, types), each with a scope; the chain, the study and the CLI read their option names from it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from types import SimpleNamespace

import pytest
from torch import nn
from typer.testing import CliRunner

import vltrim
from vltrim import cli
from vltrim.methods import BUDGET_OPTIONS, get_method
from vltrim.run.options import SCOPES, CompressOptions

chain_mod = importlib.import_module("vltrim.run.chain")
runner_mod = importlib.import_module("vltrim.run.runner")
study_mod = importlib.import_module("vltrim.run.study")  # `vltrim.run.study` is the function
PARAMS = inspect.signature(vltrim.compress).parameters


def test_fields_are_compress_parameters_same_names_defaults_types_and_order():
    fs = dataclasses.fields(CompressOptions)
    assert [f.name for f in fs] == list(PARAMS)
    for f in fs:
        p = PARAMS[f.name]
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f.name
        assert f.default_factory is dataclasses.MISSING, f.name
        want = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default == want and type(p.default) is type(want), f.name
        assert str(f.type) == str(p.annotation), f.name  # both modules keep annotations as written
    assert CompressOptions.names() == tuple(PARAMS)
    assert CompressOptions.defaults() == {k: p.default for k, p in PARAMS.items() if p.default is not p.empty}


def test_every_option_has_one_scope_and_the_scopes_split_the_chain():
    assert all(f.metadata["scope"] in SCOPES for f in dataclasses.fields(CompressOptions))
    by_scope = [set(CompressOptions.of_scope(s)) for s in SCOPES]
    assert sum(map(len, by_scope)) == len(PARAMS) and set().union(*by_scope) == set(PARAMS)
    assert CompressOptions.of_scope("chain") == ("method",)
    assert CompressOptions.of_scope("method") == ("depth_share", "method_settings")
    assert set(CompressOptions.of_scope("stage")) == {
        "target",
        "metric",
        "align",
        "units",
        "allocation",
        "max_ratio",
        "search_steps",
        "retrain_steps",
        "kd_weight",
        "kd_hidden",
        "kd_embed",
        "kd_attention",
        "task_weight",
        "lr",
        "retrain_lr",
        "retrain_schedule",
    }
    assert {"model", "train_data", "eval_data", "calib_data", "work_dir", "seed", "plan"} <= set(
        CompressOptions.of_scope("shared")
    )
    assert CompressOptions.scope("kd_weight") == "stage" and CompressOptions.scope("work_dir") == "shared"
    assert CompressOptions.of_scope("stage", "method") == tuple(
        n for n in PARAMS if n in CompressOptions.of_scope("stage") + CompressOptions.of_scope("method")
    )  # field order, whatever the order of the scopes asked
    with pytest.raises(ValueError, match="unknown scope 'stages'"):
        CompressOptions.of_scope("stages")


def test_the_chain_reads_its_option_sets_from_the_declaration():
    assert set(chain_mod.STAGE_OPTIONS) == set(CompressOptions.of_scope("stage", "method"))
    assert set(chain_mod.METHOD_OPTIONS) == {"depth_share", "method_settings"}
    assert chain_mod.SHARED_OPTIONS == set(PARAMS) - set(chain_mod.STAGE_OPTIONS) - {"method"}
    for key in ("model", "seed", "work_dir", "train_data"):
        with pytest.raises(ValueError, match=f"stage 2 \\(l1\\): {key} is an option of the whole chain"):
            chain_mod.stage_spec(("l1", {key: 1}), 2, chain_mod.SHARED_OPTIONS)
    name, given = chain_mod.stage_spec(
        ("l1", {"target": 0.3, "kd_hidden": 1.0, "bogus": 2}), 1, chain_mod.SHARED_OPTIONS
    )
    assert (name, given) == ("l1", {"target": 0.3, "kd_hidden": 1.0, "method_settings": {"bogus": 2}})


def test_a_chain_given_both_method_options_names_method_settings_first():
    with pytest.raises(ValueError, match="^method_settings: a chain takes it per stage"):
        vltrim.compress(nn.Linear(2, 2), ["l1"], method_settings={"x": 1}, depth_share=0.5)
    with pytest.raises(ValueError, match="^depth_share: a chain takes it per stage"):
        vltrim.compress(nn.Linear(2, 2), ["l1"], depth_share=0.5)


def test_kwargs_are_every_option_in_order_with_defaults_and_the_values_themselves():
    model, settings = nn.Linear(2, 2), {"rounds": 2}
    kw = CompressOptions(model, method="l1", method_settings=settings).kwargs()
    assert list(kw) == list(PARAMS)
    assert kw["model"] is model and kw["method_settings"] is settings and kw["target"] == 0.5
    with pytest.raises(TypeError):
        CompressOptions(model, bogus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CompressOptions(model).target = 0.3


def test_the_study_binds_and_allows_compress_options_from_the_declaration():
    model = nn.Linear(2, 2)
    o = {
        "method_settings": {"l1": {"num_batches": 2}},
        "compress_options": {"align": 1, "kd_weight": 0.5},
        "task": SimpleNamespace(name="retrieval"),
        "train_data": None,
        "eval_data": None,
        "retrain_steps": 3,
        "search_steps": 4,
        "seed": 5,
        "batch_size": 16,
    }
    for cell in (study_mod.Cell("l1", 0.25), study_mod.Cell("2:4", 0.5), study_mod.Cell("magnitude", 0.5)):
        got = study_mod._compress_call(model, o, cell, progress=False)
        # what the study bound with inspect.signature(compress) before the declaration
        args = cell.compress_args(o["method_settings"])
        takes = get_method(args["method"]).Config.budget()
        opts = {k: v for k, v in o["compress_options"].items() if k not in BUDGET_OPTIONS or k in takes}
        kw = dict(
            task="retrieval",
            train_data=None,
            eval_data=None,
            retrain_steps=3,
            search_steps=4,
            seed=5,
            batch_size=16,
            latency_batch=0,
            evaluate_before=False,
            progress=False,
            **opts,
            **args,
        )
        bound = inspect.signature(vltrim.compress).bind(model, **kw)
        bound.apply_defaults()
        assert list(got) == list(bound.arguments) and got == dict(bound.arguments), cell
    allowed = sorted(set(PARAMS) - study_mod.OWN_OPTIONS)
    assert study_mod._compress_options({"kd_weight": 0.5}) == {"kd_weight": 0.5}
    with pytest.raises(ValueError, match=f"target is set by the study itself.*allowed: {', '.join(allowed)}$"):
        study_mod._compress_options({"target": 0.3})


def test_lists_of_compress_option_names_kept_elsewhere_name_compress_options():
    names = set(CompressOptions.names())
    assert set(study_mod.OWN_OPTIONS) <= names  # the options the study sets itself
    assert set(runner_mod.RUN_KEYS) <= names  # what run.json and the report record, in their order
    command = set(cli.typing.get_type_hints(cli.compress)) - {"ctx", "return"}
    assert set(cli.COMPRESS_OPTION_OF) <= command and set(cli.COMPRESS_OPTION_OF.values()) <= names
    assert set(cli.RECIPE_KEYS) <= command  # recipe keys are the command's options (with its own data, tokenizer)
    assert {cli.COMPRESS_OPTION_OF.get(k, k) for k in cli.RECIPE_KEYS} - names == {"tokenizer"}


def test_cli_then_stage_options_and_their_message_come_from_the_declaration(tmp_path):
    assert cli.STAGE_PARAMS == (
        "target",
        "metric",
        "align",
        "units",
        "allocation",
        "max_ratio",
        "depth_share",
        "search_steps",
        "retrain_steps",
        "kd_weight",
        "kd_attention",
        "task_weight",
        "lr",
        "retrain_lr",
        "settings",
    )  # the command's order: the order its error lists them in
    r = CliRunner().invoke(
        cli.app,
        ["compress", "tiny:CLIPModel", "--out", str(tmp_path / "m"), "--then", "heads", "--seed", "1", "--data", "x"],
    )
    assert r.exit_code == 2, r.output
    assert (
        "--then heads (stage 2): --data, --seed apply to the whole chain: give them before the first --then (a stage "
        "takes --target, --metric, --align, --units, --allocation, --max-ratio, --depth-share, --search-steps, "
        "--retrain-steps, --kd-weight, --kd-attention, --task-weight, --lr, --retrain-lr, --set; its method is the "
        "name after --then)"
    ) in " ".join(r.output.split())
