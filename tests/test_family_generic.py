"""Every class of the zoo (vltrim.zoo.TINY_CLASSES: a class added there joins without a line here): sliced at random
(heads, neurons, layers, then head dims), saved and exported to ONNX with parity to torch; every text encoder saved
with its source's sentence-transformers files encodes as the pruned encoder does; a dual encoder whose tower has no
adapter names the tower."""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import random_plan

import vltrim
from vltrim import export as ex
from vltrim.arch import get_adapter
from vltrim.arch.inputs import SEQUENCE_INPUTS
from vltrim.arch.registry import UnsupportedModelError
from vltrim.tasks import default_task
from vltrim.zoo import TINY_CLASSES, TINY_VISION, tiny_model

HAS_EXPORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
TEXT_CLASSES = [n for n in TINY_CLASSES if default_task(tiny_model(n)) == "sentence-embedding"]


# ---- ONNX ---------------------------------------------------------------------------------------------------------
def _sliced(name: str):
    """A tiny ``name`` with a random unaligned subset of its heads, FFN neurons and layers kept, then of its head dims
    (one plan cannot prune both heads and head dims of an attention: a chain of two)."""
    model = tiny_model(name)
    model = vltrim.apply_plan(model, random_plan(model, {"heads", "neurons", "layers"}))
    return vltrim.apply_plan(model, random_plan(model, {"head_dims"}, seed=1))


@pytest.mark.skipif(not HAS_EXPORT, reason="onnx, onnxscript and onnxruntime are needed (pip install 'vltrim[export]')")
@pytest.mark.slow
@pytest.mark.parametrize("name", TINY_CLASSES)
def test_every_class_exports_to_onnx_with_parity(tmp_path, monkeypatch, name):
    small = _sliced(name)
    out = vltrim.save(small, tmp_path / "m")
    monkeypatch.setattr(ex, "_latency", lambda *a, **k: None)  # parity is the point here, not torch vs ORT timing
    r = ex.export(out, rounds=1)
    p = r["parity"]
    assert p["runtime"] == "onnxruntime" and p["max_abs_diff"] <= p["tolerance"], p
    assert set(r["inputs"]) == set(get_adapter(small).reference_inputs(small)) and (out / "model.onnx").is_file()
    dynamic = {k: [isinstance(d, str) for d in dims] for k, dims in r["inputs"].items()}  # named axes are dynamic
    assert all(v[0] and all(v[1:]) == (k in SEQUENCE_INPUTS) for k, v in dynamic.items()), r["inputs"]
    assert max(s[0] for s in p["shapes"].values()) == 3  # checked on another batch size than the export's (2)


# ---- sentence-transformers ----------------------------------------------------------------------------------------
def st_source(folder: Path, name: str = "BertModel", layout: str = "") -> torch.nn.Module:
    """A tiny ``name`` saved as a sentence-transformers model in ``folder``: the transformer (weights, config and a
    word-level tokenizer whose special tokens sit at the config's ids) at ``layout``, modules.json, mean pooling in
    1_Pooling and a max_seq_length of 12. Returns the model."""
    model = tiny_model(name)
    model.save_pretrained(folder / layout)
    cfg = model.config
    ids = {t: getattr(cfg, f"{k}_token_id", None) for t, k in (("[PAD]", "pad"), ("[CLS]", "bos"), ("[SEP]", "eos"))}
    vocab: list[str | None] = [None] * cfg.vocab_size
    for token, i in ids.items():
        if isinstance(i, int) and 0 <= i < len(vocab) and vocab[i] is None:
            vocab[i] = token
    rest = iter(
        [t for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]") if t not in vocab]
        + [f"w{i}" for i in range(len(vocab))]
    )
    vocab = [t if t is not None else next(rest) for t in vocab]
    accepted = inspect.signature(model.forward).parameters
    transformers.BertTokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)},
        model_input_names=[k for k in ("input_ids", "token_type_ids", "attention_mask") if k in accepted],
    ).save_pretrained(folder / layout)
    (folder / layout / "sentence_bert_config.json").write_text('{"max_seq_length": 12}')
    mods = [
        {"idx": 0, "name": "0", "path": layout, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(mods))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": cfg.hidden_size, "pooling_mode_mean_tokens": True})
    )
    return model


@pytest.mark.parametrize("name", TEXT_CLASSES)
def test_sentence_transformers_loads_every_pruned_text_encoder(tmp_path, name):
    """SentenceTransformer(out, trust_remote_code=True) on a pruned tiny text encoder saved with its source's files
    gives the embeddings of the pruned encoder + mean pooling (the source's pooling config)."""
    st = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers not installed (extra: sentence-transformers)"
    )
    model = st_source(tmp_path / "src", name)
    out = tmp_path / "out"
    vltrim.save(
        vltrim.apply_plan(model, random_plan(model, {"heads", "neurons", "layers"})), out, source=tmp_path / "src"
    )
    sents = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9"]
    got = st.SentenceTransformer(str(out), trust_remote_code=True, device="cpu").encode(sents, convert_to_tensor=True)
    batch = transformers.AutoTokenizer.from_pretrained(out)(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = vltrim.load(out)(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(got, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=0)


# ---- unsupported towers -------------------------------------------------------------------------------------------
def test_a_dual_encoder_names_its_unsupported_tower():
    text = transformers.Qwen2Model(
        transformers.Qwen2Config(
            vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16,
        )
    )  # fmt: skip
    vision = transformers.ViTModel(transformers.ViTConfig(**TINY_VISION))
    model = transformers.VisionTextDualEncoderModel(vision_model=vision, text_model=text)
    want = r"VisionTextDualEncoderModel: its text tower \(text_model\) is a Qwen2Model, which vltrim has no adapter for"
    with pytest.raises(UnsupportedModelError, match=want + r"\. Supported classes: .*BertModel"):
        vltrim.plan(model, "l1", 0.3)
    with pytest.raises(UnsupportedModelError, match=want):
        get_adapter(model).reference_inputs(model)
