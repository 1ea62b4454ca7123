"""The Prometheus registry of realtime_ser.server.metrics."""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import pytest

from realtime_ser.server.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
    escape_label_value,
    format_value,
    server_metrics,
)

_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            nxt = value[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A small parser of the text format 0.0.4: every sample line must read
    ``name{label="value",...} value``; comment lines must be HELP or TYPE."""
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[1] in ("HELP", "TYPE"), line
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert parts[2] not in types, f"second TYPE line for {parts[2]}"
                types[parts[2]] = parts[3]
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels: list[tuple[str, str]] = []
        raw = m.group("labels")
        if raw:
            pos = 0
            while pos < len(raw):
                lm = _LABEL_RE.match(raw, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
        family = re.sub(r"_(bucket|sum|count)$", "", m.group("name"))
        assert m.group("name") in types or family in types, f"sample {m.group('name')} has no TYPE line"
        key = (m.group("name"), frozenset(labels))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(m.group("value"))
    return samples


def L(**labels: str) -> frozenset[tuple[str, str]]:  # noqa: N802 - reads like a label set
    return frozenset(labels.items())


def test_counter_renders_help_type_and_values() -> None:
    r = Registry()
    c = r.counter("requests_total", "Requests\nhandled \\ so far.")
    c.inc()
    c.inc(2.5)
    text = r.render()
    lines = text.splitlines()
    assert lines[0] == "# HELP requests_total Requests\\nhandled \\\\ so far."
    assert lines[1] == "# TYPE requests_total counter"
    assert lines[2] == "requests_total 3.5"
    assert parse(text)[("requests_total", L())] == 3.5
    with pytest.raises(ValueError):
        c.inc(-1)


def test_unlabelled_metrics_start_at_zero_and_labelled_ones_empty() -> None:
    r = Registry()
    r.counter("a_total", "a")
    r.counter("b_total", "b", ("kind",))
    r.gauge("g", "g")
    r.histogram("h_seconds", "h", buckets=(1.0,))
    samples = parse(r.render())
    assert samples[("a_total", L())] == 0
    assert samples[("g", L())] == 0
    assert samples[("h_seconds_bucket", L(le="1"))] == 0
    assert samples[("h_seconds_bucket", L(le="+Inf"))] == 0
    assert samples[("h_seconds_count", L())] == 0
    assert not [k for k in samples if k[0] == "b_total"]
    assert "# TYPE b_total counter" in r.render()


def test_labelled_counter_and_label_checks() -> None:
    r = Registry()
    c = r.counter("events_total", "Events", ("type",))
    c.inc(type="utterance")
    c.inc(type="utterance")
    c.inc(3, type="error")
    samples = parse(r.render())
    assert samples[("events_total", L(type="utterance"))] == 2
    assert samples[("events_total", L(type="error"))] == 3
    assert c.get(type="utterance") == 2
    with pytest.raises(ValueError):
        c.inc()
    with pytest.raises(ValueError):
        c.inc(kind="x")
    with pytest.raises(ValueError):
        c.inc(type="x", kind="y")


def test_gauge_set_inc_dec() -> None:
    r = Registry()
    g = r.gauge("depth", "Depth", ("queue",))
    g.set(5, queue="a")
    g.inc(queue="a")
    g.dec(3, queue="a")
    g.set(0.25, queue="b")
    samples = parse(r.render())
    assert samples[("depth", L(queue="a"))] == 3
    assert samples[("depth", L(queue="b"))] == 0.25


def test_gauge_function_plain_and_labelled() -> None:
    r = Registry()
    live = [1, 2]
    g = r.gauge("live", "Live things")
    g.set(99)
    g.set_function(lambda: len(live))
    q = r.gauge("q", "Queues", ("queue", "part"))
    q.set_function(lambda: {("a", "x"): 1.5, ("b", "y"): 2})
    one = r.gauge("one", "One label", ("name",))
    one.set_function(lambda: {"solo": 7})
    samples = parse(r.render())
    assert samples[("live", L())] == 2
    assert samples[("q", L(queue="a", part="x"))] == 1.5
    assert samples[("q", L(queue="b", part="y"))] == 2
    assert samples[("one", L(name="solo"))] == 7
    live.append(3)
    assert parse(r.render())[("live", L())] == 3

    def broken() -> float:
        raise RuntimeError("boom")

    g.set_function(broken)  # a failing function falls back to the stored value
    assert parse(r.render())[("live", L())] == 99
    g.set_function(None)
    assert parse(r.render())[("live", L())] == 99


def test_label_values_are_escaped() -> None:
    r = Registry()
    c = r.counter("errors_total", "Errors", ("code",))
    nasty = 'a "quoted" back\\slash\nnewline'
    c.inc(code=nasty)
    text = r.render()
    assert 'errors_total{code="a \\"quoted\\" back\\\\slash\\nnewline"} 1' in text.splitlines()
    assert parse(text)[("errors_total", L(code=nasty))] == 1
    assert escape_label_value('x"\\\n') == 'x\\"\\\\\\n'


def test_histogram_buckets_are_cumulative() -> None:
    r = Registry()
    h = r.histogram("latency_seconds", "Latency", ("stage",), buckets=(0.1, 0.5, 1.0))
    for v in (0.05, 0.1, 0.3, 0.7, 2.0, 5.0):
        h.observe(v, stage="asr")
    h.observe(0.2, stage="vad")
    text = r.render()
    samples = parse(text)
    b = {le: samples[("latency_seconds_bucket", L(stage="asr", le=le))] for le in ("0.1", "0.5", "1", "+Inf")}
    assert b == {"0.1": 2, "0.5": 3, "1": 4, "+Inf": 6}
    assert samples[("latency_seconds_count", L(stage="asr"))] == 6
    assert math.isclose(samples[("latency_seconds_sum", L(stage="asr"))], 8.15)
    assert samples[("latency_seconds_bucket", L(stage="vad", le="0.1"))] == 0
    assert samples[("latency_seconds_bucket", L(stage="vad", le="0.5"))] == 1
    # bucket lines come in increasing le order, then _sum and _count
    names = [line.split("{")[0] for line in text.splitlines() if 'stage="asr"' in line]
    assert names == ["latency_seconds_bucket"] * 4 + ["latency_seconds_sum", "latency_seconds_count"]
    assert h.buckets[-1] == math.inf


def test_histogram_rejects_bad_buckets_and_le_label() -> None:
    with pytest.raises(ValueError):
        Histogram("h", "h", buckets=(1.0, 0.5))
    with pytest.raises(ValueError):
        Histogram("h", "h", buckets=())
    with pytest.raises(ValueError):
        Histogram("h", "h", ("le",))
    assert Histogram("h", "h", buckets=(1.0, math.inf)).buckets == (1.0, math.inf)


def test_registry_rejects_duplicates_and_bad_names() -> None:
    r = Registry()
    r.counter("x_total", "x")
    with pytest.raises(ValueError):
        r.gauge("x_total", "again")
    with pytest.raises(ValueError):
        r.counter("bad-name", "x")
    with pytest.raises(ValueError):
        r.counter("ok", "x", ("bad-label",))
    with pytest.raises(ValueError):
        Counter("ok", "x", ("a", "a"))
    assert "x_total" in r
    assert isinstance(r.get("x_total"), Counter)
    assert isinstance(Gauge("g", "g"), Gauge)


def test_value_formatting() -> None:
    assert format_value(3.0) == "3"
    assert format_value(123456789012) == "123456789012"
    assert format_value(0.1) == "0.1"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def _event(kind: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "session": "s1", "seq": seq, "t": 1.0, **fields}


def test_server_metrics_observe_event() -> None:
    r = Registry()
    m = server_metrics(r)
    latency = {"vad": 520.0, "queue": 1.5, "asr": 80.0, "emit": 0.2, "total": 601.7}
    events = [
        _event("session.started", 0, input="websocket", asr={"backend": "none", "model": None}, sample_rate=16000,
               channels=1, speakers=["ch0"], config={}),
        _event("speech.started", 1, speaker="ch0", channel=0, utterance_id="ch0-0", start=0.3),
        _event("transcript.partial", 2, speaker="ch0", channel=0, utterance_id="ch0-0", start=0.3, text="hel"),
        _event("utterance", 3, utterance_id="ch0-0", speaker="ch0", channel=0, start=0.3, end=1.2, text="hello",
               words=[], emotion=None, latency_ms=latency, end_reason="silence", asr={"backend": "none"}),
        _event("error", 4, code="audio_dropped", message="dropped 7 frames", fatal=False, speaker="ch0", count=7),
        _event("error", 5, code="recognizer_failed", message="boom", fatal=False),
        _event("utterance", 6, utterance_id="ch0-1", speaker="ch0", channel=0, start=2.0, end=2.5, text="",
               words=[], emotion=None, latency_ms={**latency, "total": 3.0}, end_reason="end_of_input",
               asr={"backend": "none"}),
        _event("session.ended", 7, reason="end_of_input",
               counts={"utterances": 2, "frames": 100, "dropped_frames": 7, "discarded_segments": 0, "partials": 1,
                       "errors": 2}, duration=3.0),
    ]
    for e in events:
        m.observe_event(e)
    m.observe_event({"nonsense": True})  # never raises
    m.sessions_active.set(1)
    m.sessions_total.inc()
    m.ingest_bytes_total.inc(64000)
    m.subscribers_dropped_total.inc(reason="too_slow")
    m.queue_depth.set(2, queue="subscriber_events")
    text = r.render()
    s = parse(text)
    p = "realtime_ser_"
    assert s[(p + "events_total", L(type="utterance"))] == 2
    assert s[(p + "events_total", L(type="error"))] == 2
    assert s[(p + "events_total", L(type="session.started"))] == 1
    assert s[(p + "utterances_total", L())] == 2
    assert s[(p + "dropped_frames_total", L())] == 7
    assert s[(p + "errors_total", L(code="audio_dropped"))] == 1
    assert s[(p + "errors_total", L(code="recognizer_failed"))] == 1
    assert s[(p + "ingest_bytes_total", L())] == 64000
    assert s[(p + "sessions_active", L())] == 1
    assert s[(p + "subscribers_dropped_total", L(reason="too_slow"))] == 1
    assert s[(p + "queue_depth", L(queue="subscriber_events"))] == 2
    assert s[(p + "stage_latency_seconds_count", L(stage="total"))] == 2
    assert math.isclose(s[(p + "stage_latency_seconds_sum", L(stage="total"))], 0.6047)
    assert s[(p + "stage_latency_seconds_bucket", L(stage="total", le="0.005"))] == 1  # 3 ms
    assert s[(p + "stage_latency_seconds_bucket", L(stage="total", le="0.5"))] == 1
    assert s[(p + "stage_latency_seconds_bucket", L(stage="total", le="0.75"))] == 2
    assert s[(p + "stage_latency_seconds_bucket", L(stage="vad", le="0.5"))] == 0
    assert s[(p + "stage_latency_seconds_bucket", L(stage="vad", le="0.75"))] == 2
    les = {dict(k[1])["le"] for k in s if k[0] == p + "stage_latency_seconds_bucket"}
    assert les == {format_value(b) for b in LATENCY_BUCKETS} | {"+Inf"}
    for name in ("sessions_active", "sessions_total", "subscribers_active", "utterances_total", "events_total",
                 "dropped_frames_total", "subscribers_dropped_total", "ingest_bytes_total", "errors_total",
                 "stage_latency_seconds", "queue_depth"):
        assert f"# TYPE {p}{name} " in text
    with pytest.raises(ValueError):
        server_metrics(r)  # the names are taken


def test_thread_safety_smoke() -> None:
    r = Registry()
    c = r.counter("c_total", "c", ("t",))
    g = r.gauge("g", "g")
    h = r.histogram("h_seconds", "h", buckets=(0.5,))
    n_threads, n = 4, 2000
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for k in range(n):
                c.inc(t=str(k % 3))
                g.inc()
                g.dec()
                h.observe((k % 2) * 1.0)
                if k % 500 == 0:
                    parse(r.render())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = parse(r.render())
    assert sum(v for k, v in s.items() if k[0] == "c_total") == n_threads * n
    assert s[("g", L())] == 0
    assert s[("h_seconds_count", L())] == n_threads * n
    assert s[("h_seconds_bucket", L(le="0.5"))] == n_threads * n / 2
