"""Prometheus text-format metrics (provisional minimal registry)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, Any]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}{_labels(self.labelnames, k)} {v:g}" for k, v in items]


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1, **labels: Any) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10)):
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._h: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, **labels: Any) -> None:
        k = self._key(labels)
        with self._lock:
            h = self._h.setdefault(k, [0.0] * (len(self.buckets) + 2))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def render(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._h.items())
        for k, h in items:
            for i, b in enumerate(self.buckets):
                le = "+Inf" if math.isinf(b) else f"{b:g}"
                le_label = 'le="' + le + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, k, le_label)} {h[i]:g}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, k)} {h[-2]:g}")
            out.append(f"{self.name}_count{_labels(self.labelnames, k)} {h[-1]:g}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, m: _Metric) -> Any:
        if m.name in self._metrics:
            raise ValueError(f"duplicate metric {m.name}")
        self._metrics[m.name] = m
        return m

    def counter(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))  # type: ignore[no-any-return]

    def gauge(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))  # type: ignore[no-any-return]

    def histogram(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Histogram:
        return self._add(Histogram(name, help, labelnames))  # type: ignore[no-any-return]

    def render(self) -> str:
        lines = []
        for m in self._metrics.values():
            lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", *m.render()]
        return "\n".join(lines) + "\n"


@dataclass
class ServerMetrics:
    sessions_active: Gauge
    sessions_total: Counter
    subscribers_active: Gauge
    utterances_total: Counter
    events_total: Counter
    dropped_frames_total: Counter
    subscribers_dropped_total: Counter
    ingest_bytes_total: Counter
    errors_total: Counter
    stage_latency_seconds: Histogram
    queue_depth: Gauge

    def observe_event(self, event: dict[str, Any]) -> None:
        self.events_total.inc(type=event["type"])
        if event["type"] == "utterance":
            self.utterances_total.inc()
            for stage, ms in event.get("latency_ms", {}).items():
                self.stage_latency_seconds.observe(ms / 1000.0, stage=stage)
        elif event["type"] == "error":
            self.errors_total.inc(code=event.get("code", "unknown"))
            if event.get("code") == "audio_dropped":
                self.dropped_frames_total.inc(event.get("count", 0))


def server_metrics(r: Registry) -> ServerMetrics:
    p = "realtime_ser_"
    return ServerMetrics(
        sessions_active=r.gauge(p + "sessions_active", "Live sessions"),
        sessions_total=r.counter(p + "sessions_total", "Sessions started"),
        subscribers_active=r.gauge(p + "subscribers_active", "Connected subscribers"),
        utterances_total=r.counter(p + "utterances_total", "Utterance events"),
        events_total=r.counter(p + "events_total", "Events published", ("type",)),
        dropped_frames_total=r.counter(p + "dropped_frames_total", "Audio frames dropped"),
        subscribers_dropped_total=r.counter(p + "subscribers_dropped_total", "Subscribers disconnected",
                                            ("reason",)),
        ingest_bytes_total=r.counter(p + "ingest_bytes_total", "Audio bytes received"),
        errors_total=r.counter(p + "errors_total", "Errors", ("code",)),
        stage_latency_seconds=r.histogram(p + "stage_latency_seconds", "Per-stage latency", ("stage",)),
        queue_depth=r.gauge(p + "queue_depth", "Queue depths", ("queue",)),
    )
