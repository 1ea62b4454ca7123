"""The Redis bus with a real ``redis-server`` and real servers (several in one process here;
tests/test_cluster.py runs them as separate ``realtime-ser serve`` processes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import validate_event, validate_stream
from speech import espeak, have_tool, silence
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.redis_server import RedisServer, have_redis
from realtime_ser.config import PipelineConfig, apply_overrides, public_dict
from realtime_ser.errors import ConfigError, RealtimeSerError
from realtime_ser.server import Server

pytestmark = [pytest.mark.skipif(not have_redis(), reason="needs redis-server (apt-get install redis-server)"),
              pytest.mark.skipif(not have_tool("espeak-ng"), reason="needs espeak-ng to make speech")]

BACKENDS: dict[str, Any] = {"none": None}


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([silence(0.3), espeak("hello there, how are you today"), silence(0.8),
                           espeak("I would like to check my order please"), silence(0.8)])


@pytest.fixture
def redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def node_config(url: str, node: str, *more: str) -> PipelineConfig:
    return apply_overrides(PipelineConfig(), ["server.port=0", "asr.backend=none", f"server.bus={url}",
                                              f"server.node={node}", *more])


def run_nodes(configs: list[PipelineConfig], scenario: Callable[..., Awaitable[Any]]) -> Any:
    async def main() -> Any:
        servers = [Server(c, BACKENDS) for c in configs]
        for s in servers:
            await s.start()
        try:
            return await scenario(*servers)
        finally:
            for s in servers:
                await s.shutdown()

    return asyncio.run(main())


async def ingest(url: str, pcm: np.ndarray, session: str, *, token: str | None = None,
                 pace: float = 0.02) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(url + "/ingest", additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "session": session}))

        async def receive() -> None:
            async for m in ws:
                events.append(json.loads(m))

        receiver = asyncio.create_task(receive())
        data = pcm.astype("<i2")
        for i in range(0, len(data), 1600):
            await ws.send(data[i:i + 1600].tobytes())
            await asyncio.sleep(pace)
        await ws.send(json.dumps({"type": "eof"}))
        await receiver
    return events


async def subscribe(url: str, query: str = "", *, count: int | None = None,
                    token: str | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """Events until the server closes (or ``count`` of them); and the close code."""
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(f"{url}/subscribe{query}", additional_headers=headers) as ws:
        try:
            async for m in ws:
                events.append(json.loads(m))
                if count is not None and len(events) >= count:
                    break
        except ConnectionClosed:
            pass
    return events, ws.close_code


async def http(server: Server, path: str, token: str | None = None) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    return await asyncio.to_thread(get)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# -- tests ------------------------------------------------------------------------------------------


def test_bus_urls_are_checked_and_the_password_never_shown() -> None:
    ok = ["", "memory", "redis://localhost", "redis://:pw@10.0.0.5:6380/2", "rediss://user:pw@redis.example:6380/0",
          "rediss://redis.example/0?ssl_ca_certs=/etc/ca.pem", "unix:///run/redis.sock"]
    for url in ok:
        apply_overrides(PipelineConfig(), [f"server.bus={url}"])
    bad = {"http://localhost": "is not allowed", "redis://": "no host", "redis://h:99999": "port",
           "redis://h/x": "database must be a number", "redis://h?ssl_ca_certs=x": "need a rediss://",
           "rediss://h?bogus=1": "unknown option", "unix://": "socket's path"}
    for url, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            apply_overrides(PipelineConfig(), [f"server.bus={url}"])
    with pytest.raises(ConfigError, match="server.node"):
        apply_overrides(PipelineConfig(), ["server.node=a b"])
    shown = public_dict(apply_overrides(PipelineConfig(), ["server.bus=redis://u:secret@h:1/0"]))
    assert shown["server"]["bus"] == "redis://u:<set>@h:1/0"
    with pytest.raises(ConfigError) as err:
        apply_overrides(PipelineConfig(), ["server.bus=redis://:secret@h:99999"])
    assert "secret" not in str(err.value)


def test_events_of_one_node_reach_subscribers_on_another(redis: RedisServer, speech: np.ndarray) -> None:
    async def scenario(a: Server, b: Server) -> None:
        sent = asyncio.create_task(ingest(a.url, speech, "call-1"))
        await wait_for(lambda: "call-1" in a.hub.sessions and a.hub.sessions["call-1"].next_seq >= 2, 20,
                       "the session to start")
        late = asyncio.create_task(subscribe(b.url, "?session=call-1"))  # from now on
        whole = asyncio.create_task(subscribe(b.url, "?session=call-1&since=0"))
        own = await sent
        validate_stream(own)
        whole_events, code = await whole
        assert code == 1000 and whole_events == own  # the same events, in order, once each
        late_events, _ = await late
        assert late_events == own[-len(late_events):] and late_events[-1]["type"] == "session.ended"
        status, body = await http(b, "/sessions")
        listing = json.loads(body)
        assert status == 200 and listing["bus"] == "redis" and listing["node"] == "B" and listing["complete"]
        assert sorted(listing["nodes"]) == ["A", "B"]
        (row,) = [r for r in listing["sessions"] if r["session"] == "call-1"]
        assert row["node"] == "A" and row["state"] == "ended" and row["reason"] == "end_of_input"
        assert row["next_seq"] == len(own) and row["oldest_seq"] == 0
        assert (await http(b, "/healthz")) == (200, "ok\n")
        metrics = (await http(a, "/metrics"))[1]
        assert "realtime_ser_bus_up 1" in metrics and "realtime_ser_bus_pending_events 0" in metrics
        assert f"realtime_ser_bus_written_events_total {len(own)}" in metrics

    run_nodes([node_config(redis.url, "A"), node_config(redis.url, "B")], scenario)


def test_all_sessions_subscriber_gets_every_session_of_every_node(redis: RedisServer, speech: np.ndarray) -> None:
    async def scenario(a: Server, b: Server) -> None:
        got: list[dict[str, Any]] = []

        async def follow_all() -> None:
            async with connect(a.url + "/subscribe") as ws:
                async for m in ws:
                    got.append(json.loads(m))

        task = asyncio.create_task(follow_all())
        await wait_for(lambda: len(a.hub.all_subscribers) == 1, 5, "the all-sessions subscriber")
        remote, local = await asyncio.gather(ingest(b.url, speech, "on-b"), ingest(a.url, speech[:40000], "on-a"))
        await wait_for(lambda: sum(e["type"] == "session.ended" for e in got) == 2, 10, "both sessions' ends")
        task.cancel()
        assert [e for e in got if e["session"] == "on-b"] == remote
        assert [e for e in got if e["session"] == "on-a"] == local

    run_nodes([node_config(redis.url, "A"), node_config(redis.url, "B")], scenario)


def test_since_resumes_across_nodes_and_old_since_is_refused(redis: RedisServer, speech: np.ndarray) -> None:
    async def scenario(a: Server, b: Server, c: Server) -> None:
        sent = asyncio.create_task(ingest(a.url, speech, "moving", pace=0.05))
        await wait_for(lambda: "moving" in a.hub.sessions, 10, "the session")
        first, _ = await subscribe(a.url, "?session=moving&since=0", count=2)  # on the node that holds it
        second, _ = await subscribe(b.url, f"?session=moving&since={first[-1]['seq'] + 1}", count=1)
        rest, code = await subscribe(c.url, f"?session=moving&since={second[-1]['seq'] + 1}")
        own = await sent
        assert code == 1000 and first + second + rest == own
        again, _ = await subscribe(b.url, "?session=moving&since=3")
        assert again == own[3:]
        # An ended session without since: nothing more to come, a normal close (as on one node).
        assert await subscribe(c.url, "?session=moving") == ([], 1000)
        unknown, code = await subscribe(c.url, "?session=nobody")
        assert code == 4004 and unknown[0]["code"] == "unknown_session"

    configs = [node_config(redis.url, n) for n in "ABC"]
    run_nodes(configs, scenario)


def test_since_older_than_redis_keeps_is_refused(redis: RedisServer) -> None:
    async def scenario(a: Server, b: Server) -> None:
        a.hub.open("chatty")
        for seq in range(400):
            a.hub.publish({"v": 1, "type": "transcript.partial", "session": "chatty", "seq": seq, "t": seq / 10,
                           "speaker": "ch0", "channel": 0, "utterance_id": "ch0-1", "start": 0.0,
                           "text": f"word {seq}"})
            await asyncio.sleep(0.001)  # as a session does: the writer keeps up
        await wait_for(lambda: a.hub.bus.metrics.written_events_total.get() >= 400, 10, "the writes")
        events, code = await subscribe(b.url, "?session=chatty&since=0", count=1)
        assert code == 4010 and events[0]["code"] == "since_unavailable" and events[0]["oldest_seq"] > 0
        oldest = events[0]["oldest_seq"]
        tail, _ = await subscribe(b.url, f"?session=chatty&since={oldest}", count=400 - oldest)
        assert [e["seq"] for e in tail] == list(range(oldest, 400))

    # Redis trims approximately (MAXLEN ~): at least log_events are kept, maybe a few more.
    run_nodes([node_config(redis.url, "A", "server.log_events=100"), node_config(redis.url, "B")], scenario)


def test_tokens_and_per_token_limits_hold_across_nodes(redis: RedisServer, speech: np.ndarray) -> None:
    async def scenario(a: Server, b: Server) -> None:
        short = speech[:16000]
        held = asyncio.create_task(ingest(a.url, np.concatenate([short, silence(3.0)]), "t1-call", token="t1",
                                          pace=0.05))
        await wait_for(lambda: "t1-call" in a.hub.sessions, 10, "the first session")
        # The same token on another node: its one session is live in the cluster.
        async with connect(b.url + "/ingest", additional_headers={"Authorization": "Bearer t1"}) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            refused = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4013 and refused["code"] == "too_many_sessions" and "cluster" in refused["message"]
        # The same session name on another node while it is live there.
        async with connect(b.url + "/ingest", additional_headers={"Authorization": "Bearer t2"}) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "session": "t1-call"}))
            refused = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4000 and refused["code"] == "session_exists"
        other = await ingest(b.url, short, "t2-call", token="t2")  # another token is not limited by t1
        validate_stream(other)
        # Tokens: the same on every node, for subscribers too.
        assert (await http(b, "/sessions"))[0] == 401
        status, body = await http(b, "/sessions", token="t2")
        assert status == 200 and {r["session"] for r in json.loads(body)["sessions"]} == {"t1-call", "t2-call"}
        await held
        # The cluster learns of the end when node A has written it (a few ms after its own client).
        await wait_for(lambda: a.hub.bus._pending_total() == 0, 5, "node A's last writes")  # type: ignore[attr-defined]
        again = await ingest(b.url, short, "t1-second", token="t1")  # t1's first session ended: allowed again
        validate_stream(again)

    extra = ["server.token=t1,t2", "server.max_sessions_per_token=1"]
    run_nodes([node_config(redis.url, "A", *extra), node_config(redis.url, "B", *extra)], scenario)


def test_a_node_without_redis_keeps_its_sessions_and_catches_up(redis: RedisServer) -> None:
    """Redis away: the node goes on (its own subscribers miss nothing), says so on /healthz and
    /metrics, keeps what it can (here 100 events) and, when Redis is back, writes them in order and
    reports the rest as one events_lost error, instead of dropping it silently."""

    async def scenario(a: Server, b: Server) -> None:
        def event(seq: int) -> dict[str, Any]:
            return {"v": 1, "type": "transcript.partial", "session": "long", "seq": seq, "t": seq / 10,
                    "speaker": "ch0", "channel": 0, "utterance_id": "ch0-1", "start": 0.0,
                    "text": f"word {seq}"}

        rec = a.hub.open("long")
        local_sub = a.hub.subscribe("long", 0)
        for seq in range(5):
            a.hub.publish(event(seq))
        await wait_for(lambda: a.hub.bus.metrics.written_events_total.get() >= 5, 10, "the first writes")
        remote = asyncio.create_task(subscribe(b.url, "?session=long&since=0"))
        await wait_for(lambda: b.hub.bus.remote_subscriber_count == 1, 5, "the remote subscriber")
        redis.stop()
        for seq in range(5, 300):
            a.hub.publish(event(seq))
            await asyncio.sleep(0.002)
        await wait_for(lambda: a.hub.bus.health() is not None, 10, "the outage to be noticed")
        status, body = await http(a, "/healthz")
        assert status == 200 and body.startswith("degraded: Redis at redis://127.0.0.1:")
        metrics = (await http(a, "/metrics"))[1]
        assert "realtime_ser_bus_up 0" in metrics and "realtime_ser_bus_pending_events 100" in metrics
        assert "realtime_ser_bus_lost_events_total 195" in metrics
        listing = json.loads((await http(a, "/sessions"))[1])
        assert listing["complete"] is False and [r["session"] for r in listing["sessions"]] == ["long"]
        redis.start()
        await wait_for(lambda: a.hub.bus.health() is None, 10, "Redis to be back")
        a.hub.publish({"v": 1, "type": "session.ended", "session": "long", "seq": 300, "t": 30.0,
                       "reason": "end_of_input", "counts": {"utterances": 0, "frames": 0, "dropped_frames": 0,
                                                           "discarded_segments": 0, "partials": 300, "errors": 0}})
        events, code = await asyncio.wait_for(remote, 20)
        assert code == 1000 and rec.ended is not None
        seqs = [e["seq"] for e in events]
        lost = [e for e in events if e["type"] == "error"]
        assert len(lost) == 1 and lost[0]["code"] == "events_lost" and lost[0]["fatal"] is False
        for e in events:
            validate_event(e)
        assert (lost[0]["first_seq"], lost[0]["last_seq"], lost[0]["count"]) == (5, 199, 195)
        # In order, once each; the lost ones reported by the error that takes the last one's seq.
        assert seqs == [*range(5), 199, *range(200, 301)]
        assert local_sub.queue.qsize() == 302  # this node's own subscriber lost nothing (+ the end marker)
        assert (await http(a, "/healthz")) == (200, "ok\n")

    extra = ["server.bus_buffer_events=100"]
    run_nodes([node_config(redis.url, "A", *extra), node_config(redis.url, "B")], scenario)


def test_tls_and_password(tmp_path: Path, speech: np.ndarray) -> None:
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "redis.key", "redis.csr", "redis.pem"))
    for cmd in (["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                 "-keyout", ca_key, "-out", ca],
                ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key,
                 "-out", csr],
                ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
                 "-extfile", "/dev/stdin", "-out", cert]):
        subprocess.run([str(c) for c in cmd], input=b"subjectAltName=DNS:localhost\n", check=True,
                       capture_output=True)
    redis = RedisServer(tmp_path / "redis", password="s3cret", tls=(cert, key, ca)).start()
    try:
        async def scenario(a: Server, b: Server) -> None:
            own = await ingest(a.url, speech[:30000], "tls-call")
            remote, _ = await subscribe(b.url, "?session=tls-call&since=0")
            assert remote == own
            assert "s3cret" not in json.dumps(own[0])  # session.started shows the config, not the password

        assert redis.url.startswith("rediss://:s3cret@localhost:")
        run_nodes([node_config(redis.url, "A"), node_config(redis.url, "B")], scenario)
        wrong = redis.url.replace("s3cret", "wrong")
        with pytest.raises(RealtimeSerError, match="refused this node") as err:
            run_nodes([node_config(wrong, "A")], lambda a: asyncio.sleep(0))
        assert "wrong" not in str(err.value)
        untrusted = redis.url.split("?")[0]
        with pytest.raises(RealtimeSerError, match="TLS"):
            run_nodes([node_config(untrusted, "A")], lambda a: asyncio.sleep(0))
    finally:
        redis.stop()


def test_without_redis_configured_a_node_runs_alone(speech: np.ndarray) -> None:
    """The in-memory bus: /sessions says so; a session of no node is unknown; nothing needs Redis."""
    async def scenario(a: Server) -> None:
        own = await ingest(a.url, speech[:30000], "alone")
        listing = json.loads((await http(a, "/sessions"))[1])
        assert listing["bus"] == "memory" and listing["complete"] and listing["nodes"] == [listing["node"]]
        assert listing["sessions"][0]["node"] == listing["node"] and listing["node"].endswith(f":{a.port}")
        assert (await subscribe(a.url, "?session=alone&since=0"))[0] == own
        assert "realtime_ser_bus_up 1" in (await http(a, "/metrics"))[1]

    run_nodes([apply_overrides(PipelineConfig(), ["server.port=0", "asr.backend=none"])], scenario)


def test_a_redis_that_lost_everything_is_written_again(tmp_path: Path) -> None:
    """Redis restarted without its data (no append-only file): each node writes its sessions
    again from what it still holds, so subscribers elsewhere miss nothing."""
    redis = RedisServer(tmp_path / "redis", aof=False).start()

    async def scenario(a: Server, b: Server) -> None:
        a.hub.open("kept")
        for seq in range(20):
            a.hub.publish({"v": 1, "type": "transcript.partial", "session": "kept", "seq": seq, "t": seq / 10,
                           "speaker": "ch0", "channel": 0, "utterance_id": "ch0-1", "start": 0.0,
                           "text": f"word {seq}"})
        await wait_for(lambda: a.hub.bus.metrics.written_events_total.get() >= 20, 10, "the writes")
        redis.stop()
        redis.start()
        await wait_for(lambda: a.hub.bus.metrics.written_events_total.get() >= 40, 15, "the writes, again")
        a.hub.publish({"v": 1, "type": "session.ended", "session": "kept", "seq": 20, "t": 2.0,
                       "reason": "end_of_input", "counts": {"utterances": 0, "frames": 0, "dropped_frames": 0,
                                                           "discarded_segments": 0, "partials": 20, "errors": 0}})
        events, code = await subscribe(b.url, "?session=kept&since=0")
        assert code == 1000 and [e["seq"] for e in events] == list(range(21))

    try:
        run_nodes([node_config(redis.url, "A"), node_config(redis.url, "B")], scenario)
    finally:
        redis.stop()


def test_a_second_node_with_a_name_in_use_refuses_to_start(redis: RedisServer) -> None:
    async def scenario(a: Server) -> None:
        second = Server(node_config(redis.url, "A"), BACKENDS)
        t0 = time.monotonic()
        with pytest.raises(RealtimeSerError, match="node name 'A' is in use by a running node"):
            await second.start()
        assert time.monotonic() - t0 < 3.0

    run_nodes([node_config(redis.url, "A", "server.bus_node_ttl_s=2")], scenario)


def test_a_node_taken_for_lost_gets_its_late_events_refused_and_ends_the_session(redis: RedisServer) -> None:
    """A node that stopped beating (here: its heartbeat task stopped, as in a long stall) is taken
    for lost by the others; what it writes for that session afterwards is refused, counted, and
    the session is ended on it, so nothing after session.ended (node_lost) reaches anyone."""

    async def scenario(a: Server, b: Server) -> None:
        rec = a.hub.open("stalled")
        stopped: list[bool] = []
        rec.stop = lambda: stopped.append(True)
        a.hub.publish({"v": 1, "type": "transcript.partial", "session": "stalled", "seq": 0, "t": 0.1,
                       "speaker": "ch0", "channel": 0, "utterance_id": "ch0-1", "start": 0.0, "text": "hello"})
        await wait_for(lambda: a.hub.bus.metrics.written_events_total.get() >= 1, 10, "the first write")
        keeper = next(t for t in a.hub.bus._tasks if t.get_name() == "bus-keeper")  # type: ignore[attr-defined]
        keeper.cancel()
        remote = asyncio.create_task(subscribe(b.url, "?session=stalled&since=0"))
        events, code = await asyncio.wait_for(remote, 15)
        assert [e["type"] for e in events] == ["transcript.partial", "session.ended"]
        assert events[-1]["reason"] == "node_lost" and events[-1]["node"] == "A" and code == 1000
        validate_event(events[-1])
        a.hub.publish({"v": 1, "type": "transcript.partial", "session": "stalled", "seq": 1, "t": 0.2,
                       "speaker": "ch0", "channel": 0, "utterance_id": "ch0-1", "start": 0.0, "text": "hello again"})
        await wait_for(lambda: bool(stopped), 10, "the session to be stopped on node A")
        assert a.hub.bus.metrics.rejected_events_total.get() == 1
        again, _ = await subscribe(b.url, "?session=stalled&since=0")
        assert again == events

    ttl = "server.bus_node_ttl_s=1"
    run_nodes([node_config(redis.url, "A", ttl), node_config(redis.url, "B", ttl)], scenario)
