"""A vltrim directory is a Hugging Face model directory: AutoModel.from_pretrained(out, trust_remote_code=True) gives
exactly vltrim.load(out) for every supported class and plan step; mismatches fail loudly; tokenizer files are kept;
files are world-readable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import transformers
from conftest import random_plan, run, tamper_weights
from test_family_generic import st_source
from typer.testing import CliRunner

import vltrim
from vltrim import io
from vltrim.arch import get_adapter, registered_class
from vltrim.cli import app
from vltrim.io import remote_code
from vltrim.zoo import TINY_CLASSES, tiny_model


def _auto(name: str):
    return getattr(transformers, name)


def _assert_same(a, b) -> None:
    """Same registered class, same state dict (names, dtypes, bits), same outputs, both in eval mode."""
    assert registered_class(a) is registered_class(b) and not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    x = get_adapter(a).reference_inputs(a, batch_size=2)
    assert all(torch.equal(p, q) for p, q in zip(run(a, x), run(b, x), strict=True))


def _saved(tmp_path, name: str, step: str, source=None):
    """A tiny ``name`` with one plan step applied (slice heads + neurons, drop layers, factorise, sparsify), saved."""
    model = tiny_model(name)
    if step == "slice":
        plan = random_plan(model, {"heads", "neurons"})
    elif step == "layers":
        plan = random_plan(model, {"layers"})
    else:
        plan = vltrim.plan(model, {"factorize": "lowrank", "sparsify": "magnitude"}[step], target=0.3)
    out = tmp_path / f"{name}-{step}"
    vltrim.save(vltrim.apply_plan(model, plan), out, source=source)
    return out


@pytest.mark.parametrize("name", TINY_CLASSES)
def test_every_class_loads_through_its_auto_classes(tmp_path, name):
    out = _saved(tmp_path, name, "slice")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [name] and cfg["auto_map"]["AutoModel"] == f"modeling_vltrim.{name}"
    ref = vltrim.load(out)
    for auto in cfg["auto_map"]:
        got = _auto(auto).from_pretrained(out, trust_remote_code=True)
        assert type(got).__name__ == name and type(got).__module__.endswith("modeling_vltrim")
        _assert_same(ref, got)


def test_class_specific_auto_classes():
    assert remote_code.auto_classes(transformers.ViTForImageClassification) == [
        "AutoModel",
        "AutoModelForImageClassification",
    ]
    assert "AutoModelForSequenceClassification" in remote_code.auto_classes(transformers.BertForSequenceClassification)
    assert "AutoModelForZeroShotImageClassification" in remote_code.auto_classes(transformers.CLIPModel)


@pytest.mark.parametrize(
    "name,step",
    [
        ("CLIPModel", "layers"),
        ("ViTForImageClassification", "layers"),
        ("CLIPModel", "factorize"),
        ("BertModel", "factorize"),
        ("SiglipModel", "sparsify"),
    ],
)
def test_layer_dropped_factorised_sparsified(tmp_path, name, step):
    out = _saved(tmp_path, name, step)
    _assert_same(vltrim.load(out), transformers.AutoModel.from_pretrained(out, trust_remote_code=True))


def test_chain_and_loading_options(tmp_path):
    model = tiny_model("CLIPModel")
    model = vltrim.apply_plan(model, random_plan(model, {"head_dims", "neurons"}, seed=3))
    model = vltrim.apply_plan(model, vltrim.plan(model, "lowrank", target=0.2))
    vltrim.save(model, tmp_path / "c")
    ref = vltrim.load(tmp_path / "c")
    got, info = transformers.AutoModel.from_pretrained(
        tmp_path / "c", trust_remote_code=True, output_loading_info=True, output_hidden_states=True
    )
    _assert_same(ref, got)
    assert not any(info.values()) and got.config.output_hidden_states
    half = transformers.AutoModel.from_pretrained(
        tmp_path / "c", trust_remote_code=True, dtype="bfloat16", attn_implementation="eager"
    )
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and half.config._attn_implementation == "eager"
    # a loaded model goes on through vltrim: plan, apply, save (plans name the transformers class)
    sliced = transformers.AutoModel.from_pretrained(_saved(tmp_path, "CLIPModel", "slice"), trust_remote_code=True)
    more = vltrim.apply_plan(sliced, vltrim.plan(sliced, "l1", target=0.2, align=1))
    vltrim.save(more, tmp_path / "d")
    assert json.loads((tmp_path / "d" / "plan.json").read_text())["plans"][1]["model_class"] == "CLIPModel"
    _assert_same(more, transformers.AutoModel.from_pretrained(tmp_path / "d", trust_remote_code=True))
    got.save_pretrained(tmp_path / "e")  # = vltrim.save
    _assert_same(ref, vltrim.load(tmp_path / "e"))
    with pytest.raises(TypeError, match="push_to_hub"):
        got.save_pretrained(tmp_path / "f", push_to_hub=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ignore_mismatched_sizes": True}, "strictly"),
        ({"projection_dim": 16}, "projection_dim"),
        ({"device_map": {"a": "cpu", "b": "cpu"}}, "one device"),
    ],
)
def test_options_that_would_change_the_model_are_refused(tmp_path, kwargs, match):
    out = _saved(tmp_path, "CLIPModel", "slice")
    with pytest.raises((ValueError, TypeError), match=match):
        transformers.AutoModel.from_pretrained(out, trust_remote_code=True, **kwargs)


@pytest.mark.parametrize("how", ["shape", "drop"])
def test_tampered_weights_fail_loudly(tmp_path, how):
    out = _saved(tmp_path, "ViTForImageClassification", "slice")
    key = tamper_weights(out / "model.safetensors", how)
    with pytest.raises(io.ModelDirError, match="model.safetensors.*checksum"):
        transformers.AutoModel.from_pretrained(out, trust_remote_code=True)
    (out / "vltrim.json").write_text(io._checksums_text(out))  # checksums made to match: the strict load still refuses
    with pytest.raises(io.ModelDirError, match="model.safetensors") as e:
        transformers.AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    assert key in str(e.value)


def test_plain_from_pretrained_without_trust_remote_code(tmp_path):
    """What README states: transformers' own class from config.json's unpruned widths, no custom code."""
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.AutoModel.from_pretrained(_saved(tmp_path, "BertModel", "slice"))
    out = _saved(tmp_path, "BertModel", "layers")
    plain = transformers.AutoModel.from_pretrained(out)  # loads, the dropped layer re-initialised (a MISSING warning)
    assert type(plain) is transformers.BertModel and len(plain.encoder.layer) == 2
    assert len(vltrim.load(out).encoder.layer) == 1
    out, x = _saved(tmp_path, "BertModel", "factorize"), get_adapter(plain).reference_inputs(plain)
    wrong = run(transformers.AutoModel.from_pretrained(out), x)[0]  # loads too, the factorised Linears re-initialised
    assert not torch.allclose(wrong, run(vltrim.load(out), x)[0], atol=1e-2)
    out = _saved(tmp_path, "BertModel", "sparsify")  # same shapes: transformers' own class loads it right
    _assert_same(vltrim.load(out), transformers.AutoModel.from_pretrained(out))


def test_old_directories_still_load(tmp_path):
    out = _saved(tmp_path, "CLIPModel", "layers")
    ref = vltrim.load(out)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["auto_map"], cfg["architectures"]
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "modeling_vltrim.py").unlink()
    (out / "vltrim.json").write_text(io._checksums_text(out))
    _assert_same(ref, vltrim.load(out))
    (out / "vltrim.json").unlink()  # saved before checksums: loads knowingly unverified (issue 20)
    with pytest.raises(io.MissingModelFileError, match="verify=False"):
        vltrim.load(out)
    _assert_same(ref, vltrim.load(out, verify=False))
    asset = vltrim.load(Path(vltrim.__file__).parent / "assets" / "reference_clip")  # saved before this change
    assert type(asset) is transformers.CLIPModel


def test_load_save_load_of_a_layer_dropped_model(tmp_path):
    once = vltrim.load(_saved(tmp_path, "CLIPModel", "layers"))
    vltrim.save(once, tmp_path / "again")
    _assert_same(once, vltrim.load(tmp_path / "again"))


def _hf_source(folder, st_layout: str = ""):
    """A tiny BERT saved as a sentence-transformers model (``st_source``: its tokenizer, the transformer at
    ``st_layout``) with the files older saves hold too: vocab.txt, special_tokens_map.json, pytorch_model.bin."""
    model = st_source(folder, "BertModel", st_layout)
    vocab = json.loads((folder / st_layout / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / st_layout / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)))
    (folder / st_layout / "special_tokens_map.json").write_text('{"unk_token": "[UNK]"}')
    (folder / st_layout / "pytorch_model.bin").write_bytes(b"weights are never copied")
    return model


@pytest.mark.parametrize("layout", ["", "0_Transformer"])
def test_tokenizer_and_sentence_transformers_files_are_copied(tmp_path, layout):
    model = _hf_source(tmp_path / "src", layout)
    out = tmp_path / "out"
    vltrim.save(vltrim.apply_plan(model, random_plan(model, {"neurons"})), out, source=tmp_path / "src")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    } <= names and "pytorch_model.bin" not in names
    assert (
        not any(n.startswith("0_Transformer") for n in names)
        and json.loads((out / "modules.json").read_text())[0]["path"] == ""
    )
    assert (
        json.loads((out / "plan.json").read_text())["model_class"] == "BertModel"
    )  # model.safetensors is the pruned one
    src_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "src" / layout)
    assert transformers.AutoTokenizer.from_pretrained(out)("w1 w2 w3")["input_ids"] == src_tok("w1 w2 w3")["input_ids"]
    vltrim.load(out)  # checksums still hold


def test_cli_compress_copies_the_source_files(tmp_path):
    _hf_source(tmp_path / "src")
    r = CliRunner().invoke(
        app, ["compress", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--method", "random", "--target", "0.3"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "tokenizer.json").is_file() and (tmp_path / "o" / "1_Pooling" / "config.json").is_file()
    _assert_same(
        vltrim.load(tmp_path / "o"), transformers.AutoModel.from_pretrained(tmp_path / "o", trust_remote_code=True)
    )


def test_source_must_be_a_directory(tmp_path):
    model = tiny_model("BertModel")
    with pytest.raises(io.MissingModelFileError, match="nowhere"):
        vltrim.save(model, tmp_path / "o", source=tmp_path / "nowhere")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_saved_files_are_readable_as_the_umask_allows(tmp_path, umask, file_mode, dir_mode):
    _hf_source(tmp_path / "src")
    old = os.umask(umask)
    try:
        out = _saved(tmp_path, "BertModel", "slice", source=tmp_path / "src")
        _saved(tmp_path, "BertModel", "slice", source=tmp_path / "src")  # overwriting an existing directory too
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*")]
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()} == {file_mode}
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()} == {dir_mode}


def _clip_with_processor(folder: Path):
    """A tiny CLIPModel saved with a real CLIPProcessor (a letter-level BPE tokenizer and a CLIP image processor)."""
    model = tiny_model("CLIPModel")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    side = model.config.vision_config.image_size
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": side}, crop_size=side)
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    model.save_pretrained(folder)
    return model


def test_auto_processor_and_zero_shot_pipeline_on_a_saved_clip(tmp_path):
    """The source's processor comes back through AutoProcessor, and transformers' zero-shot image pipeline runs the
    pruned model (no 'not supported' complaint: the remote class keeps the transformers class name)."""
    from PIL import Image

    model = _clip_with_processor(tmp_path / "src")
    out = tmp_path / "out"
    vltrim.save(vltrim.apply_plan(model, random_plan(model, {"heads", "neurons"})), out, source=tmp_path / "src")
    proc = transformers.AutoProcessor.from_pretrained(out)
    assert type(proc).__name__ == "CLIPProcessor"
    image = Image.fromarray(torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8).numpy())  # larger than the input
    batch = proc(text=["cat", "dog"], images=image, return_tensors="pt", padding=True)
    assert batch["pixel_values"].shape[-2:] == (model.config.vision_config.image_size,) * 2
    with torch.no_grad():
        want = vltrim.load(out)(**batch).logits_per_image.softmax(-1)[0]
    logged = []
    handler = _ListHandler(logged)
    transformers.utils.logging.get_logger("transformers").addHandler(handler)
    try:
        pipe = transformers.pipeline("zero-shot-image-classification", model=str(out), trust_remote_code=True)
        got = pipe(image, candidate_labels=["cat", "dog"], hypothesis_template="{}")
    finally:
        transformers.utils.logging.get_logger("transformers").removeHandler(handler)
    assert not [m for m in logged if "not supported" in m]
    assert {r["label"]: r["score"] for r in got} == pytest.approx(
        {"cat": want[0].item(), "dog": want[1].item()}, abs=1e-6
    )


def test_feature_extraction_pipeline_on_a_saved_bert(tmp_path):
    _hf_source(tmp_path / "src")
    model = transformers.AutoModel.from_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    vltrim.save(vltrim.apply_plan(model, random_plan(model, {"heads", "neurons"})), out, source=tmp_path / "src")
    pipe = transformers.pipeline("feature-extraction", model=str(out), trust_remote_code=True)
    got = torch.tensor(pipe("w1 w2 w3"))[0]
    batch = transformers.AutoTokenizer.from_pretrained(out)("w1 w2 w3", return_tensors="pt")
    with torch.no_grad():
        want = vltrim.load(out)(**batch).last_hidden_state[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


class _ListHandler(__import__("logging").Handler):
    """Collects the messages transformers logs."""

    def __init__(self, out: list[str]):
        super().__init__()
        self.out = out

    def emit(self, record) -> None:
        self.out.append(record.getMessage())
