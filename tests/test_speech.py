"""Speech Transformers (HuBERT, wav2vec 2.0, WavLM): the audio data a user hands over (folders, manifests, hf:DIR;
bad files named), the cost split between the CNN front end and the Transformer blocks, frames that follow the clip
length, WavLM's shared position table, and the audio-classification task end to end. Masks == slicing, costs, save /
load and export run over the speech classes in the generic tests (their zoo entries)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vltrim
from vltrim.arch import get_adapter
from vltrim.arch.families.hf_speech import frames
from vltrim.arch.inputs import audio_inputs
from vltrim.data.audio import ClipOptions, audio_problem, fit_length, read_audio, resample
from vltrim.measure import cost_split
from vltrim.tasks import default_task, get_task
from vltrim.tasks.sources import DataSource
from vltrim.zoo import tiny_model

sf = pytest.importorskip("soundfile")  # in the test extra; without it only PCM WAV is read (tested below too)
CLASSES = ("no", "up", "yes")


def _write(path, samples, rate=16_000, channels=1, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(len(str(path))).standard_normal((samples, channels)).astype("float32")
    sf.write(str(path), x, rate, format=fmt)
    return path


@pytest.fixture
def wavs(tmp_path):
    """root/<class>/<clips>: WAV at 16 kHz (some shorter, some longer than 1 s) and a FLAC at 44.1 kHz."""
    root = tmp_path / "wavs"
    for c in CLASSES:
        for i in range(3):
            _write(root / c / f"{i}.wav", 12_000 + 3_000 * i)
    _write(root / "up" / "long.flac", 44_100, rate=44_100)
    return root


def _source(name="HubertForSequenceClassification"):
    model = tiny_model(name)
    return model, DataSource(model, f"tiny:{name}", "audio-classification")


# ---- data -------------------------------------------------------------------------------------------------
def test_folder_gives_one_second_clips_with_the_folder_classes(wavs):
    model, src = _source()
    ds = src.open(str(wavs), "--data", "train")
    assert len(ds) == 10
    items = [ds[i] for i in range(len(ds))]
    assert all(it["input_values"].shape == (16_000,) and it["input_values"].dtype == torch.float32 for it in items)
    assert sorted({int(it["label"]) for it in items}) == [0, 1, 2]
    assert [model.config.id2label[i] for i in range(3)] == list(CLASSES)  # recorded for the saved model


def test_higher_rates_are_resampled_by_band_limited_interpolation():
    """A 440 Hz tone at 44.1 kHz read at 16 kHz is the same tone (away from the edges), to 1e-3."""
    t = np.arange(44_100) / 44_100
    x = torch.from_numpy(np.sin(2 * math.pi * 440 * t)).float()
    y = resample(x, 44_100, 16_000)
    assert y.shape == (16_000,)
    ref = torch.sin(2 * math.pi * 440 * torch.arange(16_000) / 16_000)
    assert (y - ref)[200:-200].abs().max() < 1e-3


def test_a_tone_above_the_new_nyquist_is_removed():
    t = np.arange(48_000) / 48_000
    x = torch.from_numpy(np.sin(2 * math.pi * 12_000 * t)).float()  # above 8 kHz: must not alias into the band
    assert resample(x, 48_000, 16_000)[200:-200].abs().max() < 0.02


def test_flac_files_read_and_resampled(wavs):
    x = read_audio(wavs / "up" / "long.flac")
    assert x.shape == (16_000,) and x.abs().max() > 0


def test_clips_cut_in_the_middle_or_padded_around():
    x = torch.arange(10.0)
    assert fit_length(x, 4).tolist() == [3, 4, 5, 6]
    assert fit_length(x[:2], 4).tolist() == [0, 0, 1, 0]
    y = ClipOptions(normalize=True).prepare(torch.randn(8_000) * 3 + 1)
    assert y.shape == (16_000,) and abs(y[4_000:12_000].mean()) < 1e-5 and abs(y[4_000:12_000].std() - 1) < 1e-3


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: _write(p, 16_000, channels=2), "has 2 channels"),
        (lambda p: _write(p, 8_000, rate=8_000), "8000 Hz, below the model's 16000 Hz"),
        (lambda p: _write(p, 0), "is empty"),
        (lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_bytes(b"RIFF\x00\x00not audio"))[0], "cannot be decoded"),
    ],
    ids=["stereo", "low-rate", "empty", "corrupt"],
)  # fmt: skip
def test_bad_files_are_named_before_any_work(wavs, make, why):
    bad = wavs / "yes" / "bad.wav"
    make(bad)
    _, src = _source()
    with pytest.raises(ValueError, match="cannot be used") as e:
        src.open(str(wavs), "--data", "train")
    assert str(bad) in str(e.value) and why in str(e.value) and "--data" in str(e.value)


def test_without_soundfile_pcm_wav_still_reads(wavs, monkeypatch):
    import vltrim.data.audio as audio

    monkeypatch.setattr(audio, "_soundfile", lambda: None)
    x = read_audio(wavs / "no" / "0.wav")
    assert x.shape == (12_000,)
    why = audio_problem(wavs / "up" / "long.flac")
    assert "cannot be decoded" in why and "pip install soundfile" in why


def test_a_class_folder_without_audio_is_named(wavs):
    (wavs / "stop").mkdir()
    (wavs / "stop" / "notes.txt").write_text("x")
    _, src = _source()
    with pytest.raises(ValueError, match="stop holds no audio files"):
        src.open(str(wavs), "--data", "train")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_with_audio_or_path_column(wavs, suffix, tmp_path):
    rows = [(f"wavs/{c}/{i}.wav", c) for c in CLASSES for i in range(2)]
    m = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        m.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    else:
        m.write_text("".join(json.dumps({"audio": p, "label": c}) + "\n" for p, c in rows))
    _, src = _source()
    ds = src.open(str(m), "--data", "train")
    assert len(ds) == 6 and ds[5]["input_values"].shape == (16_000,) and int(ds[5]["label"]) == 2


def test_manifest_without_an_audio_column_says_what_it_takes(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("clip,label\na.wav,yes\n")
    _, src = _source()
    with pytest.raises(ValueError, match="name no audio file.*audio-classification task takes"):
        src.open(str(m), "--data", "train")


def test_hf_dataset_with_an_audio_column(wavs, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(wavs / c / "0.wav") for c in CLASSES]
    ds = datasets.Dataset.from_dict({"audio": files, "label": [0, 1, 2]})
    ds = ds.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(names=list(CLASSES)))
    ds.save_to_disk(str(tmp_path / "hf"))
    _, src = _source()
    got = src.open(f"hf:{tmp_path / 'hf'}", "--data", "train")
    assert len(got) == 3 and got[2]["input_values"].shape == (16_000,) and int(got[2]["label"]) == 2


def test_tokenizer_refused_for_audio():
    src = DataSource(tiny_model("HubertForSequenceClassification"), "x", "audio-classification", "tok")
    with pytest.raises(ValueError, match="audio-classification task reads no text"):
        src.check([None])


# ---- costs ------------------------------------------------------------------------------------------------
def test_frames_follow_the_clip_length_and_costs_refer_to_one_second():
    model = tiny_model("HubertModel")
    assert frames(model, 16_000) == 49 and frames(model, 160_000) == 499
    assert get_adapter(model).towers(model)[0].tokens == 49
    one, ten = (vltrim.count_macs(model, audio_inputs(1, n)) for n in (16_000, 160_000))
    assert ten > 10 * one  # attention grows with the square of the frames


@pytest.mark.parametrize("name", ["HubertForSequenceClassification", "WavLMModel"])
def test_cost_split_adds_up_and_pruning_leaves_the_front_end(name):
    model = tiny_model(name)
    s = cost_split(model)
    assert sum(p["params"] for p in s.values()) == vltrim.count_params(model)
    inputs = get_adapter(model).reference_inputs(model, 1)
    assert sum(p["macs"] for p in s.values()) == vltrim.count_macs(model, inputs)
    assert s["front_end"]["macs"] > 0 and s["blocks"]["macs"] > 0
    small = vltrim.apply_plan(model, vltrim.plan(model, method="l1", target=0.5))
    t = cost_split(small)
    assert t["front_end"] == {**s["front_end"], **{k: t["front_end"][k] for k in ("params_share", "macs_share")}}
    assert t["blocks"]["macs"] < s["blocks"]["macs"] and t["front_end"]["macs_share"] > s["front_end"]["macs_share"]
    assert vltrim.measure(small, latency=False)["split"] == t


def test_text_and_vision_families_have_no_split():
    assert cost_split(tiny_model("BertModel")) == {}


# ---- WavLM ------------------------------------------------------------------------------------------------
def test_wavlm_first_layer_removed_keeps_the_shared_position_table():
    model = tiny_model("WavLMModel")
    inputs = get_adapter(model).reference_inputs(model, 2)
    groups = get_adapter(model).groups(model)
    plan = vltrim.Plan.from_keep("WavLMModel", groups, {"audio.layers": [1]})
    with vltrim.masked(model, plan):
        want = model(**inputs).last_hidden_state
    small = vltrim.apply_plan(model, plan)
    assert "encoder.layers.0.attention.rel_attn_embed.weight" in small.state_dict()
    assert torch.allclose(small(**inputs).last_hidden_state, want, atol=1e-5)
    layer = next(g for g in groups if g.kind.value == "layers")
    assert vltrim.count_params(model) - vltrim.count_params(small) == layer.params_per_unit


def test_wavlm_heads_slice_the_gate_constant():
    model = tiny_model("WavLMModel")
    groups = get_adapter(model).groups(model)
    plan = vltrim.Plan.from_keep("WavLMModel", groups, {"audio.layers.1.attn.heads": [0, 3]})
    attn = vltrim.apply_plan(model, plan).encoder.layers[1].attention
    assert attn.gru_rel_pos_const.shape == (1, 2, 1, 1)
    want = model.encoder.layers[1].attention.gru_rel_pos_const[:, [0, 3]]
    assert torch.equal(attn.gru_rel_pos_const, want)


# ---- task and CLI -----------------------------------------------------------------------------------------
def test_speech_classifiers_default_to_audio_classification():
    assert default_task(tiny_model("Wav2Vec2ForSequenceClassification")) == "audio-classification"
    with pytest.raises(ValueError, match="needs an audio classifier"):
        get_task("audio-classification").check(tiny_model("ViTForImageClassification"))


@pytest.mark.slow
def test_compress_from_the_shell(wavs, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from vltrim.cli import app; app()", "compress", "tiny:HubertForSequenceClassification", "--task",
           "audio-classification", "--data", str(wavs), "--eval-data", str(wavs), "--method", "taylor", "--target",
           "0.5", "--retrain-steps", "2", "--latency-batch", "0", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}  # one table row per line
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "front end (not prunable): share of params / MACs" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "audio-classification" and "top1" in report["after"]
    assert set(report["model"]["split"]) == {"front_end", "blocks", "other"}
    small = vltrim.load(out)
    assert vltrim.count_params(small) == report["model"]["params"] < report["source"]["params"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["HubertForSequenceClassification", "WavLMForSequenceClassification"])
def test_pruned_speech_classifier_exports_with_a_dynamic_clip_length(tmp_path, name):
    pytest.importorskip("onnxruntime")
    from vltrim import export as ex

    model = tiny_model(name)
    d = vltrim.save(vltrim.apply_plan(model, vltrim.plan(model, "l1", 0.5)), tmp_path / "m")
    r = ex.export(d, rounds=1)
    assert r["inputs"]["input_values"] == ["batch", "samples"]
    assert r["parity"]["shapes"]["input_values"][1] != 16_000 and r["parity"]["max_abs_diff"] < 1e-4


def test_measure_takes_the_clip_length_and_shows_the_split():
    from typer.testing import CliRunner

    from vltrim.cli import app

    r = CliRunner().invoke(app, ["measure", "tiny:HubertModel", "--seconds", "2", "--rounds", "1", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output[r.output.index("{") :])
    model = tiny_model("HubertModel")
    assert got["macs"] == vltrim.count_macs(model, audio_inputs(1, 32_000))
    assert got["split"]["front_end"]["params"] == cost_split(model)["front_end"]["params"]
    r = CliRunner().invoke(app, ["measure", "tiny:BertModel", "--seconds", "2"])
    assert r.exit_code != 0 and "reads no waveform" in r.output


def test_macs_are_counted_in_eval_mode_whatever_the_model_mode():
    """A model in training mode may skip layers (HuBERT's layer drop): MACs are the inference forward's, every time."""
    import transformers as tf

    from vltrim.zoo import TINY_AUDIO

    model = tf.HubertModel(tf.HubertConfig(**{**TINY_AUDIO, "layerdrop": 0.9}))
    inputs = audio_inputs(1, 16_000)
    model.eval()
    want = vltrim.count_macs(model, inputs)
    model.train()
    assert {vltrim.count_macs(model, inputs) for _ in range(5)} == {want} and model.training


def test_wavlm_masks_hold_the_patch_until_the_last_one_goes():
    """WavLM's own forward calls none of its Linears: each mask holds the forward patch, the class comes back only
    when the last is removed (in any order), and a model sliced meanwhile keeps it."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    model = tiny_model("WavLMModel")
    adapter, inputs = get_adapter(model), audio_inputs(1, 16_000)
    heads, dims = (
        next(g for g in adapter.groups(model) if g.name == f"audio.layers.0.attn.{k}") for k in ("heads", "head_dims")
    )
    attn = model.encoder.layers[0].attention
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
        h1, h2 = adapter.mask(model, heads, torch.ones(4)), adapter.mask(model, dims, torch.zeros(16))
        h1.remove()
        assert type(attn) is not WavLMAttention and not torch.equal(model(**inputs).last_hidden_state, plain)
        h2.remove()
    assert type(attn) is WavLMAttention


def test_missing_and_24_bit_files_are_named_up_front(wavs, tmp_path, monkeypatch):
    import vltrim.data.audio as audio

    m = tmp_path / "m.csv"
    m.write_text(f"audio,label\n{wavs / 'no' / '0.wav'},no\n{tmp_path / 'gone.wav'},yes\n")
    _, src = _source()
    with pytest.raises(ValueError, match="gone.wav does not exist"):
        src.open(str(m), "--data", "train")
    deep = _write(tmp_path / "deep.wav", 16_000)
    sf.write(str(deep), np.zeros((16_000, 1), "float32"), 16_000, subtype="PCM_24")
    monkeypatch.setattr(audio, "_soundfile", lambda: None)
    assert "24-bit WAV needs soundfile" in audio_problem(deep)


def test_a_later_manifest_row_without_its_audio_is_named(tmp_path, wavs):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio": str(wavs / "no" / "0.wav"), "label": "no"}) + "\n" + json.dumps({"label": "up"}))
    _, src = _source()
    with pytest.raises(ValueError, match="row 2 .* lacks 'audio'"):
        src.open(str(m), "--data", "train")
