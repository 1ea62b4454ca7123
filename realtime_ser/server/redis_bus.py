"""The Redis bus: many nodes behind one address, sharing sessions through Redis.

What Redis holds (every key starts with ``server.bus_prefix``, ``P``):

- ``P:e:SESSION``: a stream per session, its events with the stream ids ``SEQ-1``, so
  ``since=`` is an ``XRANGE`` from ``SEQ-0``, and a write that is retried after a lost
  reply is recognised (its seq is below the session's ``next_seq``) instead of doubled.
  Bounded like the hub's log (``MAXLEN ~ server.log_events``); it expires
  ``server.retain_ended_s`` after the session ended.
- ``P:s:SESSION``: the session's record (node, node instance, state, next_seq, ...).
- ``P:feed``: every session's events in one stream (about ``server.bus_feed_events``
  long), which every node follows with one blocking ``XREAD`` to learn what is new.
- ``P:hb:NODE`` (value: the node process's instance id, expiring after
  ``server.bus_node_ttl_s``), ``P:live:NODE`` (its live sessions, as ``INSTANCE SESSION``),
  ``P:nodes``,
  ``P:sessions`` (every session, by start time) and ``P:owner:KEY`` (live sessions per
  token, for ``server.max_sessions_per_token`` across nodes).

Every write of an event is one Lua script, atomic in Redis: it appends to the session's
stream and the feed and updates the record, or refuses when the session is no longer
this node's (another node ended it for lost). A node writes its sessions' events in
order from their logs in the hub, with one writer task and one round trip per batch;
while Redis is unreachable those logs are the buffer (bounded, counted, the overflow
reported as an ``events_lost`` error event), flushed in order when Redis returns.

A node delivers events of its own sessions to its own subscribers itself (the hub),
and events of other nodes' sessions from Redis: per followed session one follower with
a cursor (the next seq), fed from the feed and, when it sees a gap, from the session's
stream, so each subscriber gets every event once and in order.

Liveness: each node renews its heartbeat key every ``ttl / 5`` s. A node whose key is
gone (or names another instance: it restarted) is lost; any node that has itself been
connected for a whole ``ttl`` ends each of its live sessions with ``session.ended``
(reason ``node_lost``), atomically, so exactly one does.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl
import time
import uuid
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import ServerConfig, redact_url
from ..errors import RealtimeSerError
from .bus import Bus, BusMetrics, BusRefused, BusUnavailable
from .hub import SessionRecord, SinceUnavailable, Subscriber

log = logging.getLogger(__name__)

TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
BATCH = 500
"""Most events written in one round trip."""
FETCH = 1000
"""Most events read from a session's stream in one round trip."""
READ_BLOCK_MS = 1000
PENDING_LIMIT = 10000
"""Feed entries a follower keeps while it fetches a gap; beyond, it reads them from the stream."""

# KEYS: meta, events, owner set, node's live set, nodes, sessions index
# ARGV: session, node, instance, kind, started, owner ('' = none), limit (0 = none), prefix
# Returns 1 claimed, 2 already this instance's (a retry: the hub checks its own sessions), -1 live on
# another node, -2 token limit.
CLAIM = """
local st = redis.call('HMGET', KEYS[1], 'state', 'node', 'instance')
if st[1] == 'live' then
  if st[2] == ARGV[2] and st[3] == ARGV[3] then return 2 end
  return -1
end
local limit = tonumber(ARGV[7])
if limit > 0 and ARGV[6] ~= '' then
  if redis.call('SCARD', KEYS[3]) >= limit then
    for _, s in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      if redis.call('HGET', ARGV[8] .. ':s:' .. s, 'state') ~= 'live' then redis.call('SREM', KEYS[3], s) end
    end
    if redis.call('SCARD', KEYS[3]) >= limit then return -2 end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'session', ARGV[1], 'state', 'live', 'node', ARGV[2], 'instance', ARGV[3],
           'kind', ARGV[4], 'started', ARGV[5], 'owner', ARGV[6], 'next_seq', 0, 't', 0,
           'utterances', 0, 'partials', 0, 'errors', 0)
if ARGV[6] ~= '' then redis.call('SADD', KEYS[3], ARGV[1]) end
redis.call('SADD', KEYS[4], ARGV[3] .. ' ' .. ARGV[1])
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1])
return 1
"""

# KEYS: meta, events, feed, owner set, node's live set
# ARGV: session, node, instance, seq, text, type, t, session maxlen, feed maxlen, retain ms, now, end reason
# Returns 1 written, 0 written before (a retry), -1 refused (not this instance's session, or it ended).
APPEND = """
local h = redis.call('HMGET', KEYS[1], 'node', 'instance', 'state', 'next_seq', 'lost')
if h[1] ~= ARGV[2] or h[2] ~= ARGV[3] or h[5] then return -1 end
local seq = tonumber(ARGV[4])
if seq < tonumber(h[4]) then return 0 end
if h[3] ~= 'live' then return -1 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], ARGV[4] .. '-1', 'e', ARGV[5], 'y', ARGV[6])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 's', ARGV[1], 'q', ARGV[4], 'e', ARGV[5],
           'y', ARGV[6], 'n', ARGV[3])
redis.call('HSET', KEYS[1], 'next_seq', seq + 1, 't', ARGV[7])
if ARGV[6] == 'utterance' then redis.call('HINCRBY', KEYS[1], 'utterances', 1)
elseif ARGV[6] == 'transcript.partial' then redis.call('HINCRBY', KEYS[1], 'partials', 1)
elseif ARGV[6] == 'error' then redis.call('HINCRBY', KEYS[1], 'errors', 1)
elseif ARGV[6] == 'session.ended' then
  redis.call('HSET', KEYS[1], 'state', 'ended', 'ended', ARGV[11], 'reason', ARGV[12])
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('SREM', KEYS[5], ARGV[3] .. ' ' .. ARGV[1])
end
return 1
"""

# KEYS: meta, events, feed, owner set, node's live set, the node's heartbeat
# ARGV: session, instance, next_seq (as read), event text, session maxlen, feed maxlen, retain ms, now
# Returns 1 ended, 0 not needed (ended already, or that instance is alive), -1 it moved on (read again).
TAKE_OVER = """
local h = redis.call('HMGET', KEYS[1], 'state', 'instance', 'next_seq')
if h[1] ~= 'live' or h[2] ~= ARGV[2] then return 0 end
if redis.call('GET', KEYS[6]) == ARGV[2] then return 0 end
if h[3] ~= ARGV[3] then return -1 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], ARGV[3] .. '-1', 'e', ARGV[4], 'y', 'session.ended')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 's', ARGV[1], 'q', ARGV[3], 'e', ARGV[4],
           'y', 'session.ended', 'n', ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'ended', 'ended', ARGV[8], 'reason', 'node_lost', 'lost', 1,
           'next_seq', tonumber(ARGV[3]) + 1)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[2] .. ' ' .. ARGV[1])
return 1
"""

# KEYS: heartbeat; ARGV: instance. Deletes the heartbeat only if it is this instance's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _seq(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.feed = f"{prefix}:feed"
        self.nodes = f"{prefix}:nodes"
        self.sessions = f"{prefix}:sessions"
        self.no_owner = f"{prefix}:owner:-none-"

    def meta(self, session: str) -> str:
        return f"{self.prefix}:s:{session}"

    def events(self, session: str) -> str:
        return f"{self.prefix}:e:{session}"

    def owner(self, key: str) -> str:
        return f"{self.prefix}:owner:{key}" if key else self.no_owner

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}:hb:{node}"

    def live(self, node: str) -> str:
        return f"{self.prefix}:live:{node}"


@dataclass(eq=False)
class _Out:
    """A session of this node on its way into Redis."""

    rec: SessionRecord
    cursor: int = 0
    """The next seq to write."""
    registered: bool = False
    rejected: bool = False
    lost: list[tuple[int, int, float]] = field(default_factory=list)
    """Ranges (first, last, t) dropped before they were written, to report as events_lost."""

    @property
    def pending(self) -> int:
        return max(0, self.rec.next_seq - self.cursor)


@dataclass(eq=False)
class _Follower:
    """A session of another node that this node's subscribers follow."""

    session: str
    cursor: int | None = None
    """The next seq to deliver (None until the first subscriber says where to start)."""
    subs: set[Subscriber] = field(default_factory=set)
    pending: dict[int, tuple[str, str]] = field(default_factory=dict)
    fetching: bool = False
    joining: int = 0
    ended: bool = False
    progress: float = field(default_factory=time.monotonic)


class RedisBus(Bus):
    kind = "redis"
    clustered = True

    def __init__(self, srv: ServerConfig, metrics: BusMetrics | None = None) -> None:
        super().__init__(metrics)
        self.url = srv.bus
        self.k = _Keys(srv.bus_prefix)
        self.instance = uuid.uuid4().hex[:12]
        self._ttl_s = srv.bus_node_ttl_s
        self._beat_s = max(0.2, srv.bus_node_ttl_s / 5)
        self._retain_ms = int(srv.retain_ended_s * 1000)
        self._log_len = srv.log_events
        self._feed_len = srv.bus_feed_events
        self._cap = srv.bus_buffer_events
        # One immediate retry on a broken connection: after Redis restarts, every pooled connection
        # is dead and its first use fails; the retry reconnects. Timeouts are not retried, so a
        # Redis that stopped answering is an outage after one socket_timeout. Every write is
        # safe to repeat (the scripts recognise a second attempt).
        common: dict[str, Any] = {"socket_connect_timeout": 2.0, "health_check_interval": 0,
                                  "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))}
        self.r = aioredis.from_url(self.url, socket_timeout=3.0, max_connections=64, **common)
        # The feed reader blocks in XREAD for up to READ_BLOCK_MS: its own connection.
        self.rr = aioredis.from_url(self.url, socket_timeout=READ_BLOCK_MS / 1000 + 3.0, max_connections=2,
                                    **common)
        self._claim = self.r.register_script(CLAIM)
        self._append = self.r.register_script(APPEND)
        self._take_over_script = self.r.register_script(TAKE_OVER)
        self._release = self.r.register_script(RELEASE)
        self.connected = False
        self._up_since: float | None = None
        self._down_since = time.monotonic()
        self._down_reason = "not connected yet"
        self._resync = False
        self._outs: dict[str, _Out] = {}
        self._dirty: dict[str, None] = {}
        self._claimed: set[str] = set()
        self._wake = asyncio.Event()
        self._followers: dict[str, _Follower] = {}
        self._delivered: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._nodes: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_sweep = 0.0
        self._last_beat = 0.0
        self._clash_until = 0.0
        self._feed_last: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, node: str) -> None:
        try:
            await self._start(node)
        except BaseException:
            await self.r.aclose()
            await self.rr.aclose()
            raise

    async def _start(self, node: str) -> None:
        self.node = node
        where = redact_url(self.url)
        try:
            await self.r.ping()
        except (AuthenticationError, ResponseError) as exc:
            raise RealtimeSerError(f"Redis at {where} refused this node: {exc} (check the user and password in "
                                   "server.bus / REALTIME_SER_BUS)") from None
        except TRANSIENT as exc:
            if _is_tls_error(exc):
                raise RealtimeSerError(f"cannot open TLS to Redis at {where}: {exc} (for a private CA, add "
                                       "?ssl_ca_certs=PEM to the rediss:// URL)") from None
            log.warning("cannot reach Redis at %s (%s); serving this node's own sessions until it answers", where,
                        exc)
            self._set_down(exc)
        else:
            await self._wait_for_name(node)
            await self._heartbeat()
            self._feed_last = await self._feed_tail()  # subscribers from now on get all that follows
            self._set_up()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop(), name="bus-writer"),
                       loop.create_task(self._read_loop(), name="bus-reader"),
                       loop.create_task(self._keep_loop(), name="bus-keeper")]
        log.info("node %s (instance %s) on the Redis bus at %s", node, self.instance, where)

    async def _wait_for_name(self, node: str) -> None:
        """A node restarted under its name waits until its earlier life's heartbeat expires (at
        most ``bus_node_ttl_s``); a heartbeat that is renewed meanwhile belongs to a running node
        with the same name, and this one refuses to start."""
        key = self.k.heartbeat(node)
        held, left = await self.r.get(key), await self.r.pttl(key)
        if held is None:
            return
        log.info("node name %s was held by instance %s until moments ago: waiting up to %.1f s for it to expire",
                 node, _text(held), max(left, 0) / 1000)
        deadline = time.monotonic() + self._ttl_s + self._beat_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, self._beat_s))
            now_held, now_left = await self.r.get(key), await self.r.pttl(key)
            if now_held is None:
                return
            if now_held != held or now_left > left + 100:
                raise RealtimeSerError(f"node name {node!r} is in use by a running node (instance "
                                       f"{_text(now_held)}); give each node its own name (--node, server.node)")
            left = now_left
        raise RealtimeSerError(f"node name {node!r} is still held in Redis after {self._ttl_s + self._beat_s:.1f} s")

    async def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._dirty and self.connected and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        if self._dirty:
            log.warning("%d events of %d sessions did not reach Redis before shutdown", self._pending_total(),
                        len(self._dirty))
        self._closing = True
        for task in self._tasks:
            task.cancel()
        done, stuck = await asyncio.wait(self._tasks, timeout=2.0)
        if stuck:
            log.warning("%d bus tasks did not stop in time", len(stuck))
        if self.connected:
            try:  # the others end what this node still holds at once, instead of after the ttl
                await self._release(keys=[self.k.heartbeat(self.node)], args=[self.instance])
            except TRANSIENT + (ResponseError,):
                pass
        for f in list(self._followers.values()):
            for sub in list(f.subs):
                sub.offer(None)
        self._followers.clear()
        await self.r.aclose()
        await self.rr.aclose()

    def session_name(self, base: str) -> str:
        return f"{base}-{self.instance[:8]}"

    # -- connection state -------------------------------------------------------------------

    def _set_down(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:200]
        if self.connected:
            log.warning("lost Redis at %s (%s): sessions go on; their events wait for it (at most %d)",
                        redact_url(self.url), reason, self._cap)
            self.metrics.outages_total.inc()
            self._down_since = time.monotonic()
        self.connected = False
        self._up_since = None
        self._down_reason = reason

    def _set_up(self) -> None:
        if self.connected:
            return
        was_down = time.monotonic() - self._down_since
        self.connected = True
        self._up_since = time.monotonic()
        if self._outs or self._followers:
            log.info("Redis at %s answers again after %.1f s: writing %d waiting events", redact_url(self.url),
                     was_down, self._pending_total())
        self._resync = True
        for session in self._outs:
            self._dirty[session] = None
        self._wake.set()
        for f in self._followers.values():
            self._fetch(f)

    def health(self) -> str | None:
        if self.connected:
            return None
        return (f"Redis at {redact_url(self.url)} unreachable for {time.monotonic() - self._down_since:.0f} s "
                f"({self._down_reason}); {self._pending_total()} events of this node wait for it")

    def update_metrics(self) -> None:
        self.metrics.up.set(1 if self.connected else 0)
        self.metrics.pending_events.set(self._pending_total())
        self.metrics.remote_subscribers.set(self.remote_subscriber_count)

    @property
    def remote_subscriber_count(self) -> int:
        return sum(len(f.subs) for f in self._followers.values())

    def live_nodes(self) -> list[str]:
        return list(self._nodes)

    # -- this node's sessions into Redis ------------------------------------------------------------

    async def claim(self, session: str, owner: str, per_token: int) -> None:
        previous = self._outs.get(session)
        if previous is not None and not previous.rejected:
            # The name's last session here ended but is not all in Redis yet: it goes first.
            deadline = time.monotonic() + 2.0
            while self._outs.get(session) is previous and self.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self._outs.get(session) is previous:
                raise BusRefused("session_exists", f"session {session!r} just ended on this node and is not yet "
                                                   "all written to Redis; try again in a moment")
        if not self.connected:
            return  # registered by the writer when Redis answers; checked on this node only meanwhile
        try:
            result = await self._claim(keys=self._claim_keys(session, owner),
                                       args=[session, self.node, self.instance, "ingest", repr(time.time()), owner,
                                             per_token, self.k.prefix])
        except TRANSIENT as exc:
            self._set_down(exc)
            return
        if result == -1:
            raise BusRefused("session_exists", f"session {session!r} is already live (on this or another node)")
        if result == -2:
            raise BusRefused("too_many_sessions", f"this token already has its maximum of {per_token} live "
                                                  "sessions in the cluster (server.max_sessions_per_token); try later")
        self._claimed.add(session)

    def _claim_keys(self, session: str, owner: str) -> list[str]:
        return [self.k.meta(session), self.k.events(session), self.k.owner(owner), self.k.live(self.node),
                self.k.nodes, self.k.sessions]

    def opened(self, rec: SessionRecord) -> None:
        out = _Out(rec, registered=rec.session in self._claimed)
        self._claimed.discard(rec.session)
        self._outs[rec.session] = out

    def published(self, rec: SessionRecord) -> None:
        out = self._outs.get(rec.session)
        if out is None or out.rec is not rec:
            return
        if out.rejected:
            if not rec.live:
                del self._outs[rec.session]
            return
        self._dirty[rec.session] = None
        self._wake.set()
        if not self.connected:
            self._enforce_cap()

    def _pending_total(self) -> int:
        return sum(o.pending for o in self._outs.values() if not o.rejected)

    def _enforce_cap(self) -> None:
        """Over ``bus_buffer_events`` waiting: drop the oldest (the sessions opened first lose theirs
        first), never a session's newest event (it may be its session.ended)."""
        excess = self._pending_total() - self._cap
        for out in list(self._outs.values()):
            if excess <= 0:
                return
            drop = min(excess, out.pending - 1)
            if drop > 0 and not out.rejected:
                self._lose(out, out.cursor, out.cursor + drop - 1, "it was held in memory")
                excess -= drop

    def _lose(self, out: _Out, first: int, last: int, why: str) -> None:
        rec = out.rec
        t = 0.0
        if rec.log and last + 1 >= rec.oldest_seq and last + 1 < rec.next_seq:
            try:
                t = float(json.loads(rec.log[last + 1 - rec.oldest_seq][1]).get("t", 0.0))
            except (ValueError, TypeError, IndexError):
                t = 0.0
        self.metrics.lost_events_total.inc(last - first + 1)
        if out.lost and out.lost[-1][1] + 1 == first:
            first = out.lost.pop()[0]
        else:
            log.warning("session %s: events from seq %d could not be kept for Redis (%s); reporting them lost",
                        rec.session, first, why)
        out.lost.append((first, last, t))
        out.cursor = max(out.cursor, last + 1)

    def _lost_event(self, session: str, first: int, last: int, t: float) -> str:
        count = last - first + 1
        event = {"v": 1, "type": "error", "session": session, "seq": last, "t": t, "code": "events_lost",
                 "message": f"events {first}..{last} of this session ({count}) could not be written to Redis while "
                            f"the node that holds it could not reach Redis, and did not fit what it keeps "
                            f"(server.bus_buffer_events, server.log_events): subscribers on other nodes never "
                            f"get them; this error takes the place of the last",
                 "fatal": False, "count": count, "first_seq": first, "last_seq": last}
        return json.dumps(event, separators=(",", ":"))

    # The loops below end on ``_closing`` as well as on cancellation: redis-py may turn a
    # cancellation in the middle of a read into a connection error, which they would retry.

    async def _write_loop(self) -> None:
        backoff = 0.05
        while not self._closing:
            if not self._dirty:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if not self.connected:
                    await self.r.ping()
                    self._set_up()
                if self._resync:
                    await self._resync_outs()
                await self._flush()
                backoff = 0.05
            except TRANSIENT + (ResponseError,) as exc:  # ResponseError: e.g. Redis out of memory
                if self._closing:
                    return
                self._set_down(exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)

    async def _resync_outs(self) -> None:
        """After an outage Redis is the truth of what it holds: continue each session from its
        ``next_seq`` there (lower when Redis lost a tail, higher when writes landed unanswered)."""
        outs = [o for o in self._outs.values() if not o.rejected]
        pipe = self.r.pipeline(transaction=False)
        for out in outs:
            pipe.hmget(self.k.meta(out.rec.session), "node", "instance", "state", "next_seq", "lost")
        rows = await pipe.execute()
        for out, (node, instance, _state, next_seq, lost) in zip(outs, rows, strict=True):
            if node is None:  # Redis lost the session (restarted without its data): write it again
                out.registered = False
                out.cursor = 0
                out.lost = []
            elif _text(node) != self.node or _text(instance) != self.instance or lost is not None:
                self._reject(out, "the cluster ended it while this node could not reach Redis (taken for lost)")
            else:  # go on from what Redis holds; _take skips what was dropped meanwhile
                out.registered = True
                out.cursor = int(next_seq)
                out.lost = [r for r in out.lost if r[1] >= out.cursor]
        self._resync = False

    def _reject(self, out: _Out, why: str) -> None:
        if out.rejected:
            return
        out.rejected = True
        self.metrics.rejected_events_total.inc(out.pending)
        self._dirty.pop(out.rec.session, None)
        log.error("session %s: Redis refuses its events: %s; its subscribers on this node still get them; "
                  "ending it", out.rec.session, why)
        if out.rec.live and out.rec.stop is not None:
            out.rec.stop()

    def _take(self, out: _Out, limit: int) -> list[tuple[int, str, str, float]]:
        """Up to ``limit`` (seq, text, type, t) to write next: first the reports of lost ranges,
        then the events from the cursor."""
        rec = out.rec
        for first, last, _t in out.lost:
            if first <= out.cursor <= last:
                out.cursor = last + 1  # dropped: reported, not written
        if out.cursor < rec.oldest_seq:
            self._lose(out, out.cursor, rec.oldest_seq - 1, "the session's log had dropped them")
        items = [(last, self._lost_event(rec.session, first, last, t), "error", t) for first, last, t in out.lost]
        start = out.cursor - rec.oldest_seq
        for seq, text in islice(rec.log, start, start + max(0, limit - len(items))):
            try:
                head = json.loads(text)
                kind, t = str(head.get("type", "")), float(head.get("t", 0.0))
            except (ValueError, TypeError):
                kind, t = "", 0.0
            items.append((seq, text, kind, t))
        return items

    async def _flush(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        ops: list[tuple[_Out, str, int]] = []
        n = 0
        for session in list(self._dirty):
            out = self._outs.get(session)
            if out is None or out.rejected:
                self._dirty.pop(session, None)
                continue
            rec = out.rec
            if not out.registered:
                await self._claim(keys=self._claim_keys(rec.session, rec.owner_key),
                                  args=[rec.session, self.node, self.instance, rec.kind, repr(rec.started),
                                        rec.owner_key, 0, self.k.prefix], client=pipe)
                ops.append((out, "claim", -1))
            for seq, text, kind, t in self._take(out, BATCH - n):
                reason = ""
                if kind == "session.ended":
                    reason = rec.reason or ""
                await self._append(keys=[self.k.meta(rec.session), self.k.events(rec.session), self.k.feed,
                                         self.k.owner(rec.owner_key), self.k.live(self.node)],
                                   args=[rec.session, self.node, self.instance, seq, text, kind, repr(t),
                                         self._log_len, self._feed_len, self._retain_ms, repr(time.time()), reason],
                                   client=pipe)
                ops.append((out, "append", seq))
                n += 1
            if n >= BATCH:
                break
        if ops:
            t0 = time.monotonic()
            try:
                results = await pipe.execute(raise_on_error=False)
            finally:
                await pipe.reset()  # also when loading the scripts failed (execute resets only after)
            self.metrics.write_seconds.observe(time.monotonic() - t0)
            failed: BaseException | None = None
            stopped: set[int] = set()
            for (out, what, seq), result in zip(ops, results, strict=True):
                if id(out) in stopped or out.rejected:
                    continue
                if isinstance(result, BaseException):
                    failed = failed or result
                    stopped.add(id(out))
                elif what == "claim":
                    if result == -1:
                        self._reject(out, "another node holds a live session of this name")
                    else:
                        out.registered = True
                elif result == -1:
                    self._reject(out, "the cluster ended it (this node was taken for lost)")
                else:
                    if out.lost and out.lost[0][1] == seq and seq < out.cursor:
                        out.lost.pop(0)
                    else:
                        out.cursor = max(out.cursor, seq + 1)
                    if result == 1:
                        self.metrics.written_events_total.inc()
            if failed is not None:
                raise failed
        for session in list(self._dirty):
            out = self._outs.get(session)
            if out is None or out.rejected or (out.pending == 0 and not out.lost):
                self._dirty.pop(session, None)
                if out is not None and not out.rec.live and (out.rejected or out.pending == 0):
                    del self._outs[session]

    # -- other nodes' sessions out of Redis ----------------------------------------------------------

    async def subscribe(self, session: str, since: int | None) -> Subscriber:
        if not self.connected:
            raise BusUnavailable("this node cannot reach Redis now, so it cannot serve sessions of other nodes; "
                                 "try again shortly or another node")
        assert self.hub is not None
        f = self._followers.get(session) or self._add_follower(session, None)
        f.joining += 1
        try:
            return await self._join(f, session, since)
        except TRANSIENT as exc:
            self._set_down(exc)
            raise BusUnavailable(f"Redis did not answer ({exc}); try again shortly") from None
        finally:
            f.joining -= 1
            self._prune(f)

    async def _join(self, f: _Follower, session: str, since: int | None) -> Subscriber:
        assert self.hub is not None
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.k.meta(session), "state", "next_seq")
        pipe.xrange(self.k.events(session), count=1)
        (state, next_seq), first = await pipe.execute()
        if state is None:
            raise KeyError(session)
        sub = self.hub.new_subscriber(session)
        sub.remote = True
        oldest = _seq(first[0][0]) if first else int(next_seq)
        if since is not None:
            if since < oldest:
                raise SinceUnavailable(oldest)
            sub.next_seq = since
        elif _text(state) != "live":
            sub.offer(None)  # ended, and nothing asked for: like a session of this node
            return sub
        else:
            sub.next_seq = f.cursor if f.cursor is not None else int(next_seq)
        while True:
            entries = await self._xrange(session, sub.next_seq)
            ended = False
            for entry_id, fields in entries:
                seq = _seq(entry_id)
                if seq < sub.next_seq:
                    continue
                sub.backlog.append(_text(fields[b"e"]))
                sub.next_seq = seq + 1
                ended = ended or fields.get(b"y") == b"session.ended"
            if ended:
                sub.offer(None)
                return sub
            if len(entries) == FETCH:
                continue
            # Caught up with Redis. Join the follower (``joining`` keeps it from being pruned)
            # unless it has already passed events that this subscriber lacks (they are in Redis:
            # read again), with no await between the check and the join.
            if f.ended:
                continue  # it ended while this read: the stream has the end now; read to it
            if f.cursor is None:
                f.cursor = sub.next_seq
                f.subs.add(sub)
                self._drain(f)
                return sub
            if f.cursor <= sub.next_seq:
                f.subs.add(sub)
                return sub

    async def _xrange(self, session: str, start: int) -> list[tuple[Any, dict[bytes, bytes]]]:
        """Up to FETCH entries of a session's stream from seq ``start`` on."""
        entries: Any = await self.r.xrange(self.k.events(session), min=f"{start}-0", count=FETCH)
        return list(entries or [])

    def _add_follower(self, session: str, cursor: int | None) -> _Follower:
        f = _Follower(session, cursor)
        self._followers[session] = f
        return f

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub.remote:
            f = self._followers.get(sub.session or "")
            if f is not None:
                f.subs.discard(sub)
                self._prune(f)
        else:
            for f in list(self._followers.values()):
                self._prune(f)

    def _prune(self, f: _Follower) -> None:
        assert self.hub is not None
        if f.subs or f.joining or f.fetching or (self.hub.all_subscribers and not f.ended):
            return
        if self._followers.get(f.session) is f:
            del self._followers[f.session]
            if f.cursor is not None:
                self._remember(f.session, f.cursor)

    def _remember(self, session: str, cursor: int) -> None:
        self._delivered[session] = cursor
        self._delivered.move_to_end(session)
        while len(self._delivered) > 10000:
            self._delivered.popitem(last=False)

    def _deliver(self, f: _Follower, seq: int, text: str, kind: str) -> None:
        assert self.hub is not None
        assert f.cursor is not None
        if seq < f.cursor or f.ended:
            return
        f.cursor = seq + 1
        f.progress = time.monotonic()
        declared = kind == "error" and '"code":"events_lost"' in text
        for sub in list(f.subs):
            if seq < sub.next_seq:
                continue
            if seq > sub.next_seq and not declared:
                # Events this subscriber is owed are gone from Redis (trimmed): like a subscriber that
                # fell behind, it is closed and can resume with since= (and learn what is left).
                log.warning("subscriber of %s missed events %d..%d (no longer in Redis); closing it", f.session,
                            sub.next_seq, seq - 1)
                f.subs.discard(sub)
                sub.overflowed = True
                sub.on_overflow(sub)
                continue
            sub.next_seq = seq + 1
            sub.offer(text)
        for sub in list(self.hub.all_subscribers):
            sub.offer(text)
        if kind == "session.ended":
            f.ended = True
            for sub in list(f.subs):
                sub.offer(None)
            f.subs.clear()
            f.pending.clear()
            self._remember(f.session, f.cursor)
            if self._followers.get(f.session) is f and not f.joining:
                del self._followers[f.session]

    def _drain(self, f: _Follower) -> None:
        """Deliver the feed entries that waited, in order; fetch from the stream at a gap."""
        if f.cursor is None or f.fetching:
            return
        while f.pending and not f.ended:
            lowest = min(f.pending)
            if lowest < f.cursor:
                del f.pending[lowest]
            elif lowest == f.cursor:
                text, kind = f.pending.pop(lowest)
                self._deliver(f, lowest, text, kind)
            else:
                self._fetch(f)
                return

    def _fetch(self, f: _Follower) -> None:
        if f.fetching or f.cursor is None or f.ended:
            return
        f.fetching = True
        asyncio.get_running_loop().create_task(self._fetch_task(f), name=f"bus-fetch-{f.session}")

    async def _fetch_task(self, f: _Follower) -> None:
        """Read the session's stream from the follower's cursor until nothing waits any more."""
        try:
            while not f.ended and not self._closing:
                assert f.cursor is not None
                try:
                    entries = await self._xrange(f.session, f.cursor)
                except TRANSIENT as exc:
                    self._set_down(exc)
                    await asyncio.sleep(0.5)
                    continue
                for entry_id, fields in entries:
                    self._deliver(f, _seq(entry_id), _text(fields[b"e"]), _text(fields.get(b"y", b"")))
                for seq in [s for s in f.pending if s < f.cursor]:
                    del f.pending[seq]
                while f.cursor in f.pending and not f.ended:
                    text, kind = f.pending.pop(f.cursor)
                    self._deliver(f, f.cursor, text, kind)
                if len(entries) == FETCH:
                    continue
                if f.pending and not entries:
                    # The feed has events that the stream no longer holds before them: go on from there.
                    lowest = min(f.pending)
                    text, kind = f.pending.pop(lowest)
                    self._deliver(f, lowest, text, kind)
                    continue
                break
        finally:
            f.fetching = False
            self._prune(f)

    async def _feed_tail(self) -> str:
        tail = await self.rr.xrevrange(self.k.feed, count=1)
        return _text(tail[0][0]) if tail else "0-0"

    async def _read_loop(self) -> None:
        """Follow the feed: every event of every node, handed to the followers of its session."""
        last = self._feed_last
        while not self._closing:
            try:
                if last is None:
                    last = await self._feed_tail()
                reply: Any = await self.rr.xread({self.k.feed: last}, count=1000, block=READ_BLOCK_MS)
            except TRANSIENT + (ResponseError,):
                if self._closing:
                    return
                await asyncio.sleep(0.2)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    try:
                        self._on_feed(fields)
                    except (KeyError, ValueError):
                        log.warning("ignoring a malformed feed entry %s", last)

    def _on_feed(self, fields: dict[bytes, bytes]) -> None:
        assert self.hub is not None
        if _text(fields[b"n"]) == self.instance:
            return  # one of this node's sessions: its subscribers here had it from the hub
        session = _text(fields[b"s"])
        seq = int(fields[b"q"])
        own = self.hub.sessions.get(session)
        if own is not None:
            if own.live:
                return
            del self.hub.sessions[session]  # the name ended here and lives on another node now
        f = self._followers.get(session)
        if f is None:
            if not self.hub.all_subscribers:
                return
            f = self._add_follower(session, None)
        if f.cursor is None and self.hub.all_subscribers:
            # Subscribers of all sessions get each session from the first event this node sees.
            f.cursor = max(seq, self._delivered.pop(session, 0))
        text, kind = _text(fields[b"e"]), _text(fields.get(b"y", b""))
        if f.cursor is not None and seq < f.cursor:
            return
        if f.cursor is None or f.fetching or seq > f.cursor:
            # Not yet placed (a subscriber is joining), being fetched, or after a gap: wait in order.
            if len(f.pending) >= PENDING_LIMIT:
                f.pending.clear()  # the stream holds them: the fetch reads them from there
            f.pending[seq] = (text, kind)
            self._drain(f)
            return
        self._deliver(f, seq, text, kind)
        self._drain(f)

    # -- liveness -----------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.k.heartbeat(self.node), self.instance, px=int(self._ttl_s * 1000), get=True)
        pipe.sadd(self.k.nodes, self.node)
        held, _ = await pipe.execute()
        now = time.monotonic()
        if held is not None and _text(held) != self.instance and self._last_beat > 0:
            # Another process renewed this name's heartbeat since this one did: two nodes share
            # a name. Neither may end the other's sessions as an earlier life of its own.
            if now >= self._clash_until:
                log.error("another process runs as node %s (instance %s): give each node its own server.node; "
                          "until then this node ends none of that name's sessions", self.node, _text(held))
            self._clash_until = now + 60.0
        if held is None and self.connected and now - self._last_beat < self._ttl_s * 0.8:
            # The heartbeat set moments ago is gone: Redis restarted without its data (between two
            # beats, so no outage was seen). Check every session against what Redis holds now.
            log.warning("Redis at %s lost this node's heartbeat (restarted without its data?): checking and "
                        "writing again what this node holds", redact_url(self.url))
            self._resync = True
            for session in self._outs:
                self._dirty[session] = None
            self._wake.set()
        self._last_beat = now

    async def _keep_loop(self) -> None:
        while not self._closing:
            try:
                await self._heartbeat()
                self._set_up()
                await self._reap()
                if time.monotonic() - self._last_sweep >= 2.0:
                    await self._sweep()
                    self._last_sweep = time.monotonic()
            except TRANSIENT + (ResponseError,) as exc:
                if self._closing:
                    return
                self._set_down(exc)
            await asyncio.sleep(self._beat_s)

    async def _reap(self) -> None:
        """End the live sessions of lost nodes. Other nodes are judged only after this node has
        been connected for a whole ttl (so after an outage every node had time to beat again);
        an earlier instance of this node's own name at once."""
        nodes = sorted(_text(n) for n in await self.r.smembers(self.k.nodes))
        pipe = self.r.pipeline(transaction=False)
        for node in nodes:
            pipe.get(self.k.heartbeat(node))
            pipe.smembers(self.k.live(node))
        replies = await pipe.execute()
        judge = self._up_since is not None and time.monotonic() - self._up_since >= self._ttl_s + self._beat_s
        alive = []
        for i, node in enumerate(nodes):
            beat = _text(replies[2 * i]) if replies[2 * i] is not None else None
            live = sorted(_text(m) for m in replies[2 * i + 1])
            if beat is not None:
                alive.append(node)
            if not live:
                if beat is None and node != self.node:
                    await self.r.srem(self.k.nodes, node)
                continue
            for member in live:
                instance, _, session = member.partition(" ")
                if instance == beat or (node == self.node and instance == self.instance):
                    continue  # that node (this one) is alive
                if node != self.node and not judge:
                    continue
                if node == self.node and time.monotonic() < self._clash_until:
                    continue
                await self._judge(node, instance, session)
        self._nodes = alive

    async def _judge(self, node: str, instance: str, session: str) -> None:
        fields = ("state", "instance", "next_seq", "t", "owner", "utterances", "partials", "errors")
        for _ in range(3):
            values = await self.r.hmget(self.k.meta(session), *fields)
            row = {k: (_text(v) if v is not None else None) for k, v in zip(fields, values, strict=True)}
            if row["state"] != "live" or row["instance"] != instance:
                await self.r.srem(self.k.live(node), f"{instance} {session}")
                return
            t = float(row["t"] or 0.0)
            seq = int(row["next_seq"] or 0)
            event = {"v": 1, "type": "session.ended", "session": session, "seq": seq,
                     "t": t, "reason": "node_lost", "node": node, "duration": t,
                     "counts": {"utterances": int(row["utterances"] or 0), "frames": 0, "dropped_frames": 0,
                                "discarded_segments": 0, "partials": int(row["partials"] or 0),
                                "errors": int(row["errors"] or 0)}}
            text = json.dumps(event, separators=(",", ":"))
            result = await self._take_over_script(
                keys=[self.k.meta(session), self.k.events(session), self.k.feed, self.k.owner(row["owner"] or ""),
                      self.k.live(node), self.k.heartbeat(node)],
                args=[session, instance, seq, text, self._log_len, self._feed_len, self._retain_ms,
                      repr(time.time())])
            if result == 1:
                self.metrics.sessions_lost_total.inc()
                log.warning("node %s is lost: ended its live session %s (session.ended, reason node_lost)", node,
                            session)
                return
            if result == 0:
                return

    async def _sweep(self) -> None:
        """A follower whose session went on in Redis without it hearing (a gap at the feed's end,
        a feed trimmed past this node) reads the stream."""
        quiet = [f for f in self._followers.values()
                 if f.cursor is not None and not f.fetching and not f.ended and time.monotonic() - f.progress > 1.0]
        if not quiet:
            return
        pipe = self.r.pipeline(transaction=False)
        for f in quiet:
            pipe.hget(self.k.meta(f.session), "next_seq")
        for f, next_seq in zip(quiet, await pipe.execute(), strict=True):
            if next_seq is not None and f.cursor is not None and int(next_seq) > f.cursor:
                self._fetch(f)

    # -- /sessions ----------------------------------------------------------------------------------

    async def sessions(self) -> tuple[list[dict[str, Any]], bool]:
        assert self.hub is not None
        local = {name: self.describe(rec) for name, rec in self.hub.sessions.items()}
        if not self.connected:
            return list(local.values()), False
        try:
            names = [_text(n) for n in await self.r.zrevrange(self.k.sessions, 0, 9999)]
            pipe = self.r.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self.k.meta(name))
                pipe.xrange(self.k.events(name), count=1)
            replies = await pipe.execute()
        except TRANSIENT as exc:
            self._set_down(exc)
            return list(local.values()), False
        rows: list[dict[str, Any]] = []
        stale = []
        for i, name in enumerate(names):
            raw, first = replies[2 * i], replies[2 * i + 1]
            if not raw:
                stale.append(name)
                continue
            if name in local:
                continue
            meta = {_text(k): _text(v) for k, v in raw.items()}
            next_seq = int(meta.get("next_seq", 0))
            f = self._followers.get(name)
            rows.append({"session": name, "state": meta.get("state", "live"), "kind": meta.get("kind", "ingest"),
                         "started": float(meta.get("started", 0.0)),
                         "ended": float(meta["ended"]) if meta.get("ended") else None,
                         "reason": meta.get("reason"), "next_seq": next_seq,
                         "oldest_seq": _seq(first[0][0]) if first else next_seq,
                         "subscribers": len(f.subs) if f is not None else 0, "node": meta.get("node", "")})
        if stale:
            try:
                await self.r.zrem(self.k.sessions, *stale)
            except TRANSIENT:
                pass
        rows += local.values()
        rows.sort(key=lambda r: r["started"])
        return rows, True


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen) or "certificate" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
