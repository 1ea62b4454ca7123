"""The pipeline: stages on threads joined by bounded queues.

::

    source thread ──frames──▶ segment thread ──segment events──▶ asr thread ──events──▶ output thread
                     (q_frames)                 (q_speech)                    (q_events)

Overload policy, queue by queue (everything is bounded):

- ``q_frames`` (``source.queue_frames``): a *live* source (microphone, WebSocket)
  that finds it full drops the frame; drops are counted and reported in an
  ``error`` event with code ``audio_dropped`` and in ``session.ended``. A file
  or stdin source waits instead: it is read at the pace the pipeline keeps.
- ``q_speech`` (``asr.queue_items`` batches of segment events): for live input,
  speech frames that find it full are dropped and counted the same way;
  utterance boundaries (start, end) are never dropped: the segmenter waits for
  room.
- ``q_events`` (``output.queue_events``): final utterances are never dropped;
  the recognizer waits for room. ``transcript.partial`` events are dropped when
  it is full (a later partial or the final supersedes them).

Control is out of band: stopping sets an event that every thread checks at
least every 100 ms, so no thread waits forever on a queue; every join is
bounded. End of input flows down the queues as a marker so that every
utterance already heard is flushed before the session ends.

Stopping (:meth:`Pipeline.stop`: Ctrl-C, SIGTERM, a server shutting down) has a
deadline, ``flush_timeout`` of :meth:`Pipeline.run` (1.8 s): the source closes,
the open utterances are ended and recognized, and ``session.ended`` follows. A
recognizer still decoding ``flush_timeout - 0.3`` s after the stop is
interrupted (a stream with an ``interrupt()`` method, Whisper's): its utterance
goes out with an empty text and a ``recognizer_failed`` error rather than not
at all. At the deadline whatever was produced is delivered and the session ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import __version__
from .asr import RecognizerBackend, close_backend, create_backend
from .config import PipelineConfig, public_dict
from .errors import InputError, RealtimeSerError, RecognizerError
from .events import EventLog, Sink, round_t, speaker_name
from .frames import AudioFrame, SpeechAudio
from .output import OutputError
from .recognition import RecognitionStage, merge_audio
from .session import SessionEvents, Stats
from .sources import Source
from .vad import Segmenter

__all__ = ["Pipeline", "Stats", "new_session_id"]

log = logging.getLogger(__name__)

_POLL = 0.1  # seconds: how often a waiting thread checks the stop event
_BATCH = 32  # frames the segmenter takes from its queue at once


class _EndOfStream:
    """Marker that travels down the queues after the last item."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _error_code(exc: BaseException) -> str:
    for cls, code in ((InputError, "input_failed"), (RecognizerError, "recognizer_failed"),
                      (OutputError, "output_failed")):
        if isinstance(exc, cls):
            return code
    return "internal"


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]


class Pipeline:
    """One session: a source, per-channel segmenters and recognizers, sinks.

    ``run()`` blocks until the input ends or ``stop()`` is called, flushes every
    utterance already heard, emits ``session.ended`` and returns the stats.
    """

    def __init__(
        self,
        config: PipelineConfig,
        source: Source,
        sinks: list[Sink],
        *,
        backend: RecognizerBackend | None | str = "auto",
        session: str | None = None,
        input_name: str | None = None,
        speakers: list[str] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.config = config
        self.source = source
        self.session = session or new_session_id()
        self.log = EventLog(self.session, sinks)
        self.stats = Stats()
        self._clock = clock
        self._owns_backend = isinstance(backend, str)
        self._backend: RecognizerBackend | None = (
            create_backend(config.asr) if isinstance(backend, str) else backend
        )
        try:
            self._events = SessionEvents(config, self.log, audio_only=self._backend is None, clock=clock,
                                         stats=self.stats)
        except BaseException:
            self.close_backend()
            raise
        self.alerts = self._events.alerts
        self._input_name = input_name or source.name
        self._speakers = speakers
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._q_frames: queue.Queue[AudioFrame | _EndOfStream] = queue.Queue(config.source.queue_frames)
        self._q_speech: queue.Queue[Any] = queue.Queue(config.asr.queue_items)
        self._q_events: queue.Queue[tuple[str, float, dict[str, Any]] | _EndOfStream] = queue.Queue(
            config.output.queue_events
        )
        self._threads: list[threading.Thread] = []
        self._end_reason = "end_of_input"
        self._reported_drops = 0
        # Watchdog for recognizers that cannot time their own calls out (run in this process):
        # when the recognizer thread has been inside one call longer than asr.worker_timeout_s,
        # the session ends with a fatal error instead of hanging.
        self._asr_since: float | None = None
        self._watch_asr = self._backend is not None and not getattr(self._backend, "bounds_its_calls", False)
        self._stopped_at: float | None = None
        self._flush_timeout = 1.8
        self._stage: RecognitionStage | None = None
        self._interrupted = False
        self.backend_running = False
        """True after :meth:`run` when the recognizer it loaded was still decoding at the end."""

    # -- public ---------------------------------------------------------------------

    @property
    def speakers(self) -> list[str]:
        names = [speaker_name(ch) for ch in range(self.source.out_channels)]
        for ch, name in enumerate((self._speakers or [])[: len(names)]):
            names[ch] = name
        return names

    def stop(self) -> None:
        """Stop taking input; what was heard is still flushed, and the session ends within
        ``flush_timeout`` (see the module docstring). Safe from any thread, and from a signal
        handler."""
        if self._end_reason == "end_of_input":
            self._end_reason = "stopped"
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self.source.close()

    def input_lost(self) -> None:
        """The input ended without its end marker (a client went away): everything it delivered
        is still processed, and ``session.ended`` says ``stopped``. Safe from any thread."""
        if self._end_reason == "end_of_input":
            self._end_reason = "stopped"

    def abort(self) -> None:
        """Stop everything now, without flushing."""
        self._stop.set()
        self.source.close()

    def close_backend(self, timeout: float = 2.0) -> bool:
        """Release the recognizer if this pipeline loaded it (``backend="auto"`` or a name);
        False when its threads did not stop within ``timeout``. Called by :meth:`run`."""
        backend, self._backend = self._backend, None
        if not self._owns_backend or backend is None:
            return True
        return close_backend(backend, timeout)

    def run(self, flush_timeout: float = 1.8) -> Stats:
        """Run the session to its end; raise the first fatal error, if any.

        After :meth:`stop` (or a KeyboardInterrupt in this thread) the session ends within
        ``flush_timeout`` seconds, with every utterance already heard."""
        self._flush_timeout = flush_timeout
        self.log.emit(
            "session.started",
            0.0,
            input=self._input_name,
            asr={"backend": self.config.asr.backend, "model": self._backend.model if self._backend else None},
            sample_rate=self.source.sample_rate,
            channels=self.source.channels,
            speakers=self.speakers,
            realtime=bool(self.config.source.realtime or self.source.live),
            config=public_dict(self.config),
            version=__version__,
        )
        self._threads = [
            threading.Thread(target=self._guard(self._source_loop), name="ser-source", daemon=True),
            threading.Thread(target=self._guard(self._segment_loop), name="ser-segment", daemon=True),
            threading.Thread(target=self._guard(self._asr_loop), name="ser-asr", daemon=True),
        ]
        for t in self._threads:
            t.start()
        try:
            try:
                self._output_loop()
            except KeyboardInterrupt:
                log.info("interrupted: flushing what was heard")
                self.stop()
                self._output_loop()
        finally:
            self._stop.set()
            self.source.close()
            # One bound for all the joins and the recognizer's release. After a stop the whole
            # session ends within about flush_timeout + 0.1 s: a decode still running then is
            # left to the caller (``backend_running``).
            if self._stopped_at is not None:
                deadline = max(time.monotonic() + 0.05, self._stopped_at + flush_timeout + 0.1)
            else:
                deadline = time.monotonic() + flush_timeout
            for t in self._threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    log.warning("thread %s did not stop in time", t.name)
            self._events.close()
            self.backend_running = not self.close_backend(timeout=max(0.05, deadline - time.monotonic()))
        if self._failed is not None and not isinstance(self._failed, KeyboardInterrupt):
            raise self._failed
        return self.stats

    # -- threads -----------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported once, then the session ends
                if self._failed is None:
                    self._failed = exc
                if not isinstance(exc, RealtimeSerError):
                    log.exception("%s failed", threading.current_thread().name)
                self._end_reason = "error"
                self.source.close()
                self._put(self._q_events, ("error", 0.0, {"code": _error_code(exc), "message": str(exc),
                                                          "fatal": True}), force=True)
                self._put(self._q_events, _EndOfStream("error"), force=True)

        return run

    def _put(self, q: queue.Queue[Any], item: Any, force: bool = False) -> bool:
        """Blocking put that gives up only when the session is aborted."""
        while True:
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                if self._stop.is_set() and not force:
                    return False
                if self._stop.is_set() and force:
                    try:  # make room: only reached on abort
                        q.get_nowait()
                    except queue.Empty:
                        pass

    def _source_loop(self) -> None:
        live = self.source.live
        for frame in self.source:
            if self._stop.is_set():
                break
            self.stats.frames += 1
            if live:
                try:
                    self._q_frames.put_nowait(frame)
                except queue.Full:
                    self.stats.dropped_frames += 1
            elif not self._put(self._q_frames, frame):
                break
        self._put(self._q_frames, _EndOfStream(self._end_reason), force=True)

    def _segment_loop(self) -> None:
        cfg = self.config
        segmenters = [Segmenter(cfg.vad, cfg.source.frame_ms, ch) for ch in range(self.source.out_channels)]
        timeout = cfg.vad.input_timeout_ms / 1000.0
        live = self.source.live or cfg.source.realtime
        last_input = time.monotonic()
        busy = 0.0
        hinted: set[int] = set()
        while not self._stop.is_set():
            try:
                item = self._q_frames.get(timeout=min(_POLL, timeout) if timeout > 0 else _POLL)
            except queue.Empty:
                # Audio stopped arriving: close open utterances (the VAD must not stay
                # "speaking" forever when a live stream stalls).
                if live and timeout > 0 and time.monotonic() - last_input >= timeout:
                    for seg in segmenters:
                        if seg.in_speech:
                            self._forward(seg.flush("input_timeout", self._clock()), live)
                continue
            # Take whatever else is waiting too: fewer hand-offs between threads. A
            # recognizer that holds the GIL while decoding makes each hand-off costly.
            batch = [item]
            while len(batch) < _BATCH and not isinstance(batch[-1], _EndOfStream):
                try:
                    batch.append(self._q_frames.get_nowait())
                except queue.Empty:
                    break
            events: list[Any] = []
            end = None
            t0 = time.perf_counter()
            for frame in batch:
                if isinstance(frame, _EndOfStream):
                    end = frame
                    break
                events += segmenters[frame.channel].feed(frame, self._clock())
            busy += time.perf_counter() - t0
            for seg in segmenters:
                if seg.quiet_input_dbfs is not None and seg.channel not in hinted:
                    hinted.add(seg.channel)
                    log.warning("channel %d is quiet (speech at about %.0f dBFS): the voice detector may miss some "
                                "of it; raise the input gain, or set vad.auto_gain_dbfs=-35 (README, quiet input)",
                                seg.channel, seg.quiet_input_dbfs)
            last_input = time.monotonic()
            if end is not None:
                for seg in segmenters:
                    events += seg.flush("end_of_input", self._clock())
                self._forward(events, live)
                self._put(self._q_speech, end, force=True)
                break
            self._forward(events, live)
        self.stats.stage_seconds["vad"] += busy
        self.stats.discarded_segments = sum(s.discarded for s in segmenters)

    def _forward(self, events: list[Any], live: bool) -> None:
        """Hand a batch of segment events to the recognizer thread (one queue item)."""
        if not events:
            return
        if live:
            try:
                self._q_speech.put_nowait(events)
                return
            except queue.Full:
                # Drop the audio, keep the utterance boundaries (they wait for room).
                kept = [ev for ev in events if not isinstance(ev, SpeechAudio)]
                self.stats.dropped_speech_frames += len(events) - len(kept)
                events = kept
                if not events:
                    return
        self._put(self._q_speech, events)

    def _asr_loop(self) -> None:
        emotion = self._events.emotion
        # Work ahead of an utterance's end pays only where the hangover is waited in wall time: not
        # for a file read as fast as it decodes (a WebSocket stream or stdin may be live: they do it).
        stage = RecognitionStage(self._backend, self.config.asr, self.speakers, self._clock,
                                 keep_audio=emotion is not None,
                                 encode_ahead=emotion.encoder_ahead(self._backend) if emotion else None,
                                 ahead=not self.source.unpaced)
        self._stage = stage
        if self._interrupted:
            stage.interrupt()
        try:
            while not self._stop.is_set():
                try:
                    item = self._q_speech.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if isinstance(item, _EndOfStream):
                    self._put(self._q_events, item, force=True)
                    break
                self._asr_since = time.monotonic()
                outs = [out for ev in merge_audio(item) for out in stage.feed(ev)]
                self._asr_since = None
                for out in outs:
                    if out[0] == "transcript.partial":
                        try:
                            self._q_events.put_nowait(out)
                        except queue.Full:  # superseded by a later partial or the final
                            self.stats.dropped_partials += 1
                    else:
                        after = self._events.annotate(out)
                        self._put(self._q_events, out, force=True)
                        for extra in after:
                            self._put(self._q_events, extra, force=True)
        finally:
            self.stats.stage_seconds["asr"] += stage.busy_seconds
            stage.close()

    def _output_loop(self) -> None:
        """Runs on the caller's thread: numbers events and hands them to the sinks."""
        while True:
            self._report_drops()
            if self._stopped_at is not None and self._flush_overdue():
                return
            try:
                item = self._q_events.get(timeout=_POLL)
            except queue.Empty:
                if self._stop.is_set():
                    return
                if self._recognizer_hung():
                    return
                continue
            if isinstance(item, _EndOfStream):
                self._finish(item.reason)
                return
            self._deliver(item)

    def _flush_overdue(self) -> bool:
        """After a stop: interrupt a recognizer that is still decoding 0.3 s before the
        deadline; at the deadline, deliver what is there and end the session (True)."""
        assert self._stopped_at is not None
        waited = time.monotonic() - self._stopped_at
        if waited >= self._flush_timeout - 0.3 and not self._interrupted:
            self._interrupted = True
            stage = self._stage
            if stage is not None:
                stage.interrupt()
        if waited < self._flush_timeout:
            return False
        log.warning("flush did not finish within %.1f s of the stop; ending the session", self._flush_timeout)
        self._stop.set()
        while True:
            try:
                item = self._q_events.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _EndOfStream):
                break
            self._deliver(item)
        self._finish("stopped")
        return True

    def _recognizer_hung(self) -> bool:
        """End the session if the in-process recognizer has stopped returning.

        Everything it produced before is delivered first; the stuck call is left behind
        (a thread cannot be interrupted), its stream is not reused, and other sessions,
        which have streams of their own, go on."""
        since, limit = self._asr_since, self.config.asr.worker_timeout_s
        if not self._watch_asr or since is None or time.monotonic() - since <= limit:
            return False
        message = (f"the {self.config.asr.backend} recognizer has not returned for {limit:g} s "
                   f"(asr.worker_timeout_s); the session ends, and what was recognized before was delivered")
        log.error("session %s: %s", self.session, message)
        self._end_reason = "error"
        self._failed = RecognizerError(message)
        self._stop.set()
        self.source.close()
        while True:
            try:
                item = self._q_events.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _EndOfStream):
                self._deliver(item)
        self._deliver(("error", self._events.last_t, {"code": "recognizer_hung", "message": message,
                                                      "fatal": True}))
        self._finish("error")
        return True

    def _deliver(self, item: tuple[str, float, dict[str, Any]]) -> None:
        self._events.deliver(item)

    def _finish(self, reason: str) -> None:
        self._report_drops()
        self.stats.audio_seconds = self.stats.frames * self.config.source.frame_ms / 1000.0 / max(
            1, self.source.out_channels)
        s = self.stats
        self.log.emit(
            "session.ended",
            s.audio_seconds,
            reason=reason if reason in ("end_of_input", "stopped", "error") else "stopped",
            counts={
                "utterances": s.utterances,
                "frames": s.frames,
                "dropped_frames": s.dropped_frames + s.dropped_speech_frames + self.source.dropped_frames,
                "discarded_segments": s.discarded_segments,
                "partials": s.partials,
                "errors": s.errors,
            },
            duration=round_t(s.audio_seconds),
        )

    # -- event helpers -------------------------------------------------------------------

    def _report_drops(self) -> None:
        dropped = self.stats.dropped_frames + self.stats.dropped_speech_frames + self.source.dropped_frames
        if dropped > self._reported_drops:
            new = dropped - self._reported_drops
            self._reported_drops = dropped
            self.stats.errors += 1
            self.log.emit("error", self.stats.frames * self.config.source.frame_ms / 1000.0,
                          code="audio_dropped", fatal=False, count=new,
                          message=f"{new} audio frames dropped: processing fell behind the live input")
