"""Sessions, their bounded event logs, and subscribers: the server's state.

Everything here runs on the event loop thread (pipelines publish through
``loop.call_soon_threadsafe``), so no locks are needed, and publishing is a
few non-blocking operations per subscriber: the hub never waits for anyone.

The hub holds this node's sessions and gives their events to this node's
subscribers itself; its bus (bus.py) carries them to other nodes and serves
subscribers of sessions that other nodes hold.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .bus import Bus, MemoryBus


@dataclass(eq=False)
class Subscriber:
    """One subscribed connection: a bounded queue of serialized events.

    ``None`` in the queue means no more events will come.
    """

    session: str | None
    queue: asyncio.Queue[str | None]
    on_overflow: Callable[[Subscriber], None]
    backlog: list[str] = field(default_factory=list)
    overflowed: bool = False
    remote: bool = False
    """Follows a session of another node (through the bus)."""
    next_seq: int = 0
    """Remote: the next seq it is owed (so nothing reaches it twice)."""

    def offer(self, text: str | None) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True
            self.on_overflow(self)


@dataclass(eq=False)
class SessionRecord:
    session: str
    log: collections.deque[tuple[int, str]]
    kind: str = "ingest"
    started: float = field(default_factory=time.time)
    ended: float | None = None
    """Wall-clock time it ended (shown in /sessions)."""
    ended_monotonic: float | None = None
    """Monotonic time it ended: retention runs on this, so a clock jump does not expire sessions."""
    next_seq: int = 0
    subscribers: set[Subscriber] = field(default_factory=set)
    owner: int = 0
    """Which configured token opened it (its index), for ``server.max_sessions_per_token``."""
    owner_key: str = ""
    """The same across nodes (bus.owner_key); '' = not counted (vosk-server sessions)."""
    reason: str | None = None
    """Why it ended (``session.ended``'s reason)."""
    stop: Callable[[], None] | None = None
    """Ends the session's input; the flush and session.ended follow."""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def live(self) -> bool:
        return self.ended is None

    @property
    def oldest_seq(self) -> int:
        return self.log[0][0] if self.log else self.next_seq

    def describe(self) -> dict[str, Any]:
        return {"session": self.session, "state": "live" if self.live else "ended", "kind": self.kind,
                "started": self.started, "ended": self.ended, "reason": self.reason, "next_seq": self.next_seq,
                "oldest_seq": self.oldest_seq, "subscribers": len(self.subscribers)}


class SinceUnavailable(Exception):
    def __init__(self, oldest: int) -> None:
        super().__init__(f"events before seq {oldest} are no longer kept; the oldest is {oldest}")
        self.oldest = oldest


class Hub:
    def __init__(self, log_events: int, retain_ended_s: float, subscriber_queue: int,
                 observe: Callable[[dict[str, Any]], None] | None = None, bus: Bus | None = None) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self.all_subscribers: set[Subscriber] = set()
        self._log_events = log_events
        self._retain = retain_ended_s
        self._queue_size = subscriber_queue
        self._observe = observe
        self.on_overflow: Callable[[Subscriber], None] = lambda s: None
        self.bus: Bus = bus if bus is not None else MemoryBus()
        self.bus.attach(self)

    def live_sessions(self) -> list[SessionRecord]:
        return [r for r in self.sessions.values() if r.live]

    def open(self, session: str, kind: str = "ingest") -> SessionRecord:
        rec = SessionRecord(session, collections.deque(maxlen=self._log_events), kind=kind)
        self.sessions[session] = rec
        self.bus.opened(rec)
        return rec

    def new_subscriber(self, session: str | None) -> Subscriber:
        return Subscriber(session, asyncio.Queue(self._queue_size), self.on_overflow)

    def publish(self, event: dict[str, Any]) -> None:
        """Append one event to its session's log and offer it to every subscriber."""
        rec = self.sessions.get(event["session"])
        if rec is None:
            return
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        rec.log.append((event["seq"], text))
        rec.next_seq = event["seq"] + 1
        for sub in list(rec.subscribers) + list(self.all_subscribers):
            sub.offer(text)
        if self._observe is not None:
            self._observe(event)
        if event["type"] == "session.ended":
            rec.ended = time.time()
            rec.ended_monotonic = time.monotonic()
            rec.reason = event.get("reason")
            rec.done.set()
            for sub in list(rec.subscribers):
                sub.offer(None)
            rec.subscribers.clear()
        self.bus.published(rec)

    def expire(self, now: float | None = None) -> int:
        """Forget sessions that ended more than ``retain_ended_s`` ago (``now``: ``time.monotonic()``)."""
        now = time.monotonic() if now is None else now
        old = [k for k, r in self.sessions.items()
               if r.ended_monotonic is not None and now - r.ended_monotonic > self._retain]
        for k in old:
            del self.sessions[k]
        return len(old)

    def subscribe(self, session: str | None, since: int | None) -> Subscriber:
        """Register a subscriber whose backlog holds the retained events from ``since`` on.

        Raises KeyError for an unknown session and SinceUnavailable when ``since``
        is older than the log holds. Backlog and registration happen with no await
        in between, so no event is missed or sent twice.
        """
        sub = self.new_subscriber(session)
        if session is None:
            self.all_subscribers.add(sub)
            return sub
        rec = self.sessions[session]
        if since is not None:
            if since < rec.oldest_seq:
                raise SinceUnavailable(rec.oldest_seq)
            sub.backlog = [text for seq, text in rec.log if seq >= since]
        if rec.live:
            rec.subscribers.add(sub)
        else:
            sub.offer(None)
        return sub

    async def subscribe_any(self, session: str | None, since: int | None) -> Subscriber:
        """:meth:`subscribe` for this node's sessions (and all sessions); a session of another
        node through the bus (which raises KeyError, SinceUnavailable or BusUnavailable)."""
        if session is None or session in self.sessions:
            return self.subscribe(session, since)
        return await self.bus.subscribe(session, since)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.all_subscribers.discard(sub)
        rec = self.sessions.get(sub.session) if sub.session is not None and not sub.remote else None
        if rec is not None:
            rec.subscribers.discard(sub)
        if sub.remote or sub.session is None:
            self.bus.unsubscribe(sub)

    @property
    def subscriber_count(self) -> int:
        return (len(self.all_subscribers) + sum(len(r.subscribers) for r in self.sessions.values())
                + self.bus.remote_subscriber_count)
