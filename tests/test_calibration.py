"""Calibration (training.calibration), the audio gate and the trainer's held-out-speaker validation split."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from realtime_ser.emotion.model import SHIFT  # noqa: E402
from training.calibration import ece, ece_floor, fit_temperature, nll, reliability_bins, reliability_diagram  # noqa: E402
from training.data import Utterance  # noqa: E402
from training.models import AudioGate, EmotionModel, ModelConfig  # noqa: E402
from training.train import (  # noqa: E402
    ConfigError,
    Dialogue,
    WeightAverage,
    batch,
    calibration_dialogues,
    config_from_dict,
    corpus_balance,
    load_config,
    predict,
    speaker_normalized,
    train_model,
    turn_corpora,
    turn_values,
    validation_split,
)


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax claims far more than the 60% accuracy they have."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 4, n))
    logits = rng.normal(0, 0.3, (n, 4))
    logits[np.arange(n), pred] += 6.0
    return logits, y


def test_temperature_fixes_overconfidence_and_keeps_the_argmax() -> None:
    logits, y = _overconfident()
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    before = ece(probs, y)
    t = fit_temperature(logits, y)
    after_probs = torch.softmax(torch.tensor(logits / t), -1).numpy()
    assert t > 2, "over-confident logits need cooling"
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    assert ece(after_probs, y) < 0.03 < before
    assert (after_probs.argmax(1) == probs.argmax(1)).all()


def test_ece_of_a_calibrated_predictor_is_small_and_of_a_liar_large() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 20000)  # the claimed probability of class 0, its top class
    y = (rng.random(20000) >= conf).astype(int)  # class 0 exactly that often
    probs = np.stack([conf, 1 - conf], axis=1)
    assert ece(probs, y) < 0.02
    liar = np.tile([0.99, 0.01], (1000, 1))
    assert ece(liar, np.r_[np.zeros(500, int), np.ones(500, int)]) == pytest.approx(0.49, abs=1e-6)
    assert sum(b["n"] for b in reliability_bins(probs, y)) == 20000


def test_reliability_diagram_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    logits, y = _overconfident(500)
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    path = reliability_diagram([("raw", probs, y)], tmp_path / "r.png", "test")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_audio_gate_passes_training_like_audio_and_silences_the_strange() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    basis, other = 3 * q[:8], 3 * q[16:24]  # orthogonal subspaces
    train = torch.randn(3000, 8, generator=g) @ basis + 0.05 * torch.randn(3000, 32, generator=g)
    gate = AudioGate(32, components=16, bank=500)
    gate.fit(train)
    typical = torch.randn(500, 8, generator=g) @ basis  # new draws of the same kind
    strange = torch.randn(500, 8, generator=g) @ other  # another kind altogether
    assert gate(typical).mean() > 0.95
    assert gate(strange).mean() < 0.05


def test_gated_model_lets_text_decide_for_strange_audio() -> None:
    cfg = ModelConfig(modalities=("audio", "text"), dims={"audio": 16, "text": 8}, hidden=16, heads=2,
                      causal=True, fusion_depth="logits", fusion_method="add", audio_gate=True)
    torch.manual_seed(0)
    model = EmotionModel(cfg).eval()
    seen = torch.zeros(2000, 16)
    seen[:, :4] = torch.randn(2000, 4)  # training audio varies in four directions only
    model.gate.fit(seen)
    mask = torch.ones(1, 3, dtype=torch.bool)
    text = torch.randn(1, 3, 8)
    strange = torch.zeros(1, 3, 16)
    strange[..., 8:] = torch.randn(1, 3, 8)  # in directions training never had
    out = model(strange, text, mask)
    assert torch.allclose(out["logits"], out["text"], atol=1e-4), "far-out audio has no say"
    assert (out["reliability"] < 1e-3).all()
    with pytest.raises(ValueError, match="audio_gate"):
        ModelConfig(modalities=("audio", "text"), fusion_depth="late", audio_gate=True)
    # A speaker-adaptive model: the shift moves what the classifier reads, never what the gate reads,
    # so taking a strange voice's own offset out cannot make it look like a known one.
    shifted = EmotionModel(replace(cfg, speaker_shift=True)).eval()
    shifted.load_state_dict(model.state_dict())
    offset = strange.clone()  # the shift that would map this voice onto the training data exactly
    moved = shifted(strange, text, mask, audio_shift=offset)
    assert torch.equal(moved["reliability"], out["reliability"]), "the gate reads the raw vector"
    assert torch.allclose(moved["audio"], shifted(torch.zeros(1, 3, 16), text, mask)["audio"]), \
        "the classifier reads audio less the shift"
    with pytest.raises(ValueError, match="speaker_shift"):
        ModelConfig(modalities=("text",), speaker_shift=True)


def test_the_gate_reads_only_the_main_encoders_part_of_the_audio_vector() -> None:
    """With a shallower encoder's vector after the main one (features.speech_extra_layers), the gate reads
    the leading gate_dims values: what follows them has no say in how far the audio lies."""
    from training.features import FeatureSettings, main_speech_columns

    cfg = ModelConfig(modalities=("audio", "text"), dims={"audio": 16, "text": 8}, hidden=16, heads=2,
                      causal=True, fusion_depth="logits", fusion_method="add", audio_gate=True, gate_dims=8)
    torch.manual_seed(0)
    model = EmotionModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(2000, 8)
    seen[:, :4] = torch.randn(2000, 4, generator=g)
    model.gate.fit(seen)
    mask = torch.ones(1, 3, dtype=torch.bool)
    text = torch.randn(1, 3, 8, generator=g)
    known = torch.zeros(1, 3, 16)
    known[..., :4] = torch.randn(1, 3, 4, generator=g)
    wild_tail = known.clone()
    wild_tail[..., 8:] = 50 * torch.randn(1, 3, 8, generator=g)  # far out, but in the values the gate does not read
    strange_head = known.clone()
    strange_head[..., 4:8] = 5 * torch.randn(1, 3, 4, generator=g)  # far out in the values it reads
    assert torch.equal(model(wild_tail, text, mask)["reliability"], model(known, text, mask)["reliability"])
    assert (model(known, text, mask)["reliability"] > 0.5).all()
    assert (model(strange_head, text, mask)["reliability"] < 1e-3).all()
    with pytest.raises(ValueError, match="gate_dims"):
        ModelConfig(modalities=("audio", "text"), dims={"audio": 16, "text": 8}, fusion_depth="logits",
                    audio_gate=True, gate_dims=17)
    # The trainer's choice: the main encoder's share of the vector where extra depths follow it, else all.
    assert main_speech_columns(FeatureSettings(audio="speech", speech_extra_layers=(1,)), 2048) == 1024
    assert main_speech_columns(FeatureSettings(audio="speech+acoustic", speech_extra_layers=(1, 3)), 3 * 1024 + 75) \
        == 1024
    assert main_speech_columns(FeatureSettings(audio="speech"), 1024) == 0


def test_ece_floor_is_what_a_calibrated_model_shows_at_that_size() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(4, 0.4), 4000)  # confident, like a trained model
    small, large = ece_floor(probs[:112]), ece_floor(probs)
    assert 0.04 < small < 0.15 and large < 0.03, "the floor falls with the test set's size"
    # A calibrated model's measured ECE lands near its floor; an over-confident one's far above it.
    y = np.array([rng.choice(4, p=q) for q in probs])
    assert abs(ece(probs, y) - large) < 0.015
    sharp = probs ** 3 / (probs ** 3).sum(1, keepdims=True)
    assert ece(sharp, y) > large + 0.05


def _dialogue(i: int, voices: list[str]) -> Dialogue:
    us = [Utterance(f"d{i}", j, "spk", "happy", "x", extra={"audio_actor": v}) for j, v in enumerate(voices)]
    return Dialogue(f"d{i}", np.zeros((len(us), 2), np.float32), None, np.zeros(len(us), np.int64), us)


def test_validation_speakers_are_never_heard_in_training() -> None:
    train = [_dialogue(i, [f"a{i % 20}"]) for i in range(200)]
    fit, val = validation_split(train, 0.1, "speaker", random.Random(0))
    heard = {u.meta("audio_actor") for d in fit for u in d.utterances}
    held = {u.meta("audio_actor") for d in val for u in d.utterances}
    assert val and not heard & held
    assert len(val) >= 20 and len(fit) + len(val) == 200
    fit2, val2 = validation_split(train, 0.1, "dialogue", random.Random(0))
    assert len(val2) == 20 and len(fit2) == 180


def _clip(i: int, voice: str, corpus: str) -> Dialogue:
    u = Utterance(f"d{i}", 0, voice, "happy", "x", extra={"corpus": corpus})
    return Dialogue(f"d{i}", np.zeros((1, 2), np.float32), None, np.zeros(1, np.int64), [u])


def test_validation_speakers_per_corpus_come_from_every_corpus_alike() -> None:
    # 60 voices of a big corpus, 20 of a small one, 2 of a tiny one with many clips each: a
    # plain speaker split may hold out a tiny corpus's voice (a tenth of the clips at once).
    train = [_clip(i, f"big{i % 60}", "big") for i in range(600)]
    train += [_clip(1000 + i, f"small{i % 20}", "small") for i in range(200)]
    train += [_clip(2000 + i, f"tiny{i % 2}", "tiny") for i in range(400)]
    for seed in range(5):
        fit, val = validation_split(train, 0.1, "speaker_per_corpus", random.Random(seed))
        held = {u.speaker for d in val for u in d.utterances}
        heard = {u.speaker for d in fit for u in d.utterances}
        assert not held & heard and len(fit) + len(val) == len(train)
        assert sum(v.startswith("big") for v in held) == 6
        assert sum(v.startswith("small") for v in held) == 2
        assert not any(v.startswith("tiny") for v in held), "two voices: none held out"
    both = config_from_dict({"name": "x", "data": {"manifests": ["ravdess"]}, "features": {"speaker_norm": 5.0},
                             "model": {"modalities": ["audio", "text"], "fusion_depth": "logits",
                                       "audio_gate": True}})
    assert both.features.speaker_norm == 5.0 and both.model.audio_gate, "the gate reads the unshifted vectors"
    with pytest.raises(ConfigError, match="val_by must be one of"):
        config_from_dict({"name": "x", "data": {"manifests": ["ravdess"]}, "train": {"val_by": "corpus"}})
    with pytest.raises(ConfigError, match=r"train.ensemble must be 1..2 .*\[0, 1\]"):
        config_from_dict({"name": "x", "data": {"manifests": ["ravdess"]}, "train": {"seeds": [0, 1], "ensemble": 3}})
    three = config_from_dict({"name": "x", "data": {"manifests": ["ravdess"]}, "train": {"ensemble": 3}})
    assert three.train.ensemble == 3


def test_temperatures_may_be_fitted_on_the_held_out_turns_augmented_copies_too() -> None:
    us = [Utterance("d", j, "spk", "happy", "x") for j in range(3)]
    audio = np.arange(6, dtype=np.float32).reshape(3, 2)
    copies = np.stack([audio + 10, audio + 20])
    with_copies = Dialogue("d", audio, None, np.zeros(3, np.int64), us, audio_copies=copies,
                           audio_shift=np.ones((3, 2), np.float32))
    plain = Dialogue("e", audio, None, np.zeros(3, np.int64), us)
    assert calibration_dialogues([with_copies, plain], False) == [with_copies, plain]
    fit_on = calibration_dialogues([with_copies, plain], True)
    assert [d.id for d in fit_on] == ["d", "e", "d", "d"]
    for d, c in zip(fit_on[2:], copies, strict=True):
        np.testing.assert_array_equal(d.audio, c)
        assert d.audio_copies is None and d.audio_shift is with_copies.audio_shift, "the speaker's shift as in training"
        assert (d.y == with_copies.y).all() and d.utterances == us
    cfg = config_from_dict({"name": "x", "data": {"manifests": ["ravdess"]}, "train": {"calibrate_augmented": True}})
    assert cfg.train.calibrate_augmented and not config_from_dict(
        {"name": "x", "data": {"manifests": ["ravdess"]}}).train.calibrate_augmented


def test_config_names_labels_once_and_set_pins_a_grid_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[data]\nmanifests = ["ravdess"]\nlabels = ["a", "b", "c"]\n'
                    '[grid]\n"model.causal" = [false, true]\n"train.lr" = [0.1, 0.01]\n'
                    '[augment]\ncopies = 2\ntelephone_prob = 0.3\n')
    cfg = load_config(path)
    assert cfg.model.labels == ("a", "b", "c")
    assert cfg.augment.copies == 2 and cfg.augment.config.telephone_prob == 0.3
    pinned = load_config(path, ["model.causal=true"])
    assert list(pinned.grid) == ["train.lr"] and pinned.model.causal is True
    from training.data import ConfigError
    from training.train import export_final

    with pytest.raises(ConfigError, match="--set train.lr=0.1"):
        export_final(pinned, tmp_path / "out")
    with pytest.raises(ConfigError, match="augment"):
        load_config(path, ["augment.nonsense=1"])


def test_an_audio_only_card_loads_no_text_encoder() -> None:
    from training.features import FeatureExtractor, FeatureSettings

    ex = FeatureExtractor(FeatureSettings(audio="acoustic", text_encoder_dir="/nonexistent"))
    card = ex.settings_card(("audio",))
    assert set(card) == {"audio"} and card["audio"]["kind"] == "acoustic"
    assert ex._text is None


def test_emotion_change_compares_each_turn_with_the_same_speakers_last_labeled_turn() -> None:
    labels = ["happy", "sad", "", "happy", "angry", "sad", "angry"]
    speakers = "ABAAABA"
    us = [Utterance("d", j, s, lab, f"t{j}", extra={"kind": "dialogue"}) for j, (s, lab) in
          enumerate(zip(speakers, labels, strict=True))]
    index = {"happy": 1, "sad": 2, "angry": 3}
    d = Dialogue("d", None, np.zeros((len(us), 2), np.float32), np.array([index.get(x, -1) for x in labels]), us)
    # A's happy, (unlabeled), happy, angry, angry; B's sad, sad: the unlabeled turn is skipped, not a change.
    assert turn_values(d, "emotion_change") == ["first", "first", "same", "changed", "same", "same"]
    assert turn_values(d, "kind") == ["dialogue"] * 6


def test_speaker_normalization_uses_only_earlier_turns_of_the_same_voice() -> None:
    mean = np.zeros(2, np.float32)
    # One dialogue, voices a, b, a, a: each turn minus (sum of that voice's earlier turns) / (n + k).
    us = [Utterance("d", j, "x", "happy", "", extra={"audio_actor": v}) for j, v in enumerate("abaa")]
    audio = np.array([[4, 0], [0, 8], [2, 2], [10, 10]], np.float32)
    d = Dialogue("d", audio, None, np.zeros(4, np.int64), us, audio_copies=audio[None] + 1)
    (out,) = speaker_normalized([d], mean, 1.0, seed=0)
    shift = np.array([[0, 0], [0, 0], [4 / 2, 0], [6 / 3, 2 / 3]], np.float32)
    assert out.audio_shift is not None and np.allclose(out.audio_shift, shift)
    copies = out.audio_copies
    assert np.allclose(out.audio, audio) and copies is not None and np.allclose(copies, audio + 1), \
        "the raw vectors stay (the gate reads them); the shift is the model's input of its own"
    assert d.audio_shift is None, "the input is not changed"
    b = batch([out], ("audio",), np.random.default_rng(0))
    assert np.allclose(b[SHIFT][0], shift), "every turn's shift, whether its clean or an augmented copy is drawn"
    # Clips that are dialogues of their own: one session per voice, each voice's first clip as it is.
    clips = [Dialogue(f"c{i}", np.full((1, 2), float(i), np.float32), None, np.zeros(1, np.int64),
                      [Utterance(f"c{i}", 0, f"v{i % 2}", "happy", "")]) for i in range(6)]
    shifted = speaker_normalized(clips, mean, 2.0, seed=3)
    moved = [bool(np.any(b.audio_shift)) for b in shifted]
    assert sum(moved) == 4, "all but the first clip of each of the two voices"


def test_report_tables_each_report_by_value_per_seed() -> None:
    from training.report import by_table

    def run(seed: int, fold: str, wa: float) -> dict:
        metrics = {"weighted_accuracy": wa, "uar": wa - 0.1, "n": 10}
        return {"seed": seed, "fold": fold, "by": {"emotion_change": {"changed": {"metrics": metrics}}}}

    doc = {"variants": [{"variant": "v", "runs": [run(0, "a", 0.5), run(0, "b", 0.7), run(1, "a", 0.7),
                                                  run(1, "b", 0.9)]}]}
    # Seed 0: mean over folds 60%, seed 1: 80%; n is the turns of one seed (two folds of 10).
    assert by_table(doc)[2] == "| v | emotion_change = changed | 20 | 70.0 ± 10.0 | 60.0 ± 10.0 |"


def test_default_report_recomputes_only_named_experiments_it_knows(capsys: pytest.CaptureFixture[str]) -> None:
    """``--only`` refuses names it does not know (listing those it does) and experiments without
    their test predictions in runs/, before touching the committed report."""
    from training import default_report

    before = (default_report.OUT / "default_model.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        default_report.main(["--only", "voices_bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown experiment(s) voices_bogus" in err and "voices_ravdess" in err
    assert (default_report.OUT / "default_model.json").read_bytes() == before


def test_default_report_names_the_rows_trained_with_each_setting(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from training import default_report

    recipe = tmp_path / "default_audio.toml"
    recipe.write_text('name = "default_audio"\n[train]\ncalibrate_augmented = true\n')
    monkeypatch.setattr(default_report, "PACKAGED_RECIPE", recipe)

    assert default_report._training_settings({"weight_average": 0.99, "calibrate_augmented": False,
                                              "epochs": 30}) == ["weight_average"]
    titles = {"a": "Row A", "b": "Row B", "c": "Row C"}
    voices = {"a": {"training": ["weight_average", "calibrate_augmented"]}, "b": {"training": ["weight_average"]},
              "c": {}}
    note = default_report._training_note(titles, voices)
    averaged = next(line for line in note if "`train.weight_average`" in line)
    assert "Row A; Row B" in averaged and "Row C" not in averaged
    assert averaged.endswith("Not (yet) the packaged models' recipe.")
    augmented = next(line for line in note if "`train.calibrate_augmented`" in line)
    assert "Row A" in augmented and "Row B" not in augmented
    assert augmented.endswith("and the packaged models' recipe.")
    assert default_report._training_note(titles, {"a": {}}) == [], "no note where no row uses a setting"
    assert default_report._training_settings({"calibrate_balance": True}) == ["calibrate_balance"]


def test_weight_average_ramps_up_then_keeps_its_decay() -> None:
    model = EmotionModel(ModelConfig(modalities=("audio",), dims={"audio": 3}, hidden=4, labels=("a", "b")))
    weights = [p for p in model.parameters() if p.ndim == 2][0]
    start = weights.detach().clone()
    average = WeightAverage(model, decay=0.5)
    assert not any(p.requires_grad for p in average.model.parameters()), "the average is never trained"
    avg_weights = [p for p in average.model.parameters() if p.ndim == 2][0]
    with torch.no_grad():
        weights.copy_(start + 1.0)
    average.update(model)  # step 0: decay (1 + 0) / (10 + 0) = 0.1, under 0.5
    torch.testing.assert_close(avg_weights, 0.1 * start + 0.9 * (start + 1.0))
    with torch.no_grad():
        weights.copy_(start + 3.0)
    average.update(model)  # step 1: 2 / 11 = 0.18
    torch.testing.assert_close(avg_weights, 2 / 11 * (start + 0.9) + 9 / 11 * (start + 3.0))
    for _ in range(20):
        average.update(model)  # from step 8 on, 9 / 18 = 0.5: the configured decay
    previous = avg_weights.clone()
    with torch.no_grad():
        weights.copy_(start - 1.0)
    average.update(model)
    torch.testing.assert_close(avg_weights, 0.5 * previous + 0.5 * (start - 1.0))
    with pytest.raises(ConfigError, match=r"train.weight_average must be in \[0, 1\)"):
        config_from_dict({"name": "x", "data": {"manifests": ["ravdess"]}, "train": {"weight_average": 1.0}})


def _separable(n: int, seed: int) -> list[Dialogue]:
    """One-turn dialogues whose label is the sign of the first feature."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = i % 2
        x = rng.normal(0, 1, (1, 6)).astype(np.float32)
        x[0, 0] = (1 if y else -1) * (1 + abs(x[0, 0]))
        out.append(Dialogue(f"d{i}", x, None, np.array([y]), [Utterance(f"d{i}", 0, f"s{i}", "ab"[y], "x")]))
    return out


@pytest.mark.parametrize(("decay", "patience"), [(0.0, 12), (0.9, 12), (0.9, 0)])
def test_a_model_trained_with_averaged_weights_is_the_average(decay: float, patience: int) -> None:
    """With early stopping the best epoch's averaged weights are the model; without, the last ones."""
    cfg = config_from_dict({"name": "x", "data": {"manifests": ["x"], "labels": ["a", "b"]},
                            "model": {"modalities": ["audio"], "hidden": 8},
                            "train": {"epochs": 12, "batch_size": 8, "patience": patience, "lr": 0.01,
                                      "val_by": "dialogue", "seeds": [0], "weight_average": decay}})
    model, info = train_model(cfg, _separable(160, 0), seed=0)
    assert info["best_epoch"] <= 11 and all(("val_uar" in h) == bool(patience) for h in info["history"])
    test = _separable(200, 1)
    acc = float((predict(model, test)["logits"].argmax(1) == np.array([d.y[0] for d in test])).mean())
    assert acc > 0.9, f"learned the sign (accuracy {acc:.2f})"
    plain, _ = train_model(replace(cfg, train=replace(cfg.train, weight_average=0.0)), _separable(160, 0), seed=0)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(),
                                                   strict=True))
    assert same == (decay == 0.0), "the averaged weights are the model"


def test_a_weighted_temperature_fit_counts_each_row_by_its_weight() -> None:
    """Weight 2 is the row twice; corpus-balanced weights let a small over-confident corpus pull the
    temperature as hard as a large calibrated one."""
    over, y_over = _overconfident(400, seed=3)
    rng = np.random.default_rng(4)
    y_cal = rng.integers(0, 4, 4000)
    fine = rng.normal(0, 1, (4000, 4))
    fine[np.arange(4000), y_cal] += 1.5
    twice = fit_temperature(np.concatenate([over, over[:100]]), np.concatenate([y_over, y_over[:100]]))
    weighted = fit_temperature(over, y_over, np.r_[np.full(100, 2.0), np.ones(300)])
    assert weighted == pytest.approx(twice, rel=1e-6)
    logits, y = np.concatenate([fine, over]), np.concatenate([y_cal, y_over])
    corpora = ["big"] * 4000 + ["small"] * 400
    w = corpus_balance(corpora)
    assert w[:4000].sum() == pytest.approx(w[4000:].sum()) == pytest.approx(1.0)
    t_plain, t_balanced = fit_temperature(logits, y), fit_temperature(logits, y, w)
    assert t_plain < t_balanced < fit_temperature(over, y_over)
    with pytest.raises(ValueError, match="non-negative"):
        fit_temperature(logits, y, np.zeros(len(y)))


def test_calibrate_balance_weighs_each_corpus_alike_in_the_temperature_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train as train_mod

    us = [Utterance("d", 0, "a", "a", "x", "", {"corpus": "own", "audio_corpus": "lent"}),
          Utterance("d", 1, "b", "", "x", "", {"voice_corpus": "v"}),
          Utterance("d", 2, "c", "b", "x", "", {"corpus": "c"})]
    d = Dialogue("d", np.zeros((3, 2), np.float32), None, np.array([0, -1, 1]), us)
    assert turn_corpora(d) == ["lent", "c"]
    seen: list[np.ndarray | None] = []
    real = train_mod.fit_temperature

    def recording(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
        seen.append(w)
        return real(z, y, w)

    monkeypatch.setattr(train_mod, "fit_temperature", recording)
    data = _separable(160, 0)
    data = [replace(x, utterances=[replace(x.utterances[0], extra={"corpus": "big" if i % 5 else "small"})])
            for i, x in enumerate(data)]
    for balance in (False, True):
        seen.clear()
        cfg = config_from_dict({"name": "x", "data": {"manifests": ["x"], "labels": ["a", "b"]},
                                "model": {"modalities": ["audio"], "hidden": 8},
                                "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "val_by": "dialogue",
                                          "val_fraction": 0.3, "seeds": [0], "calibrate_balance": balance}})
        _, info = train_model(cfg, data, seed=0)
        assert seen and "temperature" in info
        if not balance:
            assert all(w is None for w in seen)
            continue
        w = seen[0]
        assert w is not None and len(set(np.round(w, 9))) == 2, "two corpora, a weight each"
        assert float(w.max() / w.min()) > 2, "the smaller corpus's turns weigh more"
