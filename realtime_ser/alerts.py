"""Escalation alerts: a speaker whose negative emotion persists or rises.

:class:`AlertTracker` is a plain synchronous stage: give it each ``utterance``
event, in order, and it returns the ``alert`` events (their fields) that the
utterance triggers; no threads, no clocks (all times are the stream times of
the events). State is kept per speaker (per channel): one speaker's anger
never raises or clears another's alert.

For each turn that carries an emotion, the *negative score* is the probability
mass the model puts on the negative labels (``alerts.negative``; labels the
model does not have count as 0). A speaker's *level* is the mean negative
score over their last ``window_turns`` such turns (fewer at the start of a
call): the one definition every view shows, in the words of :func:`describe_level`
(the terminal view, the dashboard and the wallboard say the same).

- **Raise** when both the level and the turn's own negative score are at
  least ``raise_level`` on ``raise_turns`` consecutive turns of that speaker,
  spanning at least ``raise_seconds`` of stream time (from the start of the
  first of those turns to the end of the last). One negative turn therefore
  never raises an alert (with the default ``raise_turns = 2``), while anger
  that persists or builds up does.
- **Clear** a raised alert when both are at most ``clear_level`` on
  ``clear_turns`` consecutive turns spanning at least ``clear_seconds``.
  ``clear_level < raise_level`` (hysteresis): a level that hovers around one
  threshold does not make the alert flicker.

Each raise/clear pair shares an ``alert_id``. Utterances without an emotion
(``"emotion": null``) leave the state as it is; ``emotion.revised`` events do
not change alerts already sent (alerts are about what was known at the time).
An alert still raised when the session ends is not cleared: ``session.ended``
closes it.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

from .config import AlertConfig
from .events import round_t

log = logging.getLogger(__name__)

ALERT_KIND = "escalation"


def describe_level(level: float, turns: int, window: int) -> str:
    """The level in words, the same in alert messages and in every view: ``negative 69% over the
    last 4 turns``, and at the start of a call ``negative 100% over the last 4 turns (2 so far)``."""
    text = f"negative {level:.0%} over the last {window} turns"
    return text + (f" ({turns} so far)" if turns < window else "")


def negative_score(scores: dict[str, float], negative: frozenset[str]) -> float:
    """Probability mass on the negative labels, clipped to [0, 1]."""
    total = sum(float(v) for k, v in scores.items() if k in negative)
    return min(1.0, max(0.0, total))


@dataclass
class _Speaker:
    speaker: str
    channel: int
    window: collections.deque[float]
    raised: bool = False
    run_turns: int = 0
    run_since: float = 0.0
    alert_id: str = ""
    alerts: int = 0


class AlertTracker:
    """Per-session escalation state; ``observe(event) -> [alert fields]``.

    Each returned dict holds ``t`` and the fields of one ``alert`` event, ready
    for ``EventLog.emit("alert", **fields)``.
    """

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = (config or AlertConfig()).validate()
        self.negative = self.config.negative_labels
        self._speakers: dict[tuple[int, str], _Speaker] = {}

    def reset(self) -> None:
        """Forget every speaker's state (a new session)."""
        self._speakers.clear()

    def active(self) -> list[str]:
        """``alert_id`` of every alert currently raised."""
        return [s.alert_id for s in self._speakers.values() if s.raised]

    def level(self, speaker: str, channel: int) -> float | None:
        """The speaker's current level, or None before their first turn with an emotion."""
        state = self._speakers.get((channel, speaker))
        if state is None or not state.window:
            return None
        return sum(state.window) / len(state.window)

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one event of the session; return the alerts it triggers (usually none)."""
        cfg = self.config
        if not cfg.enabled or event.get("type") != "utterance":
            return []
        emotion = event.get("emotion")
        if not isinstance(emotion, dict) or not isinstance(emotion.get("scores"), dict) or not emotion["scores"]:
            return []
        speaker, channel = str(event["speaker"]), int(event["channel"])
        key = (channel, speaker)
        state = self._speakers.get(key)
        if state is None:
            state = self._speakers[key] = _Speaker(speaker, channel, collections.deque(maxlen=cfg.window_turns))
        score = negative_score(emotion["scores"], self.negative)
        state.window.append(score)
        level = sum(state.window) / len(state.window)
        start, end = float(event["start"]), float(event["end"])

        # A turn counts towards a change only when it agrees with the level: one very
        # angry turn after a calm one lifts the mean but is not a second negative turn.
        if state.raised:
            toward = max(level, score) <= cfg.clear_level
            need_turns, need_seconds = cfg.clear_turns, cfg.clear_seconds
        else:
            toward = min(level, score) >= cfg.raise_level
            need_turns, need_seconds = cfg.raise_turns, cfg.raise_seconds
        if not toward:
            state.run_turns = 0
            return []
        if state.run_turns == 0:
            state.run_since = start
        state.run_turns += 1
        if state.run_turns < need_turns or end - state.run_since < need_seconds:
            return []

        state.run_turns = 0
        state.raised = not state.raised
        if state.raised:
            state.alerts += 1
            state.alert_id = f"{ALERT_KIND}-{speaker}-{state.alerts}"
        turns = len(state.window)
        said = describe_level(level, turns, cfg.window_turns)
        if state.raised:
            message = f"{speaker}: {said}; at least {cfg.raise_level:.0%} since {state.run_since:.1f} s"
        else:
            message = f"{speaker}: calmer, {said}; at most {cfg.clear_level:.0%} since {state.run_since:.1f} s"
        log.debug("alert %s %s: %s", state.alert_id, "raised" if state.raised else "cleared", message)
        return [{
            "t": float(event.get("t", end)),
            "alert_id": state.alert_id,
            "kind": ALERT_KIND,
            "state": "raised" if state.raised else "cleared",
            "speaker": speaker,
            "channel": channel,
            "level": round(level, 3),
            "threshold": cfg.raise_level if state.raised else cfg.clear_level,
            "turns": turns,
            "since": round_t(state.run_since),
            "utterance_id": str(event.get("utterance_id", "")),
            "negative": sorted(self.negative & set(emotion["scores"])) or sorted(self.negative),
            "message": message,
        }]
