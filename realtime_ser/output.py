"""Event sinks: JSON lines and a readable terminal view."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
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
            try:
                self._f.close()
            except OSError:  # e.g. the disk is full: the failed write was already reported
                pass


class TerminalView:
    """A live, readable view of the events on a terminal (also over SSH).

    Line-oriented, never full-screen: a header when a session starts, one line
    per utterance (time, speaker, emotion and its confidence, transcript), one
    per alert, and a summary with the session's counts when it ends. On a
    terminal, one status line at the bottom is redrawn in place with the
    running stats (stream time, utterances, each speaker's share of negative
    emotion over their recent turns, alerts raised) and the partial transcript;
    colour marks the emotions and alerts. Written to a pipe or a file, or with
    ``NO_COLOR`` set (or ``TERM=dumb``), the output is plain lines with no
    escape codes and no status line.

    Several sessions may be shown at once (``follow`` without a session):
    ``show_session`` then prefixes each line with the session id.
    """

    def __init__(self, stream: IO[str] | None = None, partials: bool = True, *, color: bool | None = None,
                 status: bool | None = None, latency: bool | None = None, show_session: bool = False) -> None:
        self._out = stream or sys.stdout
        tty = _isatty(self._out)
        self._color = use_color(self._out) if color is None else color
        self._status_on = (tty and os.environ.get("TERM") != "dumb") if status is None else status
        self._partials = partials and self._status_on
        self._latency = latency
        self._show_session = show_session
        self._sessions: dict[str, _SessionStats] = {}
        self._status = False

    # -- sink ------------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        kind = event.get("type")
        session = str(event.get("session", "-"))
        if kind == "error" and session == "-":
            self._line(self._paint(f"! {event.get('code')}: {event.get('message')}", _ALERT_COLOR))
            self._out.flush()
            return
        stats = self._sessions.get(session)
        if stats is None:
            stats = self._sessions[session] = _SessionStats(session)
            if kind != "session.started":
                self._line(self._prefix(session) + f"session {session} (joined at event {event.get('seq', '?')})")
        if isinstance(event.get("t"), int | float):
            stats.t = max(stats.t, float(event["t"]))
        if kind == "session.started":
            stats.start(event)
            self._header(event, stats)
        elif kind == "transcript.partial":
            stats.partial = (str(event.get("speaker", "?")), str(event.get("text", "")))
        elif kind == "utterance":
            stats.utterance(event)
            latency = self._latency if self._latency is not None else stats.realtime
            self._line(self._prefix(session) + format_utterance(
                event, latency=latency, speaker_width=stats.speaker_width, color=self._color))
        elif kind == "emotion.revised":
            emotion = event.get("emotion") or {}
            self._line(self._prefix(session) + f"  revised {event.get('utterance_id', '?')}: "
                       f"{event.get('previous_label', '?')} -> {emotion.get('label', '?')} (with later turns)")
        elif kind == "alert":
            stats.alert(event)
            self._line(self._prefix(session) + self._alert_line(event))
        elif kind == "error":
            self._line(self._prefix(session) + self._paint(f"! {event.get('code')}: {event.get('message')}",
                                                           _ALERT_COLOR))
        elif kind == "session.ended":
            self._line(self._prefix(session) + stats.summary(event))
            del self._sessions[session]
            self._clear_status()
            self._out.flush()
            return
        self._draw_status(stats)
        self._out.flush()

    # -- lines -----------------------------------------------------------------------------------

    def _prefix(self, session: str) -> str:
        return f"{session}: " if self._show_session else ""

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self._color and code else text

    def _line(self, text: str) -> None:
        self._clear_status()
        self._out.write(text + "\n")

    def _header(self, event: Event, stats: _SessionStats) -> None:
        asr = event.get("asr") or {}
        model = asr.get("model") if isinstance(asr, dict) else None
        backend = asr.get("backend", "?") if isinstance(asr, dict) else "?"
        p = self._prefix(stats.session)
        self._line(p + f"session {stats.session}: {event.get('input', '?')} · {event.get('sample_rate', '?')} Hz × "
                   f"{event.get('channels', '?')} · asr {backend} ({model or '-'})")
        speakers = ", ".join(stats.speakers) or "-"
        negative = NEGATIVE_DEFINITION.format(labels="/".join(sorted(stats.negative)), window=stats.window)
        self._line(p + f"  speakers: {speakers} · {negative}; alert from {stats.raise_level:.0%}")
        self._line(p + self._paint(f"{'time':^17} {'speaker':<{stats.speaker_width}} {'emotion':<10} conf  "
                                   "transcript", "2"))

    def _alert_line(self, event: Event) -> str:
        raised = event.get("state") == "raised"
        when = _clock(float(event.get("t", 0.0)))
        tag = self._paint(" ALERT ", _ALERT_COLOR) if raised else self._paint(" clear ", "1;32")
        return f"[{when:>7}] {tag} {event.get('message', '')}"

    # -- status line -----------------------------------------------------------------------------

    def _clear_status(self) -> None:
        if self._status:
            self._out.write("\r\033[K")
            self._status = False

    def _draw_status(self, stats: _SessionStats) -> None:
        if not self._status_on:
            return
        parts = [f"{_clock(stats.t)}", f"{stats.utterances} utt"]
        trend = []
        for name in stats.speakers:
            level = stats.level(name)
            if level is None:
                continue
            mark = self._paint(f"{name} {level:.0%}", _ALERT_COLOR if name in stats.alerting else "")
            trend.append(mark)
        if trend:
            parts.append("negative: " + " ".join(trend))
        if stats.alerting:
            parts.append(self._paint(f"{len(stats.alerting)} alert{'s' if len(stats.alerting) > 1 else ''}",
                                     _ALERT_COLOR))
        if self._partials and stats.partial is not None:
            speaker, text = stats.partial
            parts.append(f"{speaker} … {text}")
        line = " · ".join(parts)
        width = _width(self._out)
        line = _fit(line, width - 4)  # "── " before it, and the last column left free
        self._clear_status()
        self._out.write(self._paint("── ", "2") + line if self._color else "── " + line)
        self._status = True


NEGATIVE_DEFINITION = "negative = share of {labels} over a speaker's last {window} turns"
"""How every view states what its "negative NN%" figures are (the dashboard and wallboard too)."""
_ALERT_COLOR = "1;37;41"
_EMOTION_COLORS = {"angry": "1;31", "frustrated": "31", "sad": "34", "fear": "35", "disgust": "36",
                   "happy": "32", "excited": "33", "surprise": "36", "neutral": ""}
_ANSI = re.compile(r"\033\[[0-9;]*m")


def use_color(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    return _isatty(stream) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return shutil.get_terminal_size((100, 24)).columns


def _fit(line: str, width: int) -> str:
    """Cut a line with colour codes to ``width`` visible characters."""
    if len(_ANSI.sub("", line)) <= width:
        return line
    out, seen, i = [], 0, 0
    while i < len(line) and seen < width - 1:
        m = _ANSI.match(line, i)
        if m:
            out.append(m.group())
            i = m.end()
            continue
        out.append(line[i])
        seen += 1
        i += 1
    return "".join(out) + "…\033[0m" if "\033[" in line else "".join(out) + "…"


def _clock(seconds: float) -> str:
    """Stream time as ``m:ss.s`` (``h:mm:ss`` from one hour on)."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        h, rest = divmod(int(seconds), 3600)
        return f"{h}:{rest // 60:02d}:{rest % 60:02d}"
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


class _SessionStats:
    """What the view remembers of one session: speakers, counts, recent negative scores."""

    def __init__(self, session: str) -> None:
        from .config import AlertConfig

        self.session = session
        self.speakers: list[str] = []
        defaults = AlertConfig()
        self.negative = defaults.negative_labels
        self.window = defaults.window_turns
        self.raise_level = defaults.raise_level
        self.realtime = False
        self.t = 0.0
        self.utterances = 0
        self.labels: dict[str, collections.Counter[str]] = {}
        self.recent: dict[str, collections.deque[float]] = {}
        self.alerting: set[str] = set()
        self.alerts_raised = 0
        self.partial: tuple[str, str] | None = None

    @property
    def speaker_width(self) -> int:
        return max([7, *map(len, self.speakers)])

    def start(self, event: Event) -> None:
        self.realtime = bool(event.get("realtime"))
        self.speakers = [str(s) for s in event.get("speakers") or []]
        config = event.get("config")
        alerts = config.get("alerts") if isinstance(config, dict) else None
        if isinstance(alerts, dict):  # the session's own alert settings, when it says
            negative = alerts.get("negative")
            if isinstance(negative, str) and negative.strip():
                self.negative = frozenset(x.strip() for x in negative.split(",") if x.strip())
            if isinstance(alerts.get("window_turns"), int) and alerts["window_turns"] > 0:
                self.window = alerts["window_turns"]
            if isinstance(alerts.get("raise_level"), int | float):
                self.raise_level = float(alerts["raise_level"])

    def utterance(self, event: Event) -> None:
        self.utterances += 1
        self.partial = None
        speaker = str(event.get("speaker", "?"))
        if speaker not in self.speakers:
            self.speakers.append(speaker)
        emotion = event.get("emotion")
        if isinstance(emotion, dict) and isinstance(emotion.get("scores"), dict):
            from .alerts import negative_score

            self.labels.setdefault(speaker, collections.Counter())[str(emotion.get("label"))] += 1
            recent = self.recent.setdefault(speaker, collections.deque(maxlen=self.window))
            recent.append(negative_score(emotion["scores"], self.negative))

    def level(self, speaker: str) -> float | None:
        recent = self.recent.get(speaker)
        return sum(recent) / len(recent) if recent else None

    def alert(self, event: Event) -> None:
        speaker = str(event.get("speaker", "?"))
        if event.get("state") == "raised":
            self.alerting.add(speaker)
            self.alerts_raised += 1
        else:
            self.alerting.discard(speaker)

    def summary(self, event: Event) -> str:
        c = event.get("counts") or {}
        line = (f"session ended ({event.get('reason', '?')}): {c.get('utterances', self.utterances)} utterances, "
                f"{float(event.get('duration', self.t)):.1f} s of audio, {c.get('dropped_frames', 0)} frames dropped")
        if self.alerts_raised:
            line += f", {self.alerts_raised} alert{'s' if self.alerts_raised > 1 else ''}"
        for speaker in self.speakers:
            counts = self.labels.get(speaker)
            if counts:
                line += f" · {speaker}: " + " ".join(f"{k} {n}" for k, n in counts.most_common())
        return line


def format_utterance(event: dict[str, Any], latency: bool = True, *, speaker_width: int = 4,
                     color: bool = False) -> str:
    """``[start–end] speaker emotion confidence  text  (latency)``.

    The emotion's label is the top of its scores and the confidence its score;
    an utterance without an emotion shows ``–``. The latency (end of speech to
    the event) is shown for live sessions only (for files processed at full
    speed it is mostly time spent waiting in queues).
    """
    emotion = event.get("emotion")
    if isinstance(emotion, dict) and isinstance(emotion.get("scores"), dict) and emotion["scores"]:
        scores = emotion["scores"]
        label = str(emotion.get("label") or max(scores, key=scores.get))
        conf = float(scores.get(label, max(scores.values())))
        mood = f"{label:<10} {conf:4.0%}"
        if color and _EMOTION_COLORS.get(label, "35"):
            mood = f"\033[{_EMOTION_COLORS.get(label, '35')}m{mood}\033[0m"
    else:
        mood = f"{'–':<10} {'':>4}"
    text = event.get("text") or "(no words recognized)"
    when = f"[{_clock(float(event['start'])):>7}–{_clock(float(event['end'])):>7}]"
    line = f"{when} {str(event['speaker']):<{speaker_width}} {mood}  {text}"
    if latency and isinstance(event.get("latency_ms"), dict) and "total" in event["latency_ms"]:
        line += f"   ({event['latency_ms']['total']:.0f} ms)"
    return line
