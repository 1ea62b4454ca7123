"""training.channels: the level and channel conditions, and the packaged model scored under them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED_DATA

from training import channels
from training.data import Utterance, read_manifest, write_manifest

RATE = 16000


def _voice(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 30))
    x = 0.3 * x / np.abs(x).max() + 0.002 * np.random.default_rng(seed).standard_normal(len(t))
    return x.astype(np.float32)


def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2)))


def test_conditions_do_what_they_say() -> None:
    rng = np.random.default_rng(0)
    x = _voice()
    assert channels.condition("clean")(x, RATE, rng) is x
    assert _db(channels.condition("gain:-20")(x, RATE, rng)) == pytest.approx(_db(x) - 20, abs=0.01)
    assert _db(channels.condition("gain:6")(x, RATE, rng)) == pytest.approx(_db(x) + 6, abs=0.01)
    noisy = channels.condition("noise:10")(x, RATE, rng)
    assert _db(noisy - x) == pytest.approx(_db(x) - 10, abs=0.5)
    phone = channels.condition("telephone")(x, RATE, rng)
    spectrum = np.abs(np.fft.rfft(phone)) ** 2
    freqs = np.fft.rfftfreq(len(phone), 1 / RATE)
    assert spectrum[freqs > 4000].sum() < 1e-4 * spectrum.sum()
    assert len(phone) == len(x)


@pytest.mark.parametrize("spec", ["loud", "gain", "gain:quiet", "gain:-90", "telephone:3", "noise:"])
def test_a_bad_condition_is_refused_with_what_is_allowed(spec: str) -> None:
    with pytest.raises(ValueError, match=r"condition|allowed"):
        channels.condition(spec)


def test_the_command_line_refuses_a_bad_condition(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        channels.main(["--conditions", "clean,whisper"])
    assert exit_info.value.code == 2
    assert "unknown condition 'whisper'; allowed: clean, gain:DB" in capsys.readouterr().err


def test_copies_keep_rows_and_labels_and_are_reproducible(tmp_path: Path) -> None:
    rows = []
    for i, label in enumerate(["angry", "sad"]):
        sf.write(tmp_path / f"c{i}.wav", _voice(seed=i), RATE)
        rows.append(Utterance(f"d{i}", 0, "s1", label, "hello there", f"c{i}.wav"))
    manifest = write_manifest(tmp_path / "m.csv", rows)
    first = channels.transformed_manifest(manifest, "noise:10", tmp_path / "a", seed=3)
    again = channels.transformed_manifest(manifest, "noise:10", tmp_path / "b", seed=3)
    copies = read_manifest(first, require_audio=True)
    assert [(u.dialogue_id, u.label, u.text) for u in copies.utterances] == [
        ("d0", "angry", "hello there"), ("d1", "sad", "hello there")]
    for u, v in zip(copies.utterances, read_manifest(again).utterances, strict=True):
        a, rate = sf.read(copies.audio_path(u), dtype="int16")
        b, _ = sf.read(read_manifest(again).audio_path(v), dtype="int16")
        assert rate == RATE and np.array_equal(a, b)
    info = sf.info(copies.audio_path(copies.utterances[0]))
    assert info.subtype == "PCM_16"


def _acted_clips(tmp_path: Path) -> Path:
    """A manifest of four real CREMA-D clips (two angry, two sad; skips without the data or Whisper)."""
    from realtime_ser.errors import ModelError
    from realtime_ser.features import speech

    crema = SHARED_DATA / "crema_d"
    if not crema.is_dir():
        pytest.skip(f"needs CREMA-D in {crema} (../shared/data); CI has it")
    try:
        speech.load(threads=2)
    except (ModelError, ImportError) as exc:
        pytest.skip(f"needs the prepared Whisper base: realtime-ser models prepare ({exc})")
    actor = crema / "1006"
    clips = sorted(actor.glob("1006_*_ANG_*.ogg"))[:2] + sorted(actor.glob("1006_*_SAD_*.ogg"))[:2]
    assert len(clips) == 4
    rows = [Utterance(p.stem, 0, "crema_1006", "angry" if "_ANG_" in p.name else "sad", "Don't forget a jacket",
                      str(p)) for p in clips]
    return write_manifest(tmp_path / "clips.csv", rows)


def test_the_detector_gain_hears_clips_30_db_quieter(tmp_path: Path) -> None:
    """``--set vad.auto_gain_dbfs=-35`` cuts the clips with the detector gain: the two sad clips that
    webrtcvad does not hear 30 dB quieter are heard, and the report says which setting it ran with."""
    manifest = _acted_clips(tmp_path)
    found = {}
    for name, settings in (("off", []), ("on", ["--set", "vad.auto_gain_dbfs=-35"])):
        out = tmp_path / name
        assert channels.main(["--model", str(channels.MODELS / "audio"), "--manifest", str(manifest),
                              "--conditions", "gain:-30", "--out", str(out), *settings]) == 0
        results = json.loads(out.with_suffix(".json").read_text())
        found[name] = results["speech_found"]["gain:-30"]
        assert results["settings"] == settings[1:]
    assert found["off"]["no_speech"] == 2 and found["on"]["no_speech"] == 0
    assert found["on"]["kept_mean"] > found["off"]["kept_mean"]
    assert "`vad.auto_gain_dbfs=-35`" in (tmp_path / "on.md").read_text()


def test_the_command_line_refuses_a_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        channels.main(["--conditions", "clean", "--set", "vad.auto_gain_dbfs=-90"])
    assert exit_info.value.code == 2
    assert "vad.auto_gain_dbfs=-90.0 is not allowed; use 0 (off) or -60..-10" in capsys.readouterr().err


def test_packaged_audio_model_under_conditions(tmp_path: Path) -> None:
    """The real packaged audio model on real acted clips, clean, 20 and 45 dB quieter: the report holds
    every condition with the evaluator's figures, what the voice-activity detector kept, the figures
    on the clips it heard, and the markdown table says them."""
    manifest = _acted_clips(tmp_path)
    copy = tmp_path / "audio-copy"
    shutil.copytree(channels.MODELS / "audio", copy)
    out = tmp_path / "channels"
    assert channels.main(["--model", str(channels.MODELS / "audio"), "--model", str(copy), "--manifest",
                          str(manifest), "--conditions", "clean,gain:-20,gain:-45", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results["models"]) == ["audio", f"audio ({copy})"], "two models of one name told apart"
    audio = results["models"]["audio"]
    assert set(audio["conditions"]) == {"clean", "gain:-20", "gain:-45"}
    for spec, entry in audio["conditions"].items():
        assert entry["metrics"]["n"] == 4 and entry["modalities"] == {}
        assert results["models"][f"audio ({copy})"]["conditions"][spec]["metrics"] == entry["metrics"]
    found = results["speech_found"]
    assert found["clean"]["clips"] == 4 and found["clean"]["no_speech"] == 0
    assert 0.3 < found["clean"]["kept_mean"] <= 1.0
    assert found["gain:-20"]["kept_mean"] < found["clean"]["kept_mean"], "the detector keeps less of quiet speech"
    for spec, f in found.items():  # scored again on the heard clips only where some were not heard
        heard = audio["conditions"][spec].get("heard_metrics")
        assert (heard is None) == (f["no_speech"] == 0)
        assert heard is None or heard["n"] == f["clips"] - f["no_speech"]
    assert found["gain:-45"]["no_speech"] > 0, "45 dB quieter, the detector misses some clips"
    text = out.with_suffix(".md").read_text()
    assert "| clean | " in text and "| gain:-20 | " in text and "| clean | 0 of 4 |" in text
