"""The threaded pipeline with a fake recognizer: events, policies, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import validate_stream

from realtime_ser.asr import Transcript, Word
from realtime_ser.config import PipelineConfig, apply_overrides
from realtime_ser.errors import RecognizerError
from realtime_ser.frames import SAMPLE_RATE, AudioFrame
from realtime_ser.pipeline import Pipeline
from realtime_ser.sources import ArraySource

VAD0 = ["vad.detector=webrtc", "vad.aggressiveness=0"]  # a tone is speech to webrtcvad, not to Silero


def voice(seconds: float) -> np.ndarray:
    """A harmonic, voice-like tone that webrtcvad calls speech."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 600, 900), start=1))
    return (x * 6000).astype(np.int16)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


class FakeStream:
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.fed = 0
        self.utterance = 0

    def start(self) -> None:
        self.fed = 0

    def accept(self, samples: np.ndarray) -> None:
        if self.backend.delay:
            time.sleep(self.backend.delay)
        if self.utterance in self.backend.fail_on:
            raise RecognizerError("fake failure")
        self.fed += len(samples)

    def partial(self) -> str:
        return f"partial {self.fed // 1600}"

    def finish(self) -> Transcript:
        n = self.utterance
        if n in self.backend.hang_on:
            self.backend.release.wait()  # a recognizer that never returns (until the test ends)
        self.utterance += 1
        dur = self.fed / SAMPLE_RATE
        return Transcript(f"utterance {n}", (Word("utterance", 0.1, dur / 2, 0.9), Word(str(n), dur / 2, dur, 0.8)),
                          final=True)

    def reset(self) -> None:
        self.utterance += 1
        self.fed = 0


class FakeBackend:
    name = "fake"
    model = "fake-model"

    def __init__(self, delay: float = 0.0, fail_on: tuple[int, ...] = (), hang_on: tuple[int, ...] = ()) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.hang_on = hang_on
        self.release = threading.Event()
        self.streams: list[FakeStream] = []

    def new_stream(self) -> FakeStream:
        s = FakeStream(self)
        self.streams.append(s)
        return s


def run_pipeline(samples: np.ndarray, overrides: list[str] = (), backend: FakeBackend | None = None,
                 live: bool = False) -> tuple[list[dict], Pipeline]:
    # Fakes for one stage: the emotion stage is off here (tests/test_emotion.py runs it).
    cfg = apply_overrides(PipelineConfig(), [*VAD0, "emotion.enabled=false", *overrides])
    events: list[dict] = []
    p = Pipeline(cfg, ArraySource(samples, SAMPLE_RATE, cfg.source, live=live), [events.append],
                 backend=backend or FakeBackend())
    p.run()
    return events, p


def test_events_for_three_utterances_are_valid_and_ordered() -> None:
    x = np.concatenate([quiet(0.5), voice(1.0), quiet(1.0), voice(0.8), quiet(1.0), voice(1.2), quiet(1.0)])
    events, _ = run_pipeline(x)
    validate_stream(events)
    utts = [e for e in events if e["type"] == "utterance"]
    assert [u["text"] for u in utts] == ["utterance 0", "utterance 1", "utterance 2"]
    assert [u["start"] for u in utts] == pytest.approx([0.5, 2.5, 4.3], abs=0.1)
    for u in utts:
        assert all(u["start"] - 0.31 <= w["start"] <= w["end"] <= u["end"] + 0.21 for w in u["words"])
        assert set(u["latency_ms"]) >= {"vad", "queue", "asr", "emit", "total"}
        assert u["emotion"] is None
    started = [e for e in events if e["type"] == "speech.started"]
    partials = [e for e in events if e["type"] == "transcript.partial"]
    assert len(started) == 3 and partials
    # speech.started comes before the partials and the final of its utterance.
    for u in utts:
        mine = [e["seq"] for e in events if e.get("utterance_id") == u["utterance_id"]]
        assert mine == sorted(mine) and events[mine[0]]["type"] == "speech.started"
    assert events[-1]["counts"]["utterances"] == 3


def test_a_recognizer_that_stops_returning_ends_the_session_with_what_was_recognized() -> None:
    x = np.concatenate([quiet(0.3), voice(0.8), quiet(1.0), voice(0.8), quiet(1.0), voice(0.8), quiet(1.0)])
    backend = FakeBackend(hang_on=(1,))
    cfg = apply_overrides(PipelineConfig(), [*VAD0, "emotion.enabled=false", "asr.worker_timeout_s=1"])
    events: list[dict] = []
    p = Pipeline(cfg, ArraySource(x, SAMPLE_RATE, cfg.source), [events.append], backend=backend)
    t0 = time.monotonic()
    try:
        with pytest.raises(RecognizerError, match="has not returned for 1 s"):
            p.run()
        took = time.monotonic() - t0
    finally:
        backend.release.set()
    assert took < 6.0, took
    validate_stream(events)
    utts = [e for e in events if e["type"] == "utterance"]
    assert [u["text"] for u in utts] == ["utterance 0"]  # recognized before the hang: delivered
    fatal = [e for e in events if e["type"] == "error"]
    assert len(fatal) == 1 and fatal[0]["code"] == "recognizer_hung" and fatal[0]["fatal"], fatal
    assert events[-1]["type"] == "session.ended" and events[-1]["reason"] == "error"
    assert events[-2] is fatal[0]


def test_a_backend_that_times_its_own_calls_out_is_not_watched() -> None:
    # Worker processes and whisper bound every call themselves; a slow call there is theirs to judge.
    backend = FakeBackend(delay=0.3)
    backend.bounds_its_calls = True
    events, _ = run_pipeline(np.concatenate([quiet(0.3), voice(1.0), quiet(1.0)]), ["asr.worker_timeout_s=0.1"],
                             backend=backend)
    assert [e["text"] for e in events if e["type"] == "utterance"] == ["utterance 0"]
    assert not [e for e in events if e["type"] == "error"]


def test_partials_are_rate_limited_by_audio_time() -> None:
    events, _ = run_pipeline(np.concatenate([quiet(0.3), voice(3.0), quiet(1.0)]), ["asr.partial_interval_ms=500"])
    partials = [e for e in events if e["type"] == "transcript.partial"]
    assert 3 <= len(partials) <= 8
    ts = [e["t"] for e in partials]
    assert all(b - a >= 0.49 for a, b in zip(ts, ts[1:], strict=False))


def test_recognizer_failure_reports_an_error_and_keeps_the_utterance_and_the_session() -> None:
    x = np.concatenate([quiet(0.3), voice(0.8), quiet(1.0), voice(0.8), quiet(1.0)])
    events, _ = run_pipeline(x, backend=FakeBackend(fail_on=(0,)))
    validate_stream(events)
    errors = [e for e in events if e["type"] == "error"]
    utts = [e for e in events if e["type"] == "utterance"]
    assert len(utts) == 2 and errors and errors[0]["code"] == "recognizer_failed" and not errors[0]["fatal"]
    assert utts[0]["asr"]["error"] and utts[0]["text"] == ""
    assert utts[1]["text"] == "utterance 1"


def test_live_overload_drops_audio_counts_it_and_never_drops_finals() -> None:
    # A recognizer far slower than real time, fed live: audio must be dropped
    # (and reported), the source must never block, and utterances still arrive.
    x = np.concatenate([quiet(0.3), voice(1.5), quiet(1.0), voice(1.5), quiet(1.0)])
    events, p = run_pipeline(x, ["asr.queue_items=10", "source.queue_frames=10", "asr.partials=false"],
                             backend=FakeBackend(delay=0.05), live=True)
    validate_stream(events)
    dropped = [e for e in events if e["type"] == "error" and e["code"] == "audio_dropped"]
    assert dropped and sum(e["count"] for e in dropped) == events[-1]["counts"]["dropped_frames"] > 0
    assert len([e for e in events if e["type"] == "utterance"]) == 2


def test_file_input_is_never_dropped_even_when_recognition_is_slow() -> None:
    x = np.concatenate([quiet(0.3), voice(1.0), quiet(1.0)])
    events, _ = run_pipeline(x, ["asr.queue_items=10", "source.queue_frames=10"], backend=FakeBackend(delay=0.005))
    assert events[-1]["counts"]["dropped_frames"] == 0
    assert len([e for e in events if e["type"] == "utterance"]) == 1


def test_stop_flushes_what_was_heard_and_leaves_no_thread() -> None:
    cfg = apply_overrides(PipelineConfig(), [*VAD0, "source.realtime=true", "emotion.enabled=false"])
    events: list[dict] = []
    x = np.concatenate([quiet(0.3), voice(1.0), quiet(1.0), voice(5.0), quiet(5.0)])
    p = Pipeline(cfg, ArraySource(x, SAMPLE_RATE, cfg.source), [events.append], backend=FakeBackend())
    timer = threading.Timer(3.0, p.stop)  # in the middle of the second utterance
    timer.start()
    t0 = time.monotonic()
    p.run()
    assert time.monotonic() - t0 < 3.0 + 2.0
    validate_stream(events)
    utts = [e for e in events if e["type"] == "utterance"]
    assert len(utts) == 2 and utts[1]["end_reason"] == "end_of_input"
    assert events[-1]["reason"] == "stopped"
    # (the process-wide emotion workers, shared by all sessions, are not the pipeline's)
    shared = ("ser-emotion", "ser-encoder")
    assert not [t for t in threading.enumerate() if t.name.startswith("ser-") and t.name not in shared]


class StallingSource(ArraySource):
    """Live input that delivers speech, then stops delivering (no end of stream) for a while."""

    live = True

    def __init__(self, samples: np.ndarray, stall: float, cfg: PipelineConfig) -> None:
        super().__init__(samples, SAMPLE_RATE, cfg.source, live=True)
        self.stall = stall
        self.stalled_at = 0.0

    def __iter__(self) -> Iterator[AudioFrame]:
        yield from super().__iter__()
        self.stalled_at = time.monotonic()
        self._closed.wait(self.stall)


def test_input_timeout_closes_an_utterance_when_audio_stops_arriving() -> None:
    cfg = apply_overrides(PipelineConfig(), [*VAD0, "vad.input_timeout_ms=400"])
    src = StallingSource(np.concatenate([quiet(0.3), voice(1.0)]), 3.0, cfg)
    seen: list[tuple[float, dict]] = []
    p = Pipeline(cfg, src, [lambda e: seen.append((time.monotonic(), e))], backend=FakeBackend())
    p.run()
    (when, utt), = [(t, e) for t, e in seen if e["type"] == "utterance"]
    assert utt["end_reason"] == "input_timeout"
    # Emitted during the stall, about one timeout after the audio stopped, not at the end.
    assert 0.3 <= when - src.stalled_at <= 1.5


def test_merge_audio_joins_contiguous_frames_of_one_utterance_only() -> None:
    from realtime_ser.frames import SpeechAudio, SpeechEnd
    from realtime_ser.recognition import merge_audio

    def audio(ch: int, utt: int, i: int) -> SpeechAudio:
        return SpeechAudio(ch, utt, AudioFrame(i, ch, i * 480, np.full(480, i, dtype=np.int16), 1000 + i))

    end = SpeechEnd(0, 0, 0.0, 0.09, 1002, 1003, "silence")
    events = [audio(0, 0, 0), audio(0, 0, 1), audio(0, 0, 2), end, audio(0, 1, 3), audio(1, 0, 3), audio(0, 1, 5)]
    merged = merge_audio(events)
    assert [type(e).__name__ for e in merged] == ["SpeechAudio", "SpeechEnd", "SpeechAudio", "SpeechAudio",
                                                  "SpeechAudio"]
    first = merged[0]
    assert isinstance(first, SpeechAudio)
    assert first.frame.offset == 0 and len(first.frame.samples) == 1440 and first.frame.capture_ns == 1002
    assert list(first.frame.samples[::480]) == [0, 1, 2]


def test_encoder_output_of_the_recognizer_reaches_the_emotion_stage_but_never_a_subscriber() -> None:
    """A transcript that carries the speech encoder's output puts it into the utterance payload
    (``_speech``, for the emotion stage); publishing removes it, with ``_audio``."""
    from realtime_ser.config import AsrConfig
    from realtime_ser.frames import SpeechAudio, SpeechEnd, SpeechStart
    from realtime_ser.recognition import AUDIO, SPEECH, RecognitionStage, finalize_latency

    marker = object()

    class Carrying(FakeStream):
        def finish(self) -> Transcript:
            t = super().finish()
            return Transcript(t.text, t.words, True, speech=marker)  # type: ignore[arg-type]

    class CarryingBackend(FakeBackend):
        def new_stream(self) -> FakeStream:
            return Carrying(self)

    stage = RecognitionStage(CarryingBackend(), AsrConfig(backend="whisper"), ["ch0"], keep_audio=True)
    samples = voice(0.6)
    out = stage.feed(SpeechStart(0, 0, 0.0, 0.0, 1, 1))
    out += stage.feed(SpeechAudio(0, 0, AudioFrame(0, 0, 0, samples, 2)))
    out += stage.feed(SpeechEnd(0, 0, 0.0, 0.6, 3, 4, "silence"))
    (fields,) = [f for kind, _, f in out if kind == "utterance"]
    assert fields[SPEECH] is marker and fields[AUDIO].shape == samples.shape
    finalize_latency(fields, 10)
    assert SPEECH not in fields and AUDIO not in fields and fields["text"] == "utterance 0"
    # Through the pipeline (emotion off): no private field is ever published.
    x = np.concatenate([quiet(0.5), voice(1.0), quiet(1.0)])
    events, _ = run_pipeline(x, backend=CarryingBackend())
    validate_stream(events)
    (u,) = [e for e in events if e["type"] == "utterance"]
    assert not [k for k in u if k.startswith("_")]


def test_an_encoder_pass_started_at_the_final_pause_goes_with_the_utterance_and_others_are_void() -> None:
    """At each pause the stage starts a pass on the audio so far; speech that goes on cancels it, and
    the pass of the pause that ended the utterance (on exactly its audio) travels in ``_speech_ahead``."""
    from concurrent.futures import Future

    from realtime_ser.config import AsrConfig
    from realtime_ser.frames import SpeechAudio, SpeechEnd, SpeechPause, SpeechStart
    from realtime_ser.recognition import AUDIO, SPEECH_AHEAD, RecognitionStage, finalize_latency

    started: list[tuple[np.ndarray, Future]] = []

    def ahead(samples: np.ndarray) -> Future:
        f: Future = Future()
        started.append((samples, f))
        return f

    stage = RecognitionStage(FakeBackend(), AsrConfig(backend="fake"), ["ch0"], keep_audio=True,
                             encode_ahead=ahead)
    a, b = voice(0.6), voice(0.3)
    out = stage.feed(SpeechStart(0, 0, 0.0, 0.0, 1, 1))
    out += stage.feed(SpeechAudio(0, 0, AudioFrame(0, 0, 0, a, 2)))
    out += stage.feed(SpeechPause(0, 0, 0.6))
    out += stage.feed(SpeechAudio(0, 0, AudioFrame(1, 0, len(a), b, 3)))  # the speaker goes on
    out += stage.feed(SpeechPause(0, 0, 0.9))
    out += stage.feed(SpeechEnd(0, 0, 0.0, 0.9, 3, 4, "silence"))
    (fields,) = [f for kind, _, f in out if kind == "utterance"]
    (first, void), (whole, used) = started
    assert void.cancelled() and len(first) == len(a)
    assert fields[SPEECH_AHEAD] is used and not used.cancelled()
    assert np.array_equal(whole, fields[AUDIO]), "the pass ahead saw exactly the utterance's audio"
    assert stage.ahead == {"started": 2, "used": 1}
    finalize_latency(fields, 10)
    assert SPEECH_AHEAD not in fields and used.cancelled(), "a pass nobody took is cancelled, never published"
    # Without the emotion stage's audio nothing is started.
    bare = RecognitionStage(FakeBackend(), AsrConfig(backend="fake"), ["ch0"], keep_audio=False, encode_ahead=ahead)
    bare.feed(SpeechStart(0, 0, 0.0, 0.0, 1, 1))
    bare.feed(SpeechAudio(0, 0, AudioFrame(0, 0, 0, a, 2)))
    bare.feed(SpeechPause(0, 0, 0.6))
    assert len(started) == 2


def test_a_pause_asks_a_recognizer_that_can_decode_ahead_to_do_so() -> None:
    from realtime_ser.config import AsrConfig
    from realtime_ser.frames import SpeechAudio, SpeechEnd, SpeechPause, SpeechStart
    from realtime_ser.recognition import RecognitionStage

    class Ahead(FakeStream):
        paused = 0

        def pause(self) -> None:
            Ahead.paused += 1

    class AheadBackend(FakeBackend):
        def new_stream(self) -> FakeStream:
            return Ahead(self)

    stage = RecognitionStage(AheadBackend(), AsrConfig(backend="fake"), ["ch0"])
    stage.feed(SpeechStart(0, 0, 0.0, 0.0, 1, 1))
    stage.feed(SpeechAudio(0, 0, AudioFrame(0, 0, 0, voice(0.6), 2)))
    stage.feed(SpeechPause(0, 0, 0.6))
    out = stage.feed(SpeechEnd(0, 0, 0.0, 0.6, 3, 4, "silence"))
    assert Ahead.paused == 1 and [kind for kind, _, _ in out] == ["utterance"]
    # A recognizer without pause() is not asked (FakeStream has none).
    plain = RecognitionStage(FakeBackend(), AsrConfig(backend="fake"), ["ch0"])
    plain.feed(SpeechStart(0, 0, 0.0, 0.0, 1, 1))
    plain.feed(SpeechPause(0, 0, 0.6))
    # Through the pipeline: a stream pushed in (as the server's) works ahead even when it comes
    # faster than real time; a file read at full speed does not, paced or live it does.
    from realtime_ser.sources import PushSource

    x = np.concatenate([quiet(0.5), voice(1.0), quiet(1.0)])
    cfg = apply_overrides(PipelineConfig(), [*VAD0, "emotion.enabled=false"])
    push = PushSource(cfg.source, SAMPLE_RATE, 1, 10.0)
    assert push.try_push(x.astype(np.int16).tobytes())
    push.end()
    counts = []
    for source in (push, ArraySource(x, SAMPLE_RATE, cfg.source), ArraySource(x, SAMPLE_RATE, cfg.source, live=True)):
        Ahead.paused = 0
        Pipeline(cfg, source, [lambda e: None], backend=AheadBackend()).run()
        counts.append(Ahead.paused)
    assert counts == [1, 0, 1]
