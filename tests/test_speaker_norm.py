"""Speaker-adaptive audio vectors (realtime_ser.emotion.speaker): the same shift in the trainer, the
evaluator and the live emotion stage, and a card that says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from realtime_ser.config import EmotionConfig
from realtime_ser.emotion.model import SHIFT, EmotionModel, ModelCard
from realtime_ser.emotion.service import packaged_model
from realtime_ser.emotion.speaker import SpeakerNorm
from realtime_ser.errors import ModelError
from realtime_ser.recognition import AUDIO


def test_a_speaker_is_shifted_by_their_earlier_turns_only() -> None:
    norm = SpeakerNorm(np.array([1.0, 1.0]), shrink=2.0)
    a1, a2, b1 = np.array([5.0, 1.0]), np.array([3.0, 3.0]), np.array([9.0, 9.0])
    assert np.allclose(a1 - norm.step("a", a1), a1), "a first turn is as it is"
    assert np.allclose(b1 - norm.step("b", b1), b1), "another speaker's first turn too"
    # (5, 1) heard once: shift = ((5, 1) + 2 * (1, 1)) / 3 - (1, 1) = (4/3, 0)
    assert np.allclose(a2 - norm.step("a", a2), a2 - [4 / 3, 0])
    assert np.allclose(norm.shift("a"), (a1 + a2 + 2 * norm.mean) / 4 - norm.mean)
    assert np.allclose(norm.fresh().shift("a"), 0), "a new session has heard nobody"
    again = SpeakerNorm.from_card({"speaker_norm": norm.card()}, 2)
    assert again is not None and again.shrink == 2.0 and np.allclose(again.mean, norm.mean)
    assert SpeakerNorm.from_card({"kind": "speech"}, 2) is None


@pytest.mark.parametrize("spec", [{"shrink": 5.0}, {"shrink": 0, "mean": [0.0, 0.0]},
                                  {"shrink": 5.0, "mean": [0.0]}, {"shrink": 5.0, "mean": [0.0, float("nan")]},
                                  {"shrink": "x", "mean": [0.0, 0.0]}])
def test_a_bad_card_entry_is_a_clear_error(spec: dict) -> None:
    with pytest.raises(ModelError, match="speaker_norm"):
        SpeakerNorm.from_card({"speaker_norm": spec}, 2)


def _with_norm(tmp_path: Path, name: str) -> Path:
    """A copy of a packaged model whose card asks for speaker-adaptive vectors (if it does not already)."""
    src = packaged_model(name)
    dst = tmp_path / name
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    if "speaker_norm" not in card["features"]["audio"]:
        dim = card["inputs"]["audio"]["dim"]
        card["features"]["audio"]["speaker_norm"] = {"shrink": 5.0, "mean": [0.01] * dim}
        (dst / "card.json").write_text(json.dumps(card))
    return dst


def test_the_live_stage_shifts_each_speaker_by_their_earlier_turns(tmp_path: Path) -> None:
    from realtime_ser.emotion.stage import EmotionStage

    model_dir = _with_norm(tmp_path, "audio")
    norm = EmotionModel.load(model_dir).card.speaker_norm
    assert norm is not None
    stage = EmotionStage(EmotionConfig(model=str(model_dir)), audio_only=True)
    try:
        rng = np.random.default_rng(0)
        clip = rng.normal(0, 3000, 24000).astype(np.int16)
        other = rng.normal(0, 300, 24000).astype(np.int16)
        for i, (speaker, samples) in enumerate([("ch0", clip), ("ch1", other), ("ch0", clip)]):
            fields = {"speaker": speaker, "start": float(i), "end": i + 0.9, "text": "", AUDIO: samples}
            assert stage.annotate(fields) is None
        turns = list(stage.context.turns)
        first, second, third = (t.vectors["audio"] for t in turns)
        assert np.allclose(first, third, atol=1e-4), "the raw vectors: the same audio twice"
        assert not np.any(turns[0].vectors[SHIFT]) and not np.any(turns[1].vectors[SHIFT]), "first turns as they are"
        # The same audio again from ch0: the model reads it less (its earlier vector - mean) / (1 + shrink).
        assert np.allclose(turns[2].vectors[SHIFT], (first - norm.mean) / (1 + norm.shrink), atol=1e-4)
        assert stage.speakers is not None and np.allclose(stage.speakers.shift("ch1"),
                                                          (second - norm.mean) / (1 + norm.shrink), atol=1e-4)
    finally:
        stage.close()


def test_a_revision_model_must_read_the_same_vectors(tmp_path: Path) -> None:
    from realtime_ser.emotion.stage import EmotionStage

    live = _with_norm(tmp_path / "live", "default")
    other = tmp_path / "other"
    shutil.copytree(packaged_model("offline"), other)
    card = json.loads((other / "card.json").read_text())
    dim = card["inputs"]["audio"]["dim"]
    card["features"]["audio"]["speaker_norm"] = {"shrink": 7.0, "mean": [0.02] * dim}
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="speaker_norm of both cards alike"):
        EmotionStage(EmotionConfig(model=str(live), revise=True, revise_model=str(other)), audio_only=False)


def test_a_revision_model_must_read_vectors_of_the_same_front_end_and_level(tmp_path: Path) -> None:
    """The offline model scores the live model's audio vectors: one computed another way (here, at
    another input level) is refused at start, not fed vectors it was not trained on."""
    from realtime_ser.emotion.stage import EmotionStage

    other = tmp_path / "other"
    shutil.copytree(packaged_model("offline"), other)
    card = json.loads((other / "card.json").read_text())
    card["features"]["audio"]["speech"]["config"]["level_dbfs"] = -20.0
    card["features"]["audio"]["key"] = "0123456789ab"
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="it expects audio features '0123456789ab'"):
        EmotionStage(EmotionConfig(revise=True, revise_model=str(other)), audio_only=False)
    stage = EmotionStage(EmotionConfig(revise=True), audio_only=False)  # the packaged pair reads the same
    stage.close()


def test_card_field_round_trips(tmp_path: Path) -> None:
    model_dir = _with_norm(tmp_path, "audio")
    raw = json.loads((model_dir / "card.json").read_text())
    card = ModelCard.from_dict(raw)
    assert card.speaker_norm is not None and card.speaker_norm.shrink == raw["features"]["audio"]["speaker_norm"][
        "shrink"]
