"""Segmenter logic with arrays in and segment events out (a fake voice detector)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from realtime_ser.config import VadConfig
from realtime_ser.frames import (
    SAMPLE_RATE,
    AudioFrame,
    SpeechAudio,
    SpeechDiscarded,
    SpeechEnd,
    SpeechPause,
    SpeechStart,
)
from realtime_ser.vad import Segmenter

FRAME_MS = 30
N = SAMPLE_RATE * FRAME_MS // 1000


class LoudIsSpeech:
    """Voiced when the frame is loud: lets tests script speech exactly."""

    def is_speech(self, buf: bytes, sample_rate: int) -> bool:
        return int(np.abs(np.frombuffer(buf, dtype=np.int16)).max()) > 1000


def signal(*parts: tuple[str, float]) -> np.ndarray:
    out = []
    for kind, seconds in parts:
        n = int(round(seconds * SAMPLE_RATE / N)) * N
        t = np.arange(n) / SAMPLE_RATE
        out.append((8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16) if kind == "speech"
                   else np.zeros(n, dtype=np.int16))
    return np.concatenate(out)


def run(samples: np.ndarray, flush: bool = True, **cfg: int) -> list:
    seg = Segmenter(VadConfig(**cfg), FRAME_MS, channel=0, detector_factory=lambda _a: LoudIsSpeech())
    events = []
    for i in range(0, len(samples), N):
        events += seg.feed(AudioFrame(i // N, 0, i, samples[i : i + N], capture_ns=i + N), now_ns=i + N)
    if flush:
        events += seg.flush()
    return events


def ends(events: list) -> list[SpeechEnd]:
    return [e for e in events if isinstance(e, SpeechEnd)]


def test_one_utterance_boundaries_padding_and_decision_time() -> None:
    events = run(signal(("silence", 1.02), ("speech", 0.99), ("silence", 1.5)),
                 start_padding_ms=300, end_padding_ms=150, hangover_ms=480)
    starts = [e for e in events if isinstance(e, SpeechStart)]
    (end,) = ends(events)
    assert len(starts) == 1
    assert starts[0].start == pytest.approx(1.02)
    assert end.start == pytest.approx(1.02) and end.end == pytest.approx(2.01)
    assert end.reason == "silence"
    # The decision comes one hangover after the last voiced frame's capture.
    assert (end.decided_ns - end.end_capture_ns) / SAMPLE_RATE == pytest.approx(0.48)
    audio = [e.frame for e in events if isinstance(e, SpeechAudio)]
    assert audio[0].start == pytest.approx(1.02 - 0.3)
    assert audio[-1].end == pytest.approx(2.01 + 0.15)
    offsets = [f.offset for f in audio]
    assert offsets == list(range(offsets[0], offsets[-1] + N, N)), "audio frames must be contiguous"
    # Start is announced before any audio of the utterance.
    assert events.index(starts[0]) < events.index(next(e for e in events if isinstance(e, SpeechAudio)))


def test_short_blip_is_discarded_without_announcement() -> None:
    events = run(signal(("silence", 0.5), ("speech", 0.12), ("silence", 1.0)), min_utterance_ms=250)
    assert not [e for e in events if isinstance(e, SpeechStart | SpeechAudio | SpeechEnd)]
    assert len([e for e in events if isinstance(e, SpeechDiscarded)]) == 1


def test_pause_shorter_than_hangover_keeps_one_utterance_with_the_gap_audio() -> None:
    events = run(signal(("silence", 0.6), ("speech", 0.6), ("silence", 0.3), ("speech", 0.6), ("silence", 1.0)),
                 hangover_ms=450, end_padding_ms=90)
    (end,) = ends(events)
    assert end.start == pytest.approx(0.6) and end.end == pytest.approx(2.1)
    audio = [e.frame.offset for e in events if isinstance(e, SpeechAudio)]
    assert audio == list(range(audio[0], audio[-1] + N, N))


def test_pause_longer_than_hangover_splits() -> None:
    events = run(signal(("silence", 0.6), ("speech", 0.6), ("silence", 0.9), ("speech", 0.6), ("silence", 1.0)),
                 hangover_ms=450)
    assert [(round(e.start, 2), round(e.end, 2)) for e in ends(events)] == [(0.6, 1.2), (2.1, 2.7)]


def test_monologue_is_cut_at_max_length_and_goes_on() -> None:
    events = run(signal(("silence", 0.3), ("speech", 3.3), ("silence", 1.0)), max_utterance_ms=1200,
                 start_padding_ms=0)
    cuts = ends(events)
    assert [e.reason for e in cuts] == ["max_length", "max_length", "silence"]
    assert cuts[0].start == pytest.approx(0.3)
    for a, b in zip(cuts, cuts[1:], strict=False):
        assert b.start == pytest.approx(a.end), "the next utterance starts where the cut was"
        assert a.end - a.start == pytest.approx(1.2, abs=0.031)
    assert cuts[-1].end == pytest.approx(3.6)
    # Every frame of speech went to exactly one utterance.
    audio = [e.frame.offset for e in events if isinstance(e, SpeechAudio)]
    assert len(audio) == len(set(audio))


def test_flush_closes_an_open_utterance() -> None:
    events = run(signal(("silence", 0.3), ("speech", 0.9)), flush=True)
    (end,) = ends(events)
    assert end.reason == "end_of_input" and end.end == pytest.approx(1.2)


def test_flush_reason_is_passed_through_and_reset_starts_over() -> None:
    seg = Segmenter(VadConfig(), FRAME_MS, detector_factory=lambda _a: LoudIsSpeech())
    x = signal(("speech", 0.6))
    for i in range(0, len(x), N):
        seg.feed(AudioFrame(0, 0, i, x[i : i + N], 0))
    assert seg.in_speech
    (end,) = ends(seg.flush("input_timeout"))
    assert end.reason == "input_timeout"
    assert not seg.in_speech and seg.flush() == []
    for i in range(0, len(x), N):
        seg.feed(AudioFrame(0, 0, i, x[i : i + N], 0))
    seg.reset()
    assert not seg.in_speech and seg.flush() == []


def test_bad_arguments_name_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="10, 20, 30"):
        Segmenter(VadConfig(), 25)
    seg = Segmenter(VadConfig(), 30)
    with pytest.raises(ValueError, match="480"):
        seg.feed(AudioFrame(0, 0, 0, np.zeros(100, dtype=np.int16), 0))


def test_real_webrtcvad_on_tone_and_silence() -> None:
    # webrtcvad itself (not the fake): a voice-like harmonic tone is speech, zeros are not.
    t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 600, 900), start=1))
    x = np.concatenate([np.zeros(SAMPLE_RATE), (tone * 6000).astype(np.int16), np.zeros(SAMPLE_RATE)])
    x = x[: len(x) // N * N].astype(np.int16)
    seg = Segmenter(VadConfig(detector="webrtc", aggressiveness=0), FRAME_MS)
    events = []
    for i in range(0, len(x), N):
        events += seg.feed(AudioFrame(0, 0, i, x[i : i + N], 0))
    events += seg.flush()
    (end,) = ends(events)
    assert end.start == pytest.approx(1.0, abs=0.1) and end.end == pytest.approx(2.2, abs=0.2)


# -- Silero VAD ------------------------------------------------------------------------------------


def _espeak_or_skip(text: str) -> np.ndarray:
    from speech import espeak, have_tool

    if not have_tool("espeak-ng"):
        pytest.skip("needs espeak-ng")
    return espeak(text)


def _frames(x: np.ndarray) -> list[bytes]:
    x = x[: len(x) // N * N]
    return [x[i : i + N].tobytes() for i in range(0, len(x), N)]


def test_silero_tells_speech_from_silence_and_noise() -> None:
    from realtime_ser.vad import SileroDetector

    rng = np.random.default_rng(0)
    speech = _espeak_or_skip("The quick brown fox jumps over the lazy dog.")
    noise = (rng.standard_normal(SAMPLE_RATE) * 300).astype(np.int16)
    d = SileroDetector()
    assert not any(d.is_speech(f, SAMPLE_RATE) for f in _frames(np.zeros(SAMPLE_RATE, np.int16)))
    assert sum(d.is_speech(f, SAMPLE_RATE) for f in _frames(noise)) <= 2
    voiced = [d.is_speech(f, SAMPLE_RATE) for f in _frames(speech)]
    assert sum(voiced) / len(voiced) > 0.6
    assert 0.0 <= d.probability <= 1.0


def test_silero_state_is_per_stream() -> None:
    """Two detectors fed interleaved give exactly what each gives alone (one shared ONNX session)."""
    from realtime_ser.vad import SileroDetector

    speech = _espeak_or_skip("Please call me back tomorrow morning.")
    quiet = np.zeros(len(speech), np.int16)
    alone = SileroDetector()
    ref = []
    for f in _frames(speech):
        alone.is_speech(f, SAMPLE_RATE)
        ref.append(alone.probability)
    a, b = SileroDetector(), SileroDetector()
    got = []
    for fa, fb in zip(_frames(speech), _frames(quiet), strict=True):
        a.is_speech(fa, SAMPLE_RATE)
        b.is_speech(fb, SAMPLE_RATE)
        got.append(a.probability)
    assert got == ref


def test_silero_segmenter_ends_an_utterance_one_hangover_after_speech() -> None:
    speech = _espeak_or_skip("It is raining again this afternoon.")
    x = np.concatenate([np.zeros(SAMPLE_RATE, np.int16), speech, np.zeros(SAMPLE_RATE, np.int16)])
    x = x[: len(x) // N * N]
    seg = Segmenter(VadConfig(detector="silero", hangover_ms=300, end_padding_ms=200), FRAME_MS)
    events = []
    for i in range(0, len(x), N):
        events += seg.feed(AudioFrame(i // N, 0, i, x[i : i + N], i + N), now_ns=i + N)
    (end,) = ends(events)
    assert end.reason == "silence"
    assert end.start == pytest.approx(1.0, abs=0.15)
    loud = np.flatnonzero(np.abs(speech) > 1000)  # espeak pads its speech with silence
    assert end.end == pytest.approx(1.0 + loud[-1] / SAMPLE_RATE, abs=0.15)
    assert (end.decided_ns - end.end_capture_ns) / SAMPLE_RATE == pytest.approx(0.3, abs=0.031)


def test_silero_model_is_the_pinned_one_and_bad_settings_are_refused() -> None:
    import hashlib

    from realtime_ser.config import PipelineConfig, apply_overrides
    from realtime_ser.errors import ConfigError
    from realtime_ser.vad import SILERO_MODEL, SILERO_SHA256, SileroDetector

    assert hashlib.sha256(SILERO_MODEL.read_bytes()).hexdigest() == SILERO_SHA256
    with pytest.raises(ValueError, match="between 0 and 1"):
        SileroDetector(1.5)
    with pytest.raises(ConfigError, match="use one of silero, webrtc"):
        apply_overrides(PipelineConfig(), ["vad.detector=rnnoise"])
    with pytest.raises(ConfigError, match="vad.threshold"):
        apply_overrides(PipelineConfig(), ["vad.threshold=0"])
    with pytest.raises(ValueError, match="16000 Hz"):
        SileroDetector().is_speech(b"\0\0" * 480, 8000)


def pauses(events: list) -> list[SpeechPause]:
    return [e for e in events if isinstance(e, SpeechPause)]


def test_a_pause_is_announced_once_its_end_padding_is_in_and_before_the_end() -> None:
    events = run(signal(("silence", 0.6), ("speech", 0.6), ("silence", 1.0)), end_padding_ms=180, hangover_ms=420)
    (pause,) = pauses(events)
    (end,) = ends(events)
    assert pause.end == pytest.approx(end.end) == pytest.approx(1.2)
    i = events.index(pause)
    # Every frame of the utterance came before the pause, none after it: what was sent is the utterance.
    audio_before = [e for e in events[:i] if isinstance(e, SpeechAudio)]
    assert not [e for e in events[i:] if isinstance(e, SpeechAudio)]
    assert audio_before[-1].frame.end == pytest.approx(1.2 + 0.18)
    assert i < events.index(end)


def test_speech_after_a_pause_continues_the_utterance_and_each_pause_is_announced() -> None:
    events = run(signal(("silence", 0.6), ("speech", 0.6), ("silence", 0.3), ("speech", 0.6), ("silence", 1.0)),
                 hangover_ms=450, end_padding_ms=90)
    first, second = pauses(events)
    assert first.end == pytest.approx(1.2) and second.end == pytest.approx(2.1)
    # Audio of the same utterance follows the first pause (the speaker went on): it is void.
    i = events.index(first)
    assert [e for e in events[i:] if isinstance(e, SpeechAudio)]
    (end,) = ends(events)
    assert end.end == pytest.approx(2.1)


def test_no_pause_is_announced_for_gaps_shorter_than_the_end_padding_or_unannounced_blips() -> None:
    gap = run(signal(("silence", 0.6), ("speech", 0.6), ("silence", 0.09), ("speech", 0.6), ("silence", 1.0)),
              hangover_ms=450, end_padding_ms=150)
    assert [round(p.end, 2) for p in pauses(gap)] == [1.89]
    blip = run(signal(("silence", 0.5), ("speech", 0.12), ("silence", 1.0)), min_utterance_ms=250)
    assert not pauses(blip)


# -- Detector gain for quiet input (vad.auto_gain_dbfs) ---------------------------------------------


def _level_frames(levels_dbfs: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """One 30 ms frame of white noise at each RMS level (dBFS)."""
    out = []
    for db in levels_dbfs:
        x = rng.standard_normal(N)
        out.append((x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (db / 20)).astype(np.int16))
    return out


def test_detector_gain_raises_speech_like_levels_holds_through_pauses_and_leaves_steady_noise() -> None:
    from realtime_ser.vad import DetectorGain, InputLevels

    def detector_gain() -> tuple[DetectorGain, Callable[[np.ndarray], np.ndarray]]:
        gain = DetectorGain(target_dbfs=-35.0, max_db=30.0, levels=InputLevels(FRAME_MS))

        def apply(frame: np.ndarray) -> np.ndarray:
            gain.levels.add(frame)
            return gain.apply(frame)
        return gain, apply

    rng = np.random.default_rng(0)
    gain, apply = detector_gain()
    for frame in _level_frames([-70.0] * 400, rng):  # 12 s of steady noise: no level range, no gain
        assert np.array_equal(apply(frame), frame)
    assert gain.gain_db == 0.0
    # Quiet "speech": half the frames 20 dB above the floor (-50 dBFS), the rest at the floor.
    for frame in _level_frames([-50.0, -70.0] * 50, rng):
        heard = apply(frame)
    assert gain.gain_db == pytest.approx(15.0, abs=1.0), "the speech level brought up to the target"
    assert 20 * np.log10(np.std(heard.astype(np.float64)) / np.std(frame.astype(np.float64))) == pytest.approx(
        gain.gain_db, abs=0.1), "the detector's copy is raised by the gain"
    for frame in _level_frames([-70.0] * 400, rng):  # a long pause: the gain holds
        apply(frame)
    assert gain.gain_db == pytest.approx(15.0, abs=1.0)
    very_quiet, apply = detector_gain()
    for frame in _level_frames([-70.0, -90.0] * 50, rng):
        apply(frame)
    assert very_quiet.gain_db == 30.0, "never more than auto_gain_max_db"
    _, apply = detector_gain()
    for frame in _level_frames([-20.0, -60.0] * 50, rng):
        assert np.array_equal(apply(frame), frame), "speech above the target is never lowered"


def _segment_real(x: np.ndarray, config: VadConfig) -> tuple[list[tuple[float, float]], float]:
    x = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.int16), x, np.zeros(SAMPLE_RATE, np.int16)])
    x = x[: len(x) // N * N]
    seg = Segmenter(config, FRAME_MS)
    events = []
    for i in range(0, len(x), N):
        events += seg.feed(AudioFrame(0, 0, i, x[i : i + N], 0))
    events += seg.flush()
    return [(e.start, e.end) for e in ends(events)], seg.detector_gain_db


def test_auto_gain_lets_webrtcvad_hear_a_sentence_50_db_quieter_and_changes_nothing_at_normal_level() -> None:
    speech = _espeak_or_skip("I am calling about the bill I got this morning.")
    clean, clean_gain = _segment_real(speech, VadConfig())
    ((start, end),) = clean
    quiet = (speech * 10 ** (-50 / 20)).astype(np.int16)
    missed, _ = _segment_real(quiet, VadConfig())
    assert sum(e - s for s, e in missed) < 0.6 * (end - start), "without the gain most of the sentence is lost"
    on = VadConfig(auto_gain_dbfs=-35.0)
    ((s2, e2),), gain = _segment_real(quiet, on)
    assert s2 == pytest.approx(start, abs=0.1) and e2 == pytest.approx(end, abs=0.1)
    assert 20.0 < gain <= 30.0
    assert _segment_real(speech, on) == (clean, 0.0), "speech at a normal level gets no gain"


def test_auto_gain_does_not_turn_steady_noise_into_speech() -> None:
    from training.augment import make_noise

    rng = np.random.default_rng(1)
    noise = make_noise("pink", 20 * SAMPLE_RATE, rng)
    noise = (noise / np.sqrt(np.mean(noise**2)) * 32768 * 10 ** (-60 / 20)).astype(np.int16)
    assert _segment_real(noise, VadConfig(auto_gain_dbfs=-35.0)) == ([], 0.0)


def test_quiet_speech_gets_a_hint_once_and_normal_speech_steady_noise_or_the_gain_none() -> None:
    speech = _espeak_or_skip("I am calling about the bill I got this morning.")
    pause = np.zeros(SAMPLE_RATE, np.int16)
    rng = np.random.default_rng(2)
    floor = (rng.standard_normal(12 * SAMPLE_RATE) * 32768 * 10 ** (-75 / 20)).astype(np.int16)

    def hint(x: np.ndarray, config: VadConfig) -> float | None:
        x = np.concatenate([x, pause] * 4)[: 12 * SAMPLE_RATE]
        x = (x.astype(np.int32) + floor[: len(x)]).clip(-32768, 32767).astype(np.int16)
        x = x[: len(x) // N * N]
        seg = Segmenter(config, FRAME_MS)
        for i in range(0, len(x), N):
            seg.feed(AudioFrame(0, 0, i, x[i : i + N], 0))
        return seg.quiet_input_dbfs

    quiet = (speech * 10 ** (-40 / 20)).astype(np.int16)
    level = hint(quiet, VadConfig())
    assert level is not None and -60.0 < level < -45.0
    assert hint(speech, VadConfig()) is None
    assert hint(np.zeros_like(speech), VadConfig()) is None, "the floor alone is no speech"
    assert hint(quiet, VadConfig(auto_gain_dbfs=-35.0)) is None, "the gain is on: nothing to hint"


def test_the_quiet_input_bench_runs_on_a_few_clips(tmp_path: Path) -> None:
    from conftest import SHARED_DATA

    from bench import vad_level

    if not all((SHARED_DATA / c / "manifest.csv").is_file() for c in ("ravdess", "tess", "crema_d")):
        pytest.skip(f"needs RAVDESS, TESS and CREMA-D in {SHARED_DATA} (../shared/data); CI has it")
    assert vad_level.main(["--clips", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "vad_level.json").read_text())
    assert result["clips"] == 6 and set(result["levels"]) == {"0", "-12", "-20", "-30"}
    for row in result["levels"].values():
        assert row["-35"]["no_speech"] <= row["off"]["no_speech"]
    assert all(row["off"] == 0 and row["-35"] == 0 for name, row in result["noise"].items() if "steady" in name)
    assert "| -30 dB |" in (tmp_path / "vad_level.md").read_text()
    with pytest.raises(SystemExit):
        vad_level.main(["--gain", "-80", "--out", str(tmp_path)])
