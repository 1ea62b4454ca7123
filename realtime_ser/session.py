"""What follows recognition in every session: emotion, numbering, alerts, counts.

A session's recognized events (``(type, t, fields)`` from
:class:`~realtime_ser.recognition.RecognitionStage`) go through the same two steps
whatever carries the audio (the threaded :class:`~realtime_ser.pipeline.Pipeline`
of ``run`` and ``/ingest``, or the one-chunk-at-a-time vosk-server protocol):

- :meth:`SessionEvents.annotate` adds the emotion to an utterance and returns
  the events that follow it (``emotion.revised``, or an ``error`` when scoring
  failed). It blocks for the emotion model, so it runs where recognition runs,
  never on an event loop.
- :meth:`SessionEvents.deliver` finishes the latency figures, counts the event,
  numbers it in the session's :class:`~realtime_ser.events.EventLog` (every sink
  and subscriber gets it) and emits the ``alert`` events it triggers.

Plain synchronous logic: no threads, no queues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .alerts import AlertTracker
from .config import PipelineConfig
from .emotion.stage import EmotionStage
from .events import EventLog
from .recognition import finalize_latency

log = logging.getLogger(__name__)

Out = tuple[str, float, dict[str, Any]]


@dataclass
class Stats:
    frames: int = 0
    dropped_frames: int = 0
    dropped_speech_frames: int = 0
    discarded_segments: int = 0
    utterances: int = 0
    partials: int = 0
    dropped_partials: int = 0
    errors: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"vad": 0.0, "asr": 0.0})
    audio_seconds: float = 0.0


class SessionEvents:
    """The stages after recognition for one session (see the module docstring)."""

    def __init__(self, config: PipelineConfig, log: EventLog, *, audio_only: bool,
                 clock: Callable[[], int] = time.monotonic_ns, stats: Stats | None = None) -> None:
        self.config = config
        self.log = log
        self.stats = stats if stats is not None else Stats()
        self.alerts = AlertTracker(config.alerts)
        self._clock = clock
        self.last_t = 0.0
        self.emotion: EmotionStage | None = None
        if config.emotion.enabled:
            # Loaded now: a missing or mismatched model is a startup error, not a silent null.
            self.emotion = EmotionStage(config.emotion, audio_only=audio_only)

    def annotate(self, out: Out) -> list[Out]:
        """Add the emotion to an utterance; the events to send after it (``emotion.revised``
        for earlier turns, or an ``error`` when scoring failed)."""
        if out[0] != "utterance" or self.emotion is None:
            return []
        t0 = time.perf_counter()
        message = self.emotion.annotate(out[2])
        seconds = time.perf_counter() - t0
        self.stats.stage_seconds["emotion"] = self.stats.stage_seconds.get("emotion", 0.0) + seconds
        if message is None:
            return [("emotion.revised", out[1], fields) for fields in self.emotion.revisions]
        log.warning("%s", message)
        return [("error", out[1], {"code": "emotion_failed", "message": message, "fatal": False,
                                   "speaker": out[2].get("speaker")})]

    def deliver(self, item: Out) -> dict[str, Any]:
        """Number and hand out one event (and the alerts it triggers); return the event."""
        type_, t, fields = item
        self.last_t = max(self.last_t, t)
        if type_ == "utterance":
            finalize_latency(fields, self._clock())
            self.stats.utterances += 1
        elif type_ == "transcript.partial":
            self.stats.partials += 1
        elif type_ == "error":
            self.stats.errors += 1
        event = self.log.emit(type_, t, **fields)
        for alert in self.alerts.observe(event):  # same log: every sink and subscriber gets them
            self.log.emit("alert", **alert)
        return event

    def close(self) -> None:
        if self.emotion is not None:
            self.emotion.close()
