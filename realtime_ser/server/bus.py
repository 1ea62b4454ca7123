"""The event bus behind the hub: how one node's sessions reach every other node.

The hub (hub.py) owns this node's sessions: their bounded event logs and their
subscribers on this node, to which it delivers every event directly, so a node's
own subscribers never wait for anything else (also not while Redis is down). The
bus carries those events to the other nodes and brings the other nodes' sessions
to this node's subscribers. One interface, two implementations:

- :class:`MemoryBus`, the embedded default: one node, nothing shared; the hub's
  own sessions are all there is (``server.bus = ""``).
- :class:`~realtime_ser.server.redis_bus.RedisBus`: every node on one Redis
  (``server.bus = "redis://..."``): Streams for the events, keys with expiry for
  which node is alive and holds which session (docs/deploy.md).

Everything here runs on the server's event loop thread.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import ServerConfig, redact_url
from ..errors import RealtimeSerError
from .metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry

if TYPE_CHECKING:
    from .hub import Hub, SessionRecord, Subscriber

log = logging.getLogger(__name__)


class BusRefused(RealtimeSerError):
    """The cluster refuses a new session: ``code`` is ``session_exists`` or ``too_many_sessions``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BusUnavailable(RealtimeSerError):
    """The bus cannot answer now (Redis unreachable): try again later or another node."""


@dataclass
class BusMetrics:
    """The bus's metrics (``realtime_ser_bus_...``), the same names for both buses."""

    up: Gauge
    pending_events: Gauge
    lost_events_total: Counter
    outages_total: Counter
    written_events_total: Counter
    rejected_events_total: Counter
    sessions_lost_total: Counter
    remote_subscribers: Gauge
    write_seconds: Histogram


def bus_metrics(registry: Registry) -> BusMetrics:
    p = "realtime_ser_bus_"
    r = registry
    return BusMetrics(
        up=r.gauge(p + "up", "1 when the bus works (always for the in-memory bus); 0 while this node cannot "
                             "reach Redis (degraded: its own sessions go on, their events wait)."),
        pending_events=r.gauge(p + "pending_events", "Events of this node's sessions not yet written to Redis."),
        lost_events_total=r.counter(p + "lost_events_total", "Events that did not fit the buffer while Redis was "
                                                              "unreachable (reported to subscribers as events_lost)."),
        outages_total=r.counter(p + "outages_total", "Times this node lost Redis."),
        written_events_total=r.counter(p + "written_events_total", "Events this node wrote to Redis."),
        rejected_events_total=r.counter(p + "rejected_events_total",
                                        "Events Redis refused because the cluster had ended their session "
                                        "(this node was taken for lost) or another node holds its name."),
        sessions_lost_total=r.counter(p + "sessions_lost_total",
                                      "Sessions of lost nodes that this node ended (session.ended node_lost)."),
        remote_subscribers=r.gauge(p + "remote_subscribers",
                                   "Subscribers on this node following sessions of other nodes."),
        write_seconds=r.histogram(p + "write_seconds", "Time of one batch of writes to Redis (one round trip).",
                                  (), LATENCY_BUCKETS),
    )


def owner_key(token: str) -> str:
    """What identifies a token across nodes (for ``server.max_sessions_per_token``) without
    storing it: a short hash; ``-`` when the server has no tokens."""
    if not token:
        return "-"
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


class Bus:
    """What the hub and the server need from a bus. The defaults are what one node needs:
    :class:`MemoryBus` is this class; RedisBus overrides every method."""

    kind = "memory"
    clustered = False

    def __init__(self, metrics: BusMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else bus_metrics(Registry())
        self.node = ""
        self.hub: Hub | None = None

    def attach(self, hub: Hub) -> None:
        self.hub = hub

    async def start(self, node: str) -> None:
        """Begin serving as ``node`` (this node's name in /sessions)."""
        self.node = node

    async def close(self, timeout: float) -> None:
        """Stop; first give this node's last events up to ``timeout`` s to reach the others."""

    def session_name(self, base: str) -> str:
        """A session name made on this node (``vosk-N``) that no other node makes too."""
        return base

    async def claim(self, session: str, owner: str, per_token: int) -> None:
        """Before an ingest session opens: raise :class:`BusRefused` when ``session`` is live on
        another node or the token ``owner`` holds ``per_token`` (> 0) live sessions in the cluster."""

    def opened(self, rec: SessionRecord) -> None:
        """The hub opened a session of this node."""

    def published(self, rec: SessionRecord) -> None:
        """The hub appended an event to ``rec``'s log (and gave it to this node's subscribers)."""

    async def subscribe(self, session: str, since: int | None) -> Subscriber:
        """A subscriber to a session that is not this node's. Raises KeyError (no such
        session), SinceUnavailable, or :class:`BusUnavailable`."""
        raise KeyError(session)

    def unsubscribe(self, sub: Subscriber) -> None:
        """A subscriber (remote, or of all sessions) left."""

    async def sessions(self) -> tuple[list[dict[str, Any]], bool]:
        """Every session the cluster knows (this node's first), and whether the list is
        complete (False while the other nodes' sessions cannot be read)."""
        assert self.hub is not None
        return [self.describe(r) for r in self.hub.sessions.values()], True

    def describe(self, rec: SessionRecord) -> dict[str, Any]:
        return {**rec.describe(), "node": self.node}

    def health(self) -> str | None:
        """None when healthy, else one line saying what is degraded."""
        return None

    @property
    def remote_subscriber_count(self) -> int:
        return 0

    def update_metrics(self) -> None:
        self.metrics.up.set(1)

    def live_nodes(self) -> list[str]:
        return [self.node]


class MemoryBus(Bus):
    """One node, nothing shared: exactly the server as it runs without a cluster."""

    kind = "memory"


def create_bus(srv: ServerConfig, registry: Registry) -> Bus:
    """The bus ``server.bus`` names, with its metrics in ``registry``."""
    metrics = bus_metrics(registry)
    if not srv.bus or srv.bus == "memory":
        return MemoryBus(metrics)
    try:
        from .redis_bus import RedisBus
    except ImportError as exc:
        raise RealtimeSerError(f"server.bus = {redact_url(srv.bus)!r} needs the redis package (redis-py): "
                               f"pip install 'realtime-ser[redis]' ({exc})") from None
    return RedisBus(srv, metrics)
