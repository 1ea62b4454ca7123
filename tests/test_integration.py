"""The real pipeline (webrtcvad + pocketsphinx) on real speech from ../shared/data."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import parse_jsonl, ravdess_dir, run_cli, utterances, validate_stream
from speech import wer

from realtime_ser.asr import create_backend
from realtime_ser.config import PipelineConfig, apply_overrides
from realtime_ser.pipeline import Pipeline
from realtime_ser.sources import ArraySource, FileSource

pytestmark = pytest.mark.shared_data

# One actor, every one of their 60 clips. Other actors are reported in the README.
ACTOR = os.environ.get("REALTIME_SER_TEST_ACTOR", "Actor_19")


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    return create_backend(PipelineConfig().asr)


def run(source_cfg_overrides: list[str], make_source, backend):  # type: ignore[no-untyped-def]
    cfg = apply_overrides(PipelineConfig(), source_cfg_overrides)
    events: list[dict] = []
    Pipeline(cfg, make_source(cfg), [events.append], backend=backend).run()
    validate_stream(events)
    return events


def manifest_rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_every_clip_of_an_actor_gives_one_utterance_with_text(backend) -> None:  # type: ignore[no-untyped-def]
    root = ravdess_dir()
    rows = manifest_rows(root)
    clips = sorted((root / ACTOR).glob("*.flac"))
    assert len(clips) == 60
    with_text, wers = 0, []
    for clip in clips:
        events = run(["source.realtime=false"], lambda cfg, c=clip: FileSource(c, cfg.source), backend)
        utts = utterances(events)
        assert len(utts) == 1, f"{clip.name}: {[(u['start'], u['end'], u['text']) for u in utts]}"
        u = utts[0]
        assert u["latency_ms"]["total"] > 0 and u["latency_ms"]["asr"] > 0
        with_text += bool(u["text"].strip())
        wers.append(wer(rows[f"{ACTOR}/{clip.name}"]["transcript"], u["text"]))
    print(f"{ACTOR}: {with_text}/60 with text, mean WER {np.mean(wers):.3f}")
    assert with_text >= 0.9 * len(clips)


def test_cli_on_a_clip_prints_schema_valid_jsonl() -> None:
    clip = sorted((ravdess_dir() / ACTOR).glob("*.flac"))[7]
    proc = run_cli(["run", "--input", str(clip), "--fast", "--jsonl", "-"])
    assert proc.returncode == 0, proc.stderr.decode()
    events = parse_jsonl(proc.stdout)
    validate_stream(events)
    (u,) = utterances(events)
    assert u["text"] and u["words"] and u["latency_ms"]["total"] > 0


def speech_span(x: np.ndarray, rate: int = 16000) -> tuple[int, int]:
    """First and last sample of speech by an energy threshold independent of webrtcvad:
    10 ms frames whose RMS is within 35 dB of the loudest frame."""
    n = rate // 100
    frames = x[: len(x) // n * n].astype(np.float64).reshape(-1, n)
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-9)
    loud = np.nonzero(db > db.max() - 35)[0]
    return loud[0] * n, (loud[-1] + 1) * n


def ten_clip_stream(root: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    clips = sorted((root / "Actor_02").glob("*.flac"))[::6][:10]
    parts, truth, pos = [np.zeros(16000, dtype=np.int16)], [], 16000
    for clip in clips:
        x, rate = sf.read(clip, dtype="int16")
        assert rate == 16000
        a, b = speech_span(x)
        speech = x[a:b]
        truth.append((pos / 16000, (pos + len(speech)) / 16000))
        parts += [speech, np.zeros(16000, dtype=np.int16)]
        pos += len(speech) + 16000
    return np.concatenate(parts), truth


def test_ten_clips_with_one_second_gaps_fast_and_realtime(backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, truth = ten_clip_stream(ravdess_dir())
    path = tmp_path / "stream.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    fast = utterances(run(["source.realtime=false"], lambda cfg: FileSource(path, cfg.source), backend))
    assert len(fast) == 10, [(u["start"], u["end"], u["text"]) for u in fast]
    for u, (start, end) in zip(fast, truth, strict=True):
        assert abs(u["start"] - start) <= 0.2, (u["start"], start)
        assert abs(u["end"] - end) <= 0.2, (u["end"], end)
    live = utterances(run(["source.realtime=true"], lambda cfg: FileSource(path, cfg.source), backend))
    key = [(u["start"], u["end"], u["text"]) for u in fast]
    assert [(u["start"], u["end"], u["text"]) for u in live] == key
    # Paced at the speed of speech, the event follows the end of speech by about the hangover.
    hangover = PipelineConfig().vad.hangover_ms
    # A sanity bound only: latency is measured by bench/latency.py, not by tests.
    for u in live:
        assert u["latency_ms"]["vad"] >= hangover - 40
        assert u["latency_ms"]["total"] < hangover + 3000


def test_stereo_call_is_split_into_two_speakers_in_time_order(backend) -> None:  # type: ignore[no-untyped-def]
    root = ravdess_dir()
    a, _ = sf.read(sorted((root / "Actor_01").glob("*.flac"))[10], dtype="int16")
    b, _ = sf.read(sorted((root / "Actor_04").glob("*.flac"))[20], dtype="int16")
    c, _ = sf.read(sorted((root / "Actor_01").glob("*.flac"))[30], dtype="int16")
    turns = [(0, a), (1, b), (0, c)]
    left, right, truth = [], [], []
    for ch, clip in turns:
        s, e = speech_span(clip)
        seg = clip[s:e]
        start = sum(map(len, left)) / 16000 + 0.5
        truth.append((ch, start))
        pad = np.zeros(8000, dtype=np.int16)
        (left if ch == 0 else right).extend([pad, seg, pad])
        (right if ch == 0 else left).extend([pad, np.zeros(len(seg), dtype=np.int16), pad])
    stereo = np.stack([np.concatenate(left), np.concatenate(right)], axis=1)
    events = run(["source.split_channels=true"], lambda cfg: ArraySource(stereo, 16000, cfg.source), backend)
    assert events[0]["speakers"] == ["ch0", "ch1"]
    utts = utterances(events)
    assert [(u["speaker"], u["channel"]) for u in utts] == [("ch0", 0), ("ch1", 1), ("ch0", 0)]
    assert [u["start"] for u in utts] == sorted(u["start"] for u in utts)
    for u, (_, start) in zip(utts, truth, strict=True):
        assert abs(u["start"] - start) <= 0.2 and u["text"]


def test_a_stream_cut_mid_utterance_still_gives_that_utterance() -> None:
    clip = sorted((ravdess_dir() / ACTOR).glob("*.flac"))[3]
    x, _ = sf.read(clip, dtype="int16")
    s, e = speech_span(x)
    raw = x[: (s + e) // 2].astype("<i2").tobytes()  # stops in the middle of the sentence
    proc = run_cli(["run", "--input", "-", "--rate", "16000", "--jsonl", "-"], input=raw)
    assert proc.returncode == 0, proc.stderr.decode()
    events = parse_jsonl(proc.stdout)
    validate_stream(events)
    (u,) = utterances(events)
    assert u["end_reason"] == "end_of_input" and u["text"]
