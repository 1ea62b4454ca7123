"""Many live sessions and subscribers through the real server, on real speech."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import ravdess_dir, validate_stream
from test_server import backends, config, ingest, run_with_server, subscribe  # noqa: F401 - fixture
from websockets.asyncio.client import connect

from realtime_ser.config import PipelineConfig
from realtime_ser.pipeline import Pipeline
from realtime_ser.server import Server
from realtime_ser.sources import ArraySource

pytestmark = pytest.mark.shared_data


def sequences(n: int, clips_each: int) -> list[np.ndarray]:
    root = ravdess_dir()
    out = []
    for k in range(n):
        every = sorted((root / f"Actor_{k + 1:02d}").glob("*.flac"))
        clips = [every[(k * 7 + j * 11) % len(every)] for j in range(clips_each)]
        parts = []
        for clip in clips:
            x, rate = sf.read(clip, dtype="int16")
            assert rate == 16000
            parts += [x, np.zeros(16000, dtype=np.int16)]
        out.append(np.concatenate(parts))
    return out


def single_session(pcm: np.ndarray, backend: Any) -> list[tuple[float, float, str]]:
    cfg = PipelineConfig()
    events: list[dict] = []
    Pipeline(cfg, ArraySource(pcm, 16000, cfg.source), [events.append], backend=backend).run()
    return [(e["start"], e["end"], e["text"]) for e in events if e["type"] == "utterance"]


def test_eight_live_sessions_three_subscribers_each(backends: dict[str, Any]) -> None:  # noqa: F811
    seqs = sequences(8, 3)
    expected = [single_session(x, backends["pocketsphinx"]) for x in seqs]
    assert all(len(e) >= 3 for e in expected), expected

    async def scenario(server: Server) -> tuple[list[list[dict]], list[list[list[dict]]], float]:
        t0 = time.monotonic()
        ingests = [asyncio.create_task(ingest(server.url, x, session=f"call-{i}", realtime=True, events=True))
                   for i, x in enumerate(seqs)]
        await asyncio.sleep(0.2)
        subs = [[asyncio.create_task(subscribe(server.url, f"?session=call-{i}&since=0")) for _ in range(3)]
                for i in range(len(seqs))]
        own = [events for events, _code in await asyncio.gather(*ingests)]
        followed = [[events for events, _code in await asyncio.gather(*s)] for s in subs]
        return own, followed, time.monotonic() - t0

    own, followed, took = run_with_server(config(), backends, scenario)
    print(f"8 sessions x {max(len(x) for x in seqs) / 16000:.1f} s of audio in real time: {took:.1f} s")
    for i, (mine, subs) in enumerate(zip(own, followed, strict=True)):
        validate_stream(mine)
        got = [(e["start"], e["end"], e["text"]) for e in mine if e["type"] == "utterance"]
        assert got == expected[i], f"session {i}: {got} != {expected[i]}"
        assert {e["session"] for e in mine} == {f"call-{i}"}
        for events in subs:
            assert events == mine, f"session {i}: a subscriber's list differs from the session's own"


def test_a_stalled_subscriber_is_dropped_without_delaying_the_others(backends: dict[str, Any]) -> None:  # noqa: F811
    pcm = sequences(1, 8)[0]
    published: dict[int, float] = {}

    async def scenario(server: Server) -> tuple[list[float], int | None, list[dict]]:
        publish = server.hub.publish

        def timed_publish(event: dict) -> None:
            published[event["seq"]] = time.monotonic()
            publish(event)

        server.hub.publish = timed_publish  # type: ignore[method-assign]
        ingest_task = asyncio.create_task(ingest(server.url, pcm, session="s", realtime=False, events=False,
                                                 chunk_ms=20))
        await asyncio.sleep(0.2)
        delays: list[float] = []
        healthy_events: list[dict] = []

        async def healthy() -> None:
            async with connect(f"{server.url}/subscribe?session=s&since=0") as ws:
                async for msg in ws:
                    now = time.monotonic()
                    e = json.loads(msg)
                    healthy_events.append(e)
                    if e["seq"] in published:
                        delays.append(now - published[e["seq"]])

        # The stalled subscriber: a raw socket with a tiny receive buffer that completes
        # the handshake and then never reads again.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        raw.connect(("127.0.0.1", server.port))
        raw.sendall(b"GET /subscribe?session=s&since=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n")
        healthy_tasks = [asyncio.create_task(healthy()) for _ in range(2)]
        await ingest_task
        await asyncio.gather(*healthy_tasks)
        # What did the stalled one get? Drain its socket now: a close frame with 4008 at the end.
        raw.setblocking(False)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = raw.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                continue
            if not chunk:
                break
            data += chunk
        raw.close()
        code = int.from_bytes(data[data.rfind(b"\x88\x02") + 2 :][:2], "big") if b"\x88" in data else None
        return delays, code, healthy_events

    cfg = config("server.subscriber_queue=8", "server.write_limit_bytes=1024")
    delays, code, events = run_with_server(cfg, backends, scenario)
    validate_stream(events)
    assert code == 4008, "the stalled subscriber is closed with 'subscriber too slow'"
    worst = max(delays)
    print(f"healthy subscribers: {len(delays)} deliveries, publish-to-arrival p50 "
          f"{1000 * float(np.median(delays)):.1f} ms, max {1000 * worst:.1f} ms")
    assert worst < 0.050
