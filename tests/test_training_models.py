"""The model family: every fusion variant trains a step and exports; ONNX equals torch; causality;
the runtime loader refuses damaged or mismatched models; the evaluator's bad-input messages."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the trainer's extra: pip install 'realtime-ser[train]'")
pytest.importorskip("onnxruntime")

from realtime_ser.emotion.model import SHIFT  # noqa: E402
from realtime_ser.emotion.model import EmotionModel as Runtime  # noqa: E402
from realtime_ser.errors import ModelError  # noqa: E402
from training.export import export_model, max_difference  # noqa: E402
from training.models import DEPTHS, METHODS, EmotionModel, ModelConfig, load_unimodal_into  # noqa: E402
from training.seed_ensemble import combine  # noqa: E402

DIMS = {"audio": 6, "text": 10}
FEATURES = {"audio": {"key": "a"}, "text": {"key": "t"}}


def _batch(b: int = 3, t: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, t, DIMS["audio"], generator=g)
    text = torch.randn(b, t, DIMS["text"], generator=g)
    lengths = torch.tensor([t] + [max(1, t - 2 - i) for i in range(b - 1)])
    mask = torch.arange(t)[None] < lengths[:, None]
    y = torch.randint(0, 4, (b, t), generator=g)
    y[~mask] = -1
    y[0, 1] = -1  # an unlabeled context turn
    return audio, text, mask, y


def _model(**kw: object) -> EmotionModel:
    return EmotionModel(ModelConfig(dims=DIMS, hidden=16, heads=2, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("depth,method", list(itertools.product(DEPTHS, METHODS)))
def test_every_fusion_variant_trains_a_step_and_exports(tmp_path: Path, depth: str, method: str, causal: bool) -> None:
    torch.manual_seed(0)
    model = _model(fusion_depth=depth, fusion_method=method, causal=causal)
    audio, text, mask, y = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ce = torch.nn.CrossEntropyLoss(ignore_index=-1)
    model.train()
    out = model(audio, text, mask)
    assert set(out) == {"logits", "audio", "text"}
    loss = sum(ce(out[k].reshape(-1, 4), y.reshape(-1)) for k in ("logits", "audio", "text"))  # perspective loss
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    runtime = export_model(model.eval(), tmp_path, name="t", version="0", features=FEATURES, max_turns=5,
                           training={})
    assert max_difference(model, runtime) <= 1e-4
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["export"]["max_abs_difference_vs_torch"] <= 1e-4
    assert card["labels"] == ["neutral", "happy", "sad", "angry"] and card["causal"] is causal


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_unimodal_models_export_with_one_input(tmp_path: Path, modality: str) -> None:
    model = _model(modalities=(modality,), causal=True).eval()
    runtime = export_model(model, tmp_path, name="u", version="0", features={modality: {"key": "k"}}, max_turns=4,
                           training={})
    assert runtime.card.modalities == (modality,)
    audio, text, mask, _ = _batch()
    got = runtime.score({modality: (audio if modality == "audio" else text).numpy()}, mask.numpy())
    assert set(got) == {"probs"}
    np.testing.assert_allclose(got["probs"].sum(-1), 1.0, atol=1e-5)


def test_a_speaker_adaptive_gated_model_takes_the_shift_as_an_input_of_its_own(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(fusion_depth="logits", fusion_method="add", audio_gate=True, speaker_shift=True, causal=True).eval()
    model.gate.fit(torch.randn(400, DIMS["audio"]))
    features = {"audio": {"key": "a", "speaker_norm": {"shrink": 5.0, "mean": [0.0] * DIMS["audio"]}},
                "text": {"key": "t"}}
    runtime = export_model(model, tmp_path / "m", name="s", version="0", features=features, max_turns=5, training={})
    assert runtime.takes_shift and SHIFT in runtime.card.raw["inputs"]
    audio, text, mask, _ = _batch()
    shift = torch.randn_like(audio) * 0.5
    with torch.no_grad():
        ref = model(audio, text, mask, calibrated=True, audio_shift=shift)
        unshifted = model(audio, text, mask, calibrated=True)
    got = runtime.score({"audio": audio.numpy(), "text": text.numpy(), SHIFT: shift.numpy()}, mask.numpy())
    valid = mask.numpy()
    np.testing.assert_allclose(got["probs"][valid], torch.softmax(ref["logits"], -1).numpy()[valid], atol=1e-4)
    np.testing.assert_allclose(got["audio_reliability"][valid], ref["reliability"].numpy()[valid], atol=1e-5)
    plain = runtime.score({"audio": audio.numpy(), "text": text.numpy()}, mask.numpy())
    np.testing.assert_allclose(plain["probs"][valid], torch.softmax(unshifted["logits"], -1).numpy()[valid], atol=1e-4)
    # A speaker-adaptive model exported without the input (ungated, as before): the runtime feeds it
    # the shifted vector.
    older = _model(modalities=("audio",), causal=True).eval()
    old_rt = export_model(older, tmp_path / "o", name="o", version="0", features={"audio": features["audio"]},
                          max_turns=5, training={})
    assert not old_rt.takes_shift
    with torch.no_grad():
        ref_old = torch.softmax(older(audio - shift, None, mask, calibrated=True)["logits"], -1).numpy()
    got_old = old_rt.score({"audio": audio.numpy(), SHIFT: shift.numpy()}, mask.numpy())["probs"]
    np.testing.assert_allclose(got_old[valid], ref_old[valid], atol=1e-4)
    # The graph's shift input belongs to a card that says how to compute it.
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    del card["features"]["audio"]["speaker_norm"]
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="graph inputs"):
        Runtime.load(tmp_path / "m")


def test_several_models_export_as_one_graph_of_their_mean(tmp_path: Path) -> None:
    """Three models of one recipe, different weights: one graph with one model's inputs and outputs;
    each probability output (fused, per modality) the normalized geometric mean of theirs, the audio's
    weight the mean."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = _model(fusion_depth="logits", fusion_method="add", audio_gate=True, causal=True).eval()
        m.gate.fit(torch.randn(400, DIMS["audio"]) + seed)
        models.append(m)
    runtime = export_model(models, tmp_path / "e", name="e", version="0", features=FEATURES, max_turns=5,
                           training={})
    card = json.loads((tmp_path / "e" / "card.json").read_text())
    assert card["members"]["count"] == 3 and card["export"]["max_abs_difference_vs_torch"] <= 1e-4
    assert runtime.card.modalities == ("audio", "text")
    audio, text, mask, _ = _batch()
    got = runtime.score({"audio": audio.numpy(), "text": text.numpy()}, mask.numpy())
    valid = mask.numpy()
    with torch.no_grad():
        outs = [m(audio, text, mask, calibrated=True) for m in models]
    def geometric(key: str) -> np.ndarray:  # as python -m training.seed_ensemble --combine logprobs scores seeds
        return combine([torch.softmax(o[key], -1).numpy() for o in outs], "logprobs")

    expected = {"probs": geometric("logits"), "audio": geometric("audio"), "text": geometric("text"),
                "audio_reliability": np.mean([o["reliability"].numpy() for o in outs], 0)}
    assert set(got) == set(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k][valid], v[valid], atol=1e-5, err_msg=k)
    # the mean of different models is none of them
    single = torch.softmax(outs[0]["logits"], -1).numpy()
    assert np.abs(got["probs"][valid] - single[valid]).max() > 1e-3
    one = export_model(models[0], tmp_path / "one", name="o", version="0", features=FEATURES, max_turns=5, training={})
    assert json.loads((tmp_path / "one" / "card.json").read_text())["members"]["count"] == 1
    np.testing.assert_allclose(one.score({"audio": audio.numpy(), "text": text.numpy()}, mask.numpy())["probs"][valid],
                               single[valid], atol=1e-5)
    with pytest.raises(ValueError, match="share one configuration"):
        export_model([models[0], _model(modalities=("audio",), causal=True).eval()], tmp_path / "x", name="x",
                     version="0", features=FEATURES, max_turns=5, training={})


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("depth", DEPTHS)
def test_causal_model_never_looks_ahead(depth: str, residual: bool) -> None:
    model = _model(causal=True, fusion_depth=depth, fusion_method="attention", turn_residual=residual).eval()
    audio, text, mask, _ = _batch(b=1, t=8)
    with torch.no_grad():
        ref = model(audio, text, mask)["logits"]
        audio2 = audio.clone()
        audio2[0, 5:] += 3.0
        text2 = text.clone()
        text2[0, 5:] -= 2.0
        got = model(audio2, text2, mask)["logits"]
    torch.testing.assert_close(got[0, :5], ref[0, :5])
    assert not torch.allclose(got[0, 5:], ref[0, 5:])


def test_turn_residual_lets_each_turn_speak_for_itself(tmp_path: Path) -> None:
    """With the dialogue GRU silenced (zero weights: its output is 0), a plain model gives every turn the
    same logits, while one with ``turn_residual`` still reads each turn's own vector; it exports exactly."""
    audio, text, mask, _ = _batch(b=1, t=6)
    outputs = {}
    for residual in (False, True):
        torch.manual_seed(0)
        model = _model(modalities=("text",), causal=True, turn_residual=residual).eval()
        with torch.no_grad():
            for p in model.branches["text"].gru.parameters():
                p.zero_()
            outputs[residual] = model(None, text, mask)["logits"][0]
    plain, residual_out = outputs[False], outputs[True]
    # Attention mixes in earlier turns, so compare the first two turns: equal without the residual.
    torch.testing.assert_close(plain[0], plain[1])
    assert not torch.allclose(residual_out[0], residual_out[1])
    torch.manual_seed(0)
    model = _model(causal=True, fusion_depth="logits", fusion_method="add", turn_residual=True)
    runtime = export_model(model.eval(), tmp_path, name="r", version="0", features=FEATURES, max_turns=5, training={})
    assert max_difference(model, runtime) <= 1e-4
    assert json.loads((tmp_path / "card.json").read_text())["architecture"]["turn_residual"] is True


def test_offline_model_uses_the_future_but_padding_never_leaks() -> None:
    model = _model(causal=False).eval()
    audio, text, mask, _ = _batch(b=2, t=6)
    with torch.no_grad():
        ref = model(audio, text, mask)["logits"]
        n = int(mask[1].sum())
        alone = model(audio[1:2, :n], text[1:2, :n], mask[1:2, :n])["logits"]
        audio2 = audio.clone()
        audio2[0, 4:] += 3.0
        changed = model(audio2, text, mask)["logits"]
    torch.testing.assert_close(alone[0], ref[1, :n], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed[0, :4], ref[0, :4])


def test_warm_start_copies_the_unimodal_branch() -> None:
    uni = _model(modalities=("text",))
    fused = _model(fusion_depth="late", fusion_method="concat")
    copied = load_unimodal_into(fused, uni, "text")
    assert copied > 4
    torch.testing.assert_close(fused.proj["text"][0].weight, uni.proj["text"][0].weight)
    with pytest.raises(ValueError, match="text-only"):
        load_unimodal_into(fused, uni, "audio") if False else load_unimodal_into(fused, _model(modalities=("audio",)),
                                                                                   "text")


def test_config_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="fusion_depth must be one of"):
        ModelConfig(fusion_depth="deep")
    with pytest.raises(ValueError, match="fusion_method must be one of"):
        ModelConfig(fusion_method="multiply")
    with pytest.raises(ValueError, match="modalities"):
        ModelConfig(modalities=("video",))
    with pytest.raises(ValueError, match="unknown model setting"):
        ModelConfig.from_dict({"hiddne": 3})


# --------------------------------------------------------------------------- runtime loader


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    export_model(_model(causal=True).eval(), d, name="m", version="1", features=FEATURES, max_turns=3, training={})
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_loader_refuses_missing_files(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path / "m")
    (d / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model.onnx is missing"):
        Runtime.load(d)
    with pytest.raises(ModelError, match="card.json is missing"):
        Runtime.load(tmp_path / "nowhere")


def test_loader_refuses_a_corrupt_or_foreign_onnx(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path / "m")
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its card"):
        Runtime.load(d)
    other = tmp_path / "other"
    export_model(_model(modalities=("audio",)).eval(), other, name="o", version="1", features=FEATURES, max_turns=3,
                 training={})
    d2 = _copy(exported, tmp_path / "m2")
    shutil.copy(other / "model.onnx", d2 / "model.onnx")
    with pytest.raises(ModelError, match="does not match its card"):
        Runtime.load(d2)
    # Even with the checksum updated, the graph's inputs give it away.
    card = json.loads((d2 / "card.json").read_text())
    card["files"]["model.onnx"] = json.loads((other / "card.json").read_text())["files"]["model.onnx"]
    (d2 / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="graph inputs"):
        Runtime.load(d2)


def test_loader_refuses_a_card_whose_labels_do_not_match(exported: Path, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path / "m")
    card = json.loads((d / "card.json").read_text())
    card["labels"] = ["calm", "happy", "sad"]
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="3 labels"):
        Runtime.load(d)
    card["labels"] = ["a", "a", "b", "c"]
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="distinct"):
        Runtime.load(d)
    (d / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Runtime.load(d)


def test_loader_refuses_other_features(exported: Path) -> None:
    rt = Runtime.load(exported)
    rt.check_features("a", "t")
    with pytest.raises(ModelError, match="expects audio features 'a'"):
        rt.check_features("b", "t")


def test_score_dialogue_equals_turn_by_turn_windows(exported: Path) -> None:
    rt = Runtime.load(exported)
    rng = np.random.default_rng(0)
    feats = {"audio": rng.normal(size=(7, 6)).astype(np.float32), "text": rng.normal(size=(7, 10)).astype(np.float32)}
    whole = rt.score_dialogue(feats)["probs"]
    for n in range(7):
        lo = max(0, n - 2)
        window = {m: x[None, lo : n + 1] for m, x in feats.items()}
        got = rt.score(window, np.ones((1, n + 1 - lo), bool))["probs"][0, -1]
        np.testing.assert_allclose(whole[n], got, atol=1e-6)


# --------------------------------------------------------------------------- evaluate: bad input


def _write(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def _run_evaluate(model: Path, manifest: Path) -> tuple[int, str]:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "training", "evaluate", "--model", str(model), "--manifest",
                        str(manifest), "--out", str(manifest.with_suffix(".json"))],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_evaluate_refuses_bad_manifests_naming_rows(tmp_path: Path) -> None:
    model = tmp_path / "audio-model"
    export_model(EmotionModel(ModelConfig(modalities=("audio",), dims={"audio": 75}, hidden=16, heads=2)).eval(),
                 model, name="a", version="1", features={"audio": {"key": "x"}}, max_turns=3, training={})
    cols = ["dialogue_id", "utt_index", "speaker", "label", "text", "audio"]
    missing_col = _write(tmp_path / "m1.csv", [{"dialogue_id": "d", "utt_index": "0", "speaker": "s"}],
                         ["dialogue_id", "utt_index", "speaker"])
    rc, out = _run_evaluate(model, missing_col)
    assert rc == 2 and "missing columns: label, text, audio" in out
    bad_label = _write(tmp_path / "m2.csv", [
        {"dialogue_id": "d", "utt_index": "0", "speaker": "s", "label": "neutral", "text": "", "audio": "a.wav"},
        {"dialogue_id": "e", "utt_index": "0", "speaker": "s", "label": "bored", "text": "", "audio": "a.wav"},
    ], cols)
    (tmp_path / "a.wav").write_bytes(b"")
    rc, out = _run_evaluate(model, bad_label)
    assert rc == 2 and "bored" in out and "row 3" in out, out
    no_audio = _write(tmp_path / "m3.csv", [
        {"dialogue_id": "d", "utt_index": "0", "speaker": "s", "label": "neutral", "text": "", "audio": "gone.wav"},
        {"dialogue_id": "e", "utt_index": "0", "speaker": "s", "label": "sad", "text": "", "audio": ""},
    ], cols)
    rc, out = _run_evaluate(model, no_audio)
    assert rc == 2 and "gone.wav" in out and "row 2" in out and "row 3" in out, out


def test_evaluate_prints_every_metric_and_names_its_file_after_the_model(tmp_path: Path) -> None:
    """Accuracy is called what it is, weighted F1 and ECE are printed, and two exports of one config
    write different default report files (the name carries the model's hash)."""
    import subprocess
    import sys

    import soundfile as sf

    from realtime_ser.features.audio import AudioFrontEnd

    card = AudioFrontEnd.create("acoustic").card()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out = tmp_path / f"m{seed}"
        export_model(EmotionModel(ModelConfig(modalities=("audio",), dims={"audio": card["dim"]}, hidden=16,
                                              heads=2)).eval(),
                     out, name="same-config", version="1", features={"audio": card}, max_turns=3, training={})
        models.append(out)
    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(["neutral", "happy", "sad", "angry"] * 2):
        sf.write(tmp_path / f"c{i}.wav", (0.3 * rng.standard_normal(16000)).astype(np.float32), 16000)
        rows.append({"dialogue_id": f"d{i}", "utt_index": "0", "speaker": f"s{i}", "label": label, "text": "",
                     "audio": f"c{i}.wav"})
    manifest = _write(tmp_path / "clips.csv", rows, ["dialogue_id", "utt_index", "speaker", "label", "text", "audio"])
    repo = Path(__file__).resolve().parents[1]
    written = []
    for model in models:
        p = subprocess.run([sys.executable, "-m", "training", "evaluate", "--model", str(model), "--manifest",
                            str(manifest)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                           env={**__import__("os").environ, "PYTHONPATH": str(repo)})
        assert p.returncode == 0, p.stderr
        assert "accuracy (WA, weighted accuracy: share of utterances right)" in p.stdout
        assert "weighted F1" in p.stdout and "ECE" in p.stdout
        written.append(p.stdout.strip().splitlines()[-1])
    assert written[0] != written[1] and all("same-config-1-" in w for w in written), written
