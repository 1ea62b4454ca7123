"""Escalation alerts on scripted utterance sequences, and their place in the event stream."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import validate_event, validate_stream

from realtime_ser.alerts import AlertTracker, negative_score
from realtime_ser.config import AlertConfig, PipelineConfig, apply_overrides
from realtime_ser.errors import ConfigError
from realtime_ser.events import EventLog

LABELS = ("neutral", "happy", "sad", "angry")


def emotion(label: str, p: float = 0.8, labels: tuple[str, ...] = LABELS) -> dict[str, Any]:
    """An emotion dict with ``p`` on ``label`` and the rest spread over the other labels."""
    rest = (1.0 - p) / (len(labels) - 1)
    scores = {k: (p if k == label else rest) for k in labels}
    return {"label": label, "scores": scores, "modalities": {"audio": scores, "text": scores}, "context_turns": 3,
            "model": {"name": "scripted", "version": "0"}}


class Script:
    """Builds utterance events of a conversation, one turn every 3 s of stream time."""

    def __init__(self) -> None:
        self.n = 0

    def turn(self, speaker: str, label: str | None, p: float = 0.8, channel: int | None = None,
             length: float = 2.0, labels: tuple[str, ...] = LABELS) -> dict[str, Any]:
        start = 3.0 * self.n
        self.n += 1
        ch = channel if channel is not None else (0 if speaker == "agent" else 1)
        return {"v": 1, "type": "utterance", "session": "s", "seq": self.n, "t": start + length,
                "utterance_id": f"{speaker}-{self.n}", "speaker": speaker, "channel": ch, "start": start,
                "end": start + length, "text": "words", "words": [],
                "emotion": None if label is None else emotion(label, p, labels),
                "end_reason": "silence", "asr": {"backend": "none", "model": None},
                "latency_ms": {"vad": 0, "queue": 0, "asr": 0, "emit": 0, "total": 0}}


def run(tracker: AlertTracker, turns: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Feed the turns; return (turn index, alert fields) for every alert."""
    return [(i, a) for i, ev in enumerate(turns) for a in tracker.observe(ev)]


def test_a_single_negative_turn_does_not_fire() -> None:
    s = Script()
    turns = [s.turn("customer", lab) for lab in ["neutral", "neutral", "angry", "neutral", "neutral", "neutral"]]
    assert run(AlertTracker(), turns) == []
    # Not even when it is the very first turn, nor when it is certain.
    s = Script()
    assert run(AlertTracker(), [s.turn("customer", "angry", 1.0), s.turn("customer", "neutral", 1.0)]) == []


def test_persistent_anger_fires_once_then_clears_with_hysteresis() -> None:
    s = Script()
    labels = ["neutral", "neutral", "angry", "angry", "angry", "angry", "angry", "angry",
              "neutral", "neutral", "neutral", "neutral", "neutral", "neutral"]
    turns = [s.turn("customer", lab) for lab in labels]
    alerts = run(AlertTracker(), turns)
    assert [(i, a["state"]) for i, a in alerts] == [(4, "raised"), (12, "cleared")]
    raised, cleared = alerts[0][1], alerts[1][1]
    assert raised["alert_id"] == cleared["alert_id"] == "escalation-customer-1"
    assert raised["speaker"] == "customer" and raised["channel"] == 1 and raised["kind"] == "escalation"
    # neutral turns keep 0.067 on each other label, so calm is a level of 0.133, not 0
    assert raised["level"] >= 0.5 and raised["threshold"] == 0.5 and raised["turns"] == 4
    assert raised["utterance_id"] == turns[4]["utterance_id"] and raised["t"] == turns[4]["end"]
    assert raised["since"] == turns[3]["start"]  # the first of the two turns at or above the threshold
    assert cleared["level"] <= 0.3 and cleared["threshold"] == 0.3
    assert raised["negative"] == ["angry", "sad"]  # "frustrated" is not a label of this model
    for _i, fields in alerts:
        validate_event({"v": 1, "type": "alert", "session": "s", "seq": 0, **fields})


def test_level_between_the_thresholds_neither_raises_again_nor_clears() -> None:
    """Hysteresis: once raised, a level that dips below raise_level but stays above
    clear_level keeps the alert; a new alert needs a clear first."""
    cfg = AlertConfig(window_turns=2, raise_level=0.6, clear_level=0.3, raise_turns=2, clear_turns=2)
    s = Script()
    # negative scores (angry p + sad share): angry 0.8 -> 0.867, neutral 0.55 -> 0.3 (mean ~0.58 with anger)
    turns = [s.turn("c", "angry"), s.turn("c", "angry"),           # raised at turn 1
             s.turn("c", "neutral", 0.55), s.turn("c", "angry"),   # level ~0.58 / ~0.58: in between
             s.turn("c", "neutral", 0.55), s.turn("c", "angry"),
             s.turn("c", "neutral", 0.9), s.turn("c", "neutral", 0.9), s.turn("c", "neutral", 0.9)]
    alerts = run(AlertTracker(cfg), turns)
    assert [(i, a["state"]) for i, a in alerts] == [(1, "raised"), (8, "cleared")]


def test_flicker_around_the_raise_level_does_not_repeat_alerts() -> None:
    s = Script()
    turns = [s.turn("c", "angry" if k % 2 else "neutral") for k in range(12)]
    alerts = run(AlertTracker(), turns)
    assert [a["state"] for _i, a in alerts] in ([], ["raised"])


def test_anger_rising_slowly_fires() -> None:
    """Negative emotion that rises turn by turn, never one extreme turn."""
    s = Script()
    turns = [s.turn("c", "angry", p) for p in (0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8)]
    alerts = run(AlertTracker(), turns)
    assert len(alerts) == 1 and alerts[0][1]["state"] == "raised" and alerts[0][0] >= 4


def test_speakers_are_independent() -> None:
    s = Script()
    turns = []
    for _ in range(4):
        turns += [s.turn("agent", "neutral", 0.9), s.turn("customer", "angry", 0.9)]
    turns += [s.turn("agent", "angry", 0.9)]  # one angry agent turn: no alert for the agent
    alerts = run(AlertTracker(), turns)
    assert [(a["speaker"], a["channel"], a["state"]) for _i, a in alerts] == [("customer", 1, "raised")]
    # Same speaker name on another channel is another speaker.
    s = Script()
    mixed = [s.turn("x", "angry", channel=k % 2) for k in range(3)]
    assert [(i, a["channel"]) for i, a in run(AlertTracker(), mixed)] == [(2, 0)]


def test_null_emotion_and_other_events_change_nothing() -> None:
    s = Script()
    tracker = AlertTracker()
    turns = [s.turn("c", "angry"), s.turn("c", None), s.turn("c", None), s.turn("c", "angry")]
    alerts = run(tracker, turns)
    assert [(i, a["state"]) for i, a in alerts] == [(3, "raised")]  # null turns neither count nor reset
    assert tracker.observe({"type": "transcript.partial", "speaker": "c", "channel": 1}) == []
    assert tracker.observe({"type": "session.ended"}) == []
    assert tracker.active() == ["escalation-c-1"]
    tracker.reset()
    assert tracker.active() == [] and tracker.level("c", 1) is None


def test_minimum_duration_in_stream_seconds() -> None:
    cfg = AlertConfig(raise_turns=2, raise_seconds=8.0)
    s = Script()  # turns start every 3 s and last 2 s
    turns = [s.turn("c", "angry") for _ in range(5)]
    alerts = run(AlertTracker(cfg), turns)
    # turn 0 starts at 0 s; the run spans 8 s at the end of turn 2 (6 + 2 s)
    assert [(i, a["state"]) for i, a in alerts] == [(2, "raised")]


def test_labels_come_from_the_scores_and_frustrated_counts_when_present() -> None:
    labels = ("calm", "frustrated", "pleased")
    s = Script()
    turns = [s.turn("c", "frustrated", 0.9, labels=labels) for _ in range(2)]
    alerts = run(AlertTracker(), turns)
    assert len(alerts) == 1 and alerts[0][1]["negative"] == ["frustrated"]
    # A label set with no negative label never alerts.
    s = Script()
    turns = [s.turn("c", "pleased", 0.9, labels=("calm", "pleased")) for _ in range(6)]
    assert run(AlertTracker(), turns) == []
    # The negative set is configurable.
    s = Script()
    turns = [s.turn("c", "happy", 0.9) for _ in range(3)]
    assert len(run(AlertTracker(AlertConfig(negative="happy")), turns)) == 1
    assert run(AlertTracker(AlertConfig(enabled=False)), turns) == []


def test_negative_score_is_clipped() -> None:
    assert negative_score({"angry": 0.7, "sad": 0.6}, frozenset({"angry", "sad"})) == 1.0
    assert negative_score({"neutral": 1.0}, frozenset({"angry"})) == 0.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["alerts.clear_level=0.6"], r"alerts.clear_level must be in \[0, alerts.raise_level\)"),
        (["alerts.clear_level=0.5"], "for hysteresis"),
        (["alerts.raise_level=0"], r"alerts.raise_level must be in \(0, 1\]"),
        (["alerts.raise_level=1.5"], r"alerts.raise_level must be in \(0, 1\]"),
        (["alerts.raise_turns=0"], "alerts.raise_turns must be at least 1"),
        (["alerts.window_turns=0"], "alerts.window_turns must be at least 1"),
        (["alerts.clear_seconds=-1"], "alerts.clear_seconds must be >= 0"),
        (["alerts.negative= , "], "alerts.negative must name at least one label"),
        (["alerts.negative=angry,<b>"], "is not a label"),
        (["alerts.raise_turns=two"], "alerts.raise_turns must be an integer"),
        (["alerts.threshold=0.5"], r"unknown key alerts.threshold; allowed in \[alerts\]: enabled, negative"),
    ],
)
def test_config_errors_name_what_is_allowed(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_overrides(PipelineConfig(), overrides)


def test_tracker_refuses_a_bad_config() -> None:
    with pytest.raises(ConfigError, match="hysteresis"):
        AlertTracker(AlertConfig(raise_level=0.4, clear_level=0.4))


def test_overrides_reach_the_tracker() -> None:
    cfg = apply_overrides(PipelineConfig(), ["alerts.raise_turns=3", "alerts.negative=angry"])
    tracker = AlertTracker(cfg.alerts)
    assert tracker.negative == frozenset({"angry"}) and tracker.config.raise_turns == 3


def test_alerts_go_into_the_same_log_as_the_utterances() -> None:
    """The pipeline's hook: after each utterance is logged, its alerts follow in the same log,
    so every sink sees them in seq order (the pipeline does exactly this in _deliver)."""
    events: list[dict[str, Any]] = []
    log = EventLog("s", [events.append])
    tracker = AlertTracker()
    log.emit("session.started", 0.0, input="test", asr={"backend": "none", "model": None}, sample_rate=16000,
             channels=2, speakers=["agent", "customer"], config={})
    s = Script()
    for lab in ["neutral", "angry", "angry", "angry", "neutral", "neutral", "neutral", "neutral", "neutral"]:
        fields = {k: v for k, v in s.turn("customer", lab).items() if k not in ("v", "type", "session", "seq", "t")}
        event = log.emit("utterance", fields["end"], **fields)
        for alert in tracker.observe(event):
            log.emit("alert", **alert)
    log.emit("session.ended", 30.0, reason="end_of_input", counts={
        "utterances": 9, "frames": 0, "dropped_frames": 0, "discarded_segments": 0, "partials": 0, "errors": 0})
    validate_stream(events)
    kinds = [e["type"] for e in events]
    assert kinds.count("alert") == 2
    first = kinds.index("alert")
    assert kinds[first - 1] == "utterance" and events[first]["utterance_id"] == events[first - 1]["utterance_id"]


def test_the_pipeline_logs_alerts_right_after_their_utterance() -> None:
    """The hook in Pipeline._deliver, on the demo recording: what the tracker returns for an
    utterance goes into the session's log right after it (a stand-in tracker, so that this
    holds with or without an emotion model)."""
    import soundfile as sf

    from realtime_ser.pipeline import Pipeline
    from realtime_ser.sources import ArraySource, demo_path

    pcm, rate = sf.read(demo_path(), dtype="int16")
    cfg = apply_overrides(PipelineConfig(), ["source.split_channels=true", "emotion.enabled=false"])
    events: list[dict[str, Any]] = []
    pipeline = Pipeline(cfg, ArraySource(pcm, rate, cfg.source), [events.append], backend=None, session="s")
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> list[dict[str, Any]]:
        seen.append(event["type"])
        if event["type"] != "utterance":
            return []
        return [{"t": event["t"], "alert_id": f"escalation-{event['speaker']}-1", "kind": "escalation",
                 "state": "raised", "speaker": event["speaker"], "channel": event["channel"], "level": 0.9,
                 "threshold": 0.5, "turns": 2, "since": event["start"], "utterance_id": event["utterance_id"],
                 "negative": ["angry"], "message": "test"}]

    pipeline.alerts.observe = observe  # type: ignore[method-assign]
    pipeline.run()
    validate_stream(events)
    kinds = [e["type"] for e in events]
    assert kinds.count("utterance") == kinds.count("alert") == 6
    for i, e in enumerate(events):
        if e["type"] == "alert":
            assert events[i - 1]["type"] == "utterance" and events[i - 1]["utterance_id"] == e["utterance_id"]
    assert "alert" not in seen  # the tracker sees the session's events, not its own alerts
