"""The recognition stage: segment events in, event payloads out.

Synchronous stage logic (no threads, no queues): :meth:`RecognitionStage.feed`
takes the segmenter's events for any channel of one session and returns the
events they cause, as ``(type, t, fields)`` tuples ready for an
:class:`~realtime_ser.events.EventLog`. Each channel has its own recognizer
stream; a recognizer failure becomes an ``error`` event and an utterance with
an empty text, never a lost utterance. The pipeline runs this on its
recognizer thread; the server runs it for vosk-server compatible connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .asr import RecognizerBackend, RecognizerOptions, StreamRecognizer
from .config import AsrConfig
from .errors import RecognizerError
from .events import round_ms, round_t
from .frames import (
    SAMPLE_RATE,
    AudioFrame,
    SegmentEvent,
    SpeechAudio,
    SpeechDiscarded,
    SpeechEnd,
    SpeechPause,
    SpeechStart,
)

Out = tuple[str, float, dict[str, Any]]

# Private fields of an utterance payload that the output stage turns into
# latency figures and removes before the event is published.
END_CAPTURE_NS = "_end_capture_ns"
QUEUED_NS = "_queued_ns"
AUDIO = "_audio"
"""Private utterance field: the utterance's int16 samples, for the emotion stage (never emitted)."""
SPEECH = "_speech"
"""Private utterance field: the recognizer's speech-encoder output of the utterance's audio
(:class:`~realtime_ser.features.speech.EncodedUtterance`), when it has one, so that the emotion
stage need not encode the audio again (never emitted)."""
SPEECH_AHEAD = "_speech_ahead"
"""Private utterance field: a future of the speech encoder's output of exactly the utterance's audio,
started during the pause that turned out to be its end (``encode_ahead``; never emitted)."""
ALTERNATIVES = "_alternatives"
"""Private utterance field: the n best transcripts, when asked for (the vosk-server protocol's
``max_alternatives``; never emitted): ``[{"text", "confidence", "words": [...]}]``, best first."""


@dataclass
class _Channel:
    stream: StreamRecognizer | None
    utterance: str = ""
    start: float = 0.0
    audio_start: float = 0.0
    fed: int = 0
    partial_at: int = 0
    partial_text: str = ""
    failed: str | None = None
    audio: list[np.ndarray] | None = None
    ahead: Future[Any] | None = None
    """The encoder pass started at the utterance's latest pause, while no audio has come since."""

    def void_ahead(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()
            self.ahead = None


class RecognitionStage:
    """Per-session recognition of the utterances the segmenter cuts."""

    def __init__(
        self,
        backend: RecognizerBackend | None,
        config: AsrConfig,
        speakers: Sequence[str],
        clock: Callable[[], int] = time.monotonic_ns,
        keep_audio: bool = False,
        options: RecognizerOptions | None = None,
        encode_ahead: Callable[[np.ndarray], Future[Any] | None] | None = None,
        ahead: bool = True,
    ) -> None:
        self.backend = backend
        self.keep_audio = keep_audio
        self.decode_ahead = ahead
        """Whether a pause asks the recognizer to decode ahead (when it can: Whisper's ``pause()``).
        Off for stored audio read faster than real time, where nothing waits for the hangover and a
        decode voided by speech that goes on is pure waste."""
        self.encode_ahead = encode_ahead if keep_audio and ahead else None
        """Starts the emotion model's speech encoder on an utterance's audio at a pause
        (:meth:`~realtime_ser.emotion.service.EmotionService.encode_ahead`), so that its pass is
        done, or nearly, when the hangover ends the utterance; None: no such pass."""
        self.ahead = {"started": 0, "used": 0}
        """Encoder passes started at pauses, and those whose utterance ended there."""
        self.options = options or RecognizerOptions()
        self.warnings: list[str] = []
        """What the recognizer cannot do of ``options`` (one line each, no repeats)."""
        self.config = config
        self.speakers = list(speakers)
        self._clock = clock
        self._channels: dict[int, _Channel] = {}
        self._interval = config.partial_interval_ms * SAMPLE_RATE // 1000
        self.busy_seconds = 0.0
        # Open every channel's recognizer now, not at its first utterance: opening
        # one may take a while (a worker process), and nobody is waiting yet.
        for ch in range(len(self.speakers)):
            self._channel(ch)

    def speaker(self, channel: int) -> str:
        return self.speakers[channel] if channel < len(self.speakers) else f"ch{channel}"

    def _channel(self, ch: int) -> _Channel:
        state = self._channels.get(ch)
        if state is None:
            state = _Channel(self.backend.new_stream() if self.backend is not None else None)
            self._channels[ch] = state
            if not self.options.default:
                self._configure(state.stream)
        return state

    def _configure(self, stream: StreamRecognizer | None) -> None:
        if stream is None:
            found = ["max_alternatives and phrase_list are ignored: recognition is off (asr none)"]
        else:
            configure = getattr(stream, "configure", None)
            if configure is None:
                found = [f"max_alternatives and phrase_list are ignored: the {self.config.backend} recognizer "
                         f"takes no options"]
            else:
                try:
                    found = list(configure(self.options))
                except RecognizerError as exc:
                    found = [f"max_alternatives and phrase_list are ignored: {exc}"]
        for line in found:
            if line not in self.warnings:
                self.warnings.append(line)

    def feed(self, item: SegmentEvent) -> list[Out]:
        ch = item.channel
        state = self._channel(ch)
        rec = state.stream
        out: list[Out] = []
        if isinstance(item, SpeechStart):
            state.utterance = f"{self.speaker(ch)}-{item.utterance_index}"
            state.start, state.audio_start = item.start, item.audio_start
            state.fed = state.partial_at = 0
            state.partial_text = ""
            state.failed = None
            state.audio = [] if self.keep_audio else None
            state.void_ahead()
            if rec is not None:
                try:
                    rec.start()
                except RecognizerError as exc:
                    state.failed = str(exc)
                    out.append(self._error(str(exc), item.start, ch))
            out.append(("speech.started", item.start, {
                "speaker": self.speaker(ch), "channel": ch, "utterance_id": state.utterance,
                "start": round_t(item.start)}))
        elif isinstance(item, SpeechAudio):
            state.void_ahead()  # the speaker went on: the pass ahead saw less than the utterance
            state.fed += len(item.frame.samples)
            if state.audio is not None:
                state.audio.append(item.frame.samples)
            if rec is None or state.failed is not None:
                return out
            t0 = time.perf_counter()
            try:
                rec.accept(item.frame.samples)
            except RecognizerError as exc:
                state.failed = str(exc)
                out.append(self._error(str(exc), item.frame.end, ch))
                return out
            if self.config.partials and self._interval > 0 and state.fed - state.partial_at >= self._interval:
                state.partial_at = state.fed
                text = rec.partial()
                if text and text != state.partial_text:
                    state.partial_text = text
                    out.append(("transcript.partial", item.frame.end, {
                        "speaker": self.speaker(ch), "channel": ch, "utterance_id": state.utterance,
                        "start": round_t(state.start), "text": text}))
            self.busy_seconds += time.perf_counter() - t0
        elif isinstance(item, SpeechPause):
            pause = getattr(rec, "pause", None) if self.decode_ahead else None  # e.g. Whisper's
            if pause is not None and state.failed is None:
                try:
                    pause()
                except RecognizerError:
                    pass  # the final decode after the end tries again and reports what fails
            state.void_ahead()
            if self.encode_ahead is not None and state.audio:
                state.ahead = self.encode_ahead(np.concatenate(state.audio))
                self.ahead["started"] += state.ahead is not None
        elif isinstance(item, SpeechEnd):
            out.extend(self._finish(item, state))
        elif isinstance(item, SpeechDiscarded):
            state.void_ahead()
            if rec is not None:
                rec.reset()
        return out

    def _finish(self, item: SpeechEnd, state: _Channel) -> list[Out]:
        ch, rec = item.channel, state.stream
        out: list[Out] = []
        taken_ns = self._clock()
        text, words, error = "", [], state.failed
        speech = None
        alternatives: list[dict[str, Any]] = []
        base = state.audio_start

        def timed(ws: Sequence[Any]) -> list[dict[str, Any]]:
            return [{"word": w.word, "start": round_t(base + w.start), "end": round_t(base + w.end),
                     "conf": round(w.conf, 4)} for w in ws]

        if rec is not None and error is None:
            try:
                result = rec.finish()
                text = result.text
                speech = result.speech
                words = timed(result.words)
                alternatives = [{"text": a.text, "confidence": a.confidence, "words": timed(a.words)}
                                for a in result.alternatives]
            except RecognizerError as exc:
                error = str(exc)
                out.append(self._error(error, item.end, ch))
                rec.reset()
        elif rec is not None:
            rec.reset()
        state.failed = None
        done_ns = self._clock()
        self.busy_seconds += (done_ns - taken_ns) / 1e9
        asr: dict[str, Any] = {"backend": self.config.backend,
                               "model": self.backend.model if self.backend is not None else None}
        if error:
            asr["error"] = error
        out.append(("utterance", item.end, {
            "utterance_id": f"{self.speaker(ch)}-{item.utterance_index}",
            "speaker": self.speaker(ch),
            "channel": ch,
            "start": round_t(item.start),
            "end": round_t(item.end),
            "text": text,
            "words": words,
            "emotion": None,
            "end_reason": item.reason,
            "asr": asr,
            "latency_ms": {
                "vad": round_ms(max(0, item.decided_ns - item.end_capture_ns) / 1e6),
                "queue": round_ms(max(0, taken_ns - item.decided_ns) / 1e6),
                "asr": round_ms((done_ns - taken_ns) / 1e6),
            },
            END_CAPTURE_NS: item.end_capture_ns,
            QUEUED_NS: done_ns,
        }))
        if self.options.max_alternatives:
            if not alternatives:  # a recognizer without an n-best list: its one transcript
                conf = sum(w["conf"] for w in words) / len(words) if words else 0.0
                alternatives = [{"text": text, "confidence": round(conf, 4), "words": words}]
            out[-1][2][ALTERNATIVES] = alternatives[: self.options.max_alternatives]
        if state.audio is not None:
            out[-1][2][AUDIO] = np.concatenate(state.audio) if state.audio else np.zeros(0, np.int16)
            state.audio = None
        if speech is not None:
            out[-1][2][SPEECH] = speech
            state.void_ahead()
        elif state.ahead is not None:
            out[-1][2][SPEECH_AHEAD] = state.ahead
            self.ahead["used"] += 1
            state.ahead = None
        return out

    def _error(self, message: str, t: float, ch: int) -> Out:
        return ("error", t, {"code": "recognizer_failed", "message": message, "fatal": False,
                             "speaker": self.speaker(ch)})

    def interrupt(self) -> None:
        """The session is stopping and cannot wait: a stream that is decoding gives up
        (its utterance goes out with an empty text and an error). Safe from any thread:
        it only tells the streams that have an ``interrupt()`` method."""
        for state in list(self._channels.values()):
            interrupt = getattr(state.stream, "interrupt", None)
            if interrupt is not None:
                interrupt()

    def close(self) -> None:
        """Release every recognizer stream (the backend may reuse them)."""
        for state in self._channels.values():
            state.void_ahead()
            if state.stream is not None:
                state.stream.reset()
                close = getattr(state.stream, "close", None)
                if close is not None:
                    close()
        self._channels.clear()


def merge_audio(events: list[SegmentEvent]) -> list[SegmentEvent]:
    """Join runs of consecutive audio frames of one utterance into one frame.

    The recognizer then gets one call per run instead of one per frame: the
    same audio, fewer calls (each of which may hold the GIL).
    """
    out: list[SegmentEvent] = []
    run: list[SpeechAudio] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first, last = run[0].frame, run[-1].frame
            samples = np.concatenate([a.frame.samples for a in run])
            frame = AudioFrame(first.seq, first.channel, first.offset, samples, last.capture_ns)
            out.append(SpeechAudio(first.channel, run[0].utterance_index, frame))
        run.clear()

    for ev in events:
        if isinstance(ev, SpeechAudio) and (not run or (
                run[-1].channel == ev.channel and run[-1].utterance_index == ev.utterance_index
                and run[-1].frame.end_offset == ev.frame.offset)):
            run.append(ev)
            continue
        flush()
        if isinstance(ev, SpeechAudio):
            run.append(ev)
        else:
            out.append(ev)
    flush()
    return out


def finalize_latency(fields: dict[str, Any], now_ns: int) -> None:
    """Fill ``emit`` and ``total`` of an utterance payload at the moment it is published, and
    remove its private fields (what no stage took of ``_audio`` and ``_speech`` is dropped here)."""
    end_capture = fields.pop(END_CAPTURE_NS)
    queued = fields.pop(QUEUED_NS)
    fields.pop(AUDIO, None)
    fields.pop(SPEECH, None)
    ahead = fields.pop(SPEECH_AHEAD, None)
    if ahead is not None:
        ahead.cancel()
    fields.pop(ALTERNATIVES, None)
    fields["latency_ms"]["emit"] = round_ms(max(0, now_ns - queued) / 1e6)
    fields["latency_ms"]["total"] = round_ms(max(0, now_ns - end_capture) / 1e6)
