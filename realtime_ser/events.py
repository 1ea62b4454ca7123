"""Events v1: the JSON objects realtime-ser emits, and the per-session log
that numbers them.

The contract is ``realtime_ser/schema/events-v1.schema.json``; this module
builds events that match it. Every event has ``v`` (schema version),
``type``, ``session``, ``seq`` (gapless per session, from 0) and ``t``
(seconds of stream time).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1

EVENT_TYPES = (
    "session.started",
    "speech.started",
    "transcript.partial",
    "utterance",
    "emotion.revised",
    "alert",
    "error",
    "session.ended",
)

Event = dict[str, Any]
Sink = Callable[[Event], None]


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of events v1."""
    text = resources.files("realtime_ser").joinpath("schema/events-v1.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def speaker_name(channel: int) -> str:
    return f"ch{channel}"


def round_t(seconds: float) -> float:
    return round(seconds, 3)


def round_ms(ms: float) -> float:
    return round(ms, 2)


class EventLog:
    """Numbers the events of one session and hands them to its sinks.

    Thread-safe: numbering and delivery happen under one lock, so every sink
    sees every event exactly once and in ``seq`` order.
    """

    def __init__(self, session: str, sinks: list[Sink] | None = None) -> None:
        self.session = session
        self._sinks: list[Sink] = list(sinks or [])
        self._seq = 0
        self._lock = threading.Lock()

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    @property
    def next_seq(self) -> int:
        return self._seq

    def emit(self, type_: str, t: float, **fields: Any) -> Event:
        """Build, number and deliver one event; return it."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        with self._lock:
            event: Event = {"v": SCHEMA_VERSION, "type": type_, "session": self.session, "seq": self._seq,
                            "t": round_t(t)}
            event.update(fields)
            self._seq += 1
            for sink in self._sinks:
                sink(event)
        return event
