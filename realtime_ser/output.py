"""Event sinks: JSON lines and a readable terminal view."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from .errors import RealtimeSerError
from .events import Event


class OutputError(RealtimeSerError):
    """Events could not be written (disk full, closed pipe)."""


class JsonlSink:
    """Writes each event as one JSON line and flushes it at once."""

    def __init__(self, target: str) -> None:
        self.target = target
        if target == "-":
            self._f: IO[str] = sys.stdout
            self._owned = False
        else:
            try:
                self._f = open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise OutputError(f"cannot open {target} for writing: {exc.strerror or exc}") from None
            self._owned = True

    def __call__(self, event: Event) -> None:
        try:
            self._f.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._f.flush()
        except BrokenPipeError:
            raise OutputError("the output pipe was closed") from None
        except OSError as exc:
            raise OutputError(f"cannot write events to {self.target}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._owned:
            self._f.close()


class TerminalView:
    """One readable line per utterance; the partial transcript on a status line."""

    def __init__(self, stream: IO[str] | None = None, partials: bool = True) -> None:
        self._out = stream or sys.stdout
        self._partials = partials and self._out.isatty()
        self._status = False
        self._realtime = False

    def _clear_status(self) -> None:
        if self._status:
            self._out.write("\r\033[K")
            self._status = False

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        out = self._out
        if kind == "session.started":
            self._realtime = bool(event.get("realtime"))
            asr = event["asr"]
            out.write(f"session {event['session']}: {event['input']} · {event['sample_rate']} Hz × "
                      f"{event['channels']} · asr {asr['backend']} ({asr['model'] or '-'})\n")
        elif kind == "transcript.partial" and self._partials:
            self._clear_status()
            out.write(f"  {event['speaker']} … {event['text'][-100:]}")
            self._status = True
        elif kind == "utterance":
            self._clear_status()
            out.write(format_utterance(event, latency=self._realtime) + "\n")
        elif kind == "error":
            self._clear_status()
            out.write(f"! {event['code']}: {event['message']}\n")
        elif kind == "session.ended":
            self._clear_status()
            c = event["counts"]
            out.write(f"session ended ({event['reason']}): {c['utterances']} utterances, "
                      f"{event['duration']:.1f} s of audio, {c['dropped_frames']} frames dropped\n")
        out.flush()


def format_utterance(event: dict[str, Any], latency: bool = True) -> str:
    """``[start–end] speaker emotion confidence  text  (latency)``; the latency is
    shown for live sessions only (for files processed at full speed it is mostly
    time spent waiting in queues)."""
    emotion = event.get("emotion")
    if emotion:
        label = emotion["label"]
        mood = f"{label:<7} {emotion['scores'][label]:4.0%}"
    else:
        mood = "   -        "
    text = event["text"] or "(no words recognized)"
    line = f"[{event['start']:7.2f}–{event['end']:7.2f}] {event['speaker']:<4} {mood}  {text}"
    if latency:
        line += f"   ({event['latency_ms']['total']:.0f} ms)"
    return line
