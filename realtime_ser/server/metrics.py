"""A tiny, dependency-free Prometheus metrics registry.

Counters, gauges and histograms, with or without labels, rendered in the
Prometheus text exposition format, version 0.0.4 (what ``GET /metrics``
answers). Every metric guards its values with its own lock, so they may be
updated from any thread (the pipeline threads, the server's event loop) while
another thread renders them.

:func:`server_metrics` creates the set of metrics the server exposes, and
:meth:`ServerMetrics.observe_event` updates them from the events a session
publishes.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type of :meth:`Registry.render`'s output."""

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10)
"""Histogram bucket bounds (seconds) for latencies from about 1 ms to 10 s."""

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelKey = tuple[str, ...]
GaugeFunction = Callable[[], "float | Mapping[Any, float]"]


def escape_label_value(value: object) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction,
    ``+Inf``/``-Inf``/``NaN``, other floats in their shortest exact form."""
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _label_text(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    parts = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra is not None:
        parts.append(f'{extra[0]}="{escape_label_value(extra[1])}"')
    return "{" + ",".join(parts) + "}" if parts else ""


class Metric:
    """Base class: a named metric family with fixed label names."""

    kind = "untyped"
    _reserved_labels: frozenset[str] = frozenset()

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}; use [a-zA-Z_:][a-zA-Z0-9_:]*")
        names = tuple(labelnames)
        for label in names:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}; use [a-zA-Z_][a-zA-Z0-9_]*, "
                                 "not starting with '__'")
            if label in self._reserved_labels:
                raise ValueError(f"label name {label!r} is reserved for {self.kind} {name}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names for {name}: {names}")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = names
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, Any]) -> LabelKey:
        if len(labels) != len(self.labelnames) or set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def samples(self) -> list[tuple[str, str, float]]:
        """``(sample name, label text, value)`` of every sample, in render order."""
        raise NotImplementedError

    def render(self) -> list[str]:
        """The ``# HELP``/``# TYPE`` lines and the sample lines of this metric."""
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{name}{labels} {format_value(value)}" for name, labels, value in self.samples()]
        return lines


class _ValueMetric(Metric):
    """A metric holding one float per label combination."""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def get(self, **labels: Any) -> float:
        """The current value (0 for a label combination never set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def _snapshot(self) -> list[tuple[LabelKey, float]]:
        with self._lock:
            return sorted(self._values.items())

    def samples(self) -> list[tuple[str, str, float]]:
        return [(self.name, _label_text(self.labelnames, k), v) for k, v in self._snapshot()]


class Counter(_ValueMetric):
    """A value that only goes up (``inc``)."""

    kind = "counter"

    def inc(self, amount: float = 1, **labels: Any) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} can only increase (got {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_ValueMetric):
    """A value that goes up and down, or is computed when scraped (:meth:`set_function`)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._function: GaugeFunction | None = None

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1, **labels: Any) -> None:
        self.inc(-amount, **labels)

    def set_function(self, fn: GaugeFunction | None) -> None:
        """Compute the value at scrape time: ``fn()`` returns a float (unlabelled
        gauge) or a mapping of label-value tuples to floats (a plain string is
        accepted as the key of a one-label gauge). It replaces the stored values;
        ``None`` goes back to them. If ``fn`` raises, the stored values are shown."""
        with self._lock:
            self._function = fn

    def _snapshot(self) -> list[tuple[LabelKey, float]]:
        with self._lock:
            fn = self._function
        if fn is None:
            return super()._snapshot()
        try:  # called without the lock: fn may take locks of its own
            result = fn()
            return sorted(self._function_values(result).items())
        except Exception:
            log.warning("gauge function of %s failed; showing its stored values", self.name, exc_info=True)
            return super()._snapshot()

    def _function_values(self, result: float | Mapping[Any, float]) -> dict[LabelKey, float]:
        if isinstance(result, Mapping):
            values: dict[LabelKey, float] = {}
            for key, value in result.items():
                labels = (key,) if isinstance(key, str) else tuple(key)
                if len(labels) != len(self.labelnames):
                    raise ValueError(f"{self.name}: key {key!r} does not match labels {list(self.labelnames)}")
                values[tuple(str(v) for v in labels)] = float(value)
            return values
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: its function must return a mapping")
        return {(): float(result)}


class Histogram(Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"
    _reserved_labels = frozenset({"le"})

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labelnames)
        bounds = [float(b) for b in buckets]
        if not bounds or any(math.isnan(b) for b in bounds):
            raise ValueError(f"histogram {name} needs at least one (non-NaN) bucket bound")
        if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"bucket bounds of histogram {name} must increase strictly: {bounds}")
        if not math.isinf(bounds[-1]):
            bounds.append(math.inf)
        self.buckets: tuple[float, ...] = tuple(bounds)
        # Per label combination: a count per bucket (not cumulative), then the sum and the count.
        self._data: dict[LabelKey, list[float]] = {}
        if not self.labelnames:
            self._data[()] = [0.0] * (len(self.buckets) + 2)

    def observe(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        v = float(value)
        index = len(self.buckets) - 1
        for i, bound in enumerate(self.buckets):
            if v <= bound:
                index = i
                break
        with self._lock:
            data = self._data.get(key)
            if data is None:
                data = self._data[key] = [0.0] * (len(self.buckets) + 2)
            data[index] += 1
            data[-2] += v
            data[-1] += 1

    def samples(self) -> list[tuple[str, str, float]]:
        with self._lock:
            items = sorted((k, list(d)) for k, d in self._data.items())
        out: list[tuple[str, str, float]] = []
        for key, data in items:
            cumulative = 0.0
            for bound, count in zip(self.buckets, data, strict=False):
                cumulative += count
                le = "+Inf" if math.isinf(bound) else format_value(bound)
                out.append((f"{self.name}_bucket", _label_text(self.labelnames, key, ("le", le)), cumulative))
            out.append((f"{self.name}_sum", _label_text(self.labelnames, key), data[-2]))
            out.append((f"{self.name}_count", _label_text(self.labelnames, key), data[-1]))
        return out


M = TypeVar("M", bound=Metric)


class Registry:
    """Metrics by name, rendered together in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: M) -> M:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"a metric named {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self.register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self.register(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = LATENCY_BUCKETS) -> Histogram:
        return self.register(Histogram(name, help, labelnames, buckets))

    def get(self, name: str) -> Metric | None:
        with self._lock:
            return self._metrics.get(name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._metrics

    def render(self) -> str:
        """All metrics in the text exposition format 0.0.4 (see :data:`CONTENT_TYPE`)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines += metric.render()
        return "\n".join(lines) + "\n"


@dataclass
class ServerMetrics:
    """The metrics of ``realtime-ser serve`` (all named ``realtime_ser_...``)."""

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

    def observe_event(self, event: Mapping[str, Any]) -> None:
        """Count one published event (schema events-v1). Never raises: a
        malformed event is counted as far as it goes and logged."""
        try:
            kind = str(event.get("type", "unknown"))
            self.events_total.inc(type=kind)
            if kind == "utterance":
                self.utterances_total.inc()
                latency = event.get("latency_ms")
                if isinstance(latency, Mapping):
                    for stage, ms in latency.items():
                        if isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0:
                            self.stage_latency_seconds.observe(ms / 1000.0, stage=stage)
            elif kind == "error":
                code = str(event.get("code") or "unknown")
                self.errors_total.inc(code=code)
                count = event.get("count")
                if code == "audio_dropped" and isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    self.dropped_frames_total.inc(count)
        except Exception:
            log.warning("could not count event %.200r", event, exc_info=True)


def server_metrics(registry: Registry) -> ServerMetrics:
    """Register the server's metrics in ``registry``."""
    p = "realtime_ser_"
    r = registry
    return ServerMetrics(
        sessions_active=r.gauge(p + "sessions_active", "Live sessions."),
        sessions_total=r.counter(p + "sessions_total", "Sessions started."),
        subscribers_active=r.gauge(p + "subscribers_active", "Connected subscribers."),
        utterances_total=r.counter(p + "utterances_total", "Utterance events published."),
        events_total=r.counter(p + "events_total", "Events published, by type.", ("type",)),
        dropped_frames_total=r.counter(p + "dropped_frames_total", "Audio frames dropped (audio_dropped errors)."),
        subscribers_dropped_total=r.counter(p + "subscribers_dropped_total",
                                            "Subscribers disconnected by the server, by reason.", ("reason",)),
        ingest_bytes_total=r.counter(p + "ingest_bytes_total", "Audio bytes received on ingest connections."),
        errors_total=r.counter(p + "errors_total", "Errors, by code.", ("code",)),
        stage_latency_seconds=r.histogram(p + "stage_latency_seconds",
                                          "Per-stage latency of utterances (latency_ms of the event), in seconds.",
                                          ("stage",), LATENCY_BUCKETS),
        queue_depth=r.gauge(p + "queue_depth", "Items waiting in the server's queues, by queue.", ("queue",)),
    )
