"""realtime_ser.client against a minimal fake server of docs/protocol.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from realtime_ser.client import (
    ClientError,
    add_follow_arguments,
    add_stream_arguments,
    follow,
    run_follow,
    run_stream,
    stream_audio,
    stream_file,
)
from realtime_ser.config import SourceConfig
from realtime_ser.errors import RealtimeSerError
from realtime_ser.sources import FileSource

START_FIELDS = {"type", "session", "sample_rate", "channels", "roles", "asr", "events"}
TOKEN = "s3cret"


def _event(session: str, seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "session": session, "seq": seq, "t": seq * 0.5, **fields}


def _error(code: str, message: str, **extra: Any) -> str:
    return json.dumps({"v": 1, "type": "error", "session": "-", "seq": 0, "t": 0.0, "code": code,
                       "message": message, "fatal": True, **extra})


def _sub_event(seq: int) -> dict[str, Any]:
    if seq == 9:
        return _event("s1", 9, "session.ended", reason="end_of_input",
                      counts={"utterances": 8, "frames": 10, "dropped_frames": 0, "discarded_segments": 0,
                              "partials": 0, "errors": 0}, duration=4.5)
    if seq == 0:
        return _event("s1", 0, "session.started", input="websocket", asr={"backend": "none", "model": None},
                      sample_rate=16000, channels=1, speakers=["ch0"], config={})
    return _utterance("s1", seq, f"utterance {seq}")


def _utterance(session: str, seq: int, text: str) -> dict[str, Any]:
    return _event(session, seq, "utterance", utterance_id=f"ch0-{seq}", speaker="ch0", channel=0, start=0.1,
                  end=0.9, text=text, words=[], emotion=None, end_reason="end_of_input", asr={"backend": "none"},
                  latency_ms={"vad": 1.0, "queue": 0.1, "asr": 2.0, "emit": 0.1, "total": 3.2})


class FakeServer:
    """Just enough of the protocol: /ingest and /subscribe (session s1, events 0..9)."""

    def __init__(self, drop: str = "abort", require_token: bool = False, drops: int = 1) -> None:
        self.drop = drop  # how the first subscription(s) end after seq 4: abort, 1011, 4008, never, always
        self.drops = drops
        self.require_token = require_token
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self.starts: list[dict[str, Any]] = []
        self.ingest_bytes = 0
        self.ingest_messages: list[tuple[float, int]] = []
        self.subscriptions = 0
        self.dropped = 0

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        self.auth.append(request.headers.get("Authorization"))
        if self.require_token and request.headers.get("Authorization") != f"Bearer {TOKEN}":
            body = b"missing or wrong bearer token\n"
            return Response(401, "Unauthorized", Headers([("Content-Length", str(len(body)))]), body)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        if parts.path == "/ingest":
            await self.ingest(ws)
        elif parts.path == "/subscribe":
            await self.subscribe(ws, parse_qs(parts.query))
        else:
            await ws.close(4004, "no such endpoint")

    async def ingest(self, ws: ServerConnection) -> None:
        start = json.loads(await ws.recv())
        self.starts.append(start)
        unknown = set(start) - START_FIELDS
        if unknown or start.get("sample_rate") not in (8000, 16000, 32000, 48000) or start.get("session") == "bad":
            what = f"unknown field(s) {sorted(unknown)}" if unknown else "bad start message"
            await ws.send(_error("bad_start", f"{what}; allowed: {sorted(START_FIELDS)}"))
            await ws.close(4000, "bad start message")
            return
        session = start.get("session") or "generated-1"
        await ws.send(json.dumps(_event(session, 0, "session.started", input="websocket",
                                        asr={"backend": start.get("asr", "none"), "model": None},
                                        sample_rate=start["sample_rate"], channels=start.get("channels", 1),
                                        speakers=start.get("roles", ["ch0"]), config={})))
        async for msg in ws:
            if isinstance(msg, bytes):
                self.ingest_bytes += len(msg)
                self.ingest_messages.append((time.monotonic(), len(msg)))
            elif json.loads(msg) == {"type": "eof"}:
                break
        if start.get("events", True):
            await ws.send(json.dumps(_utterance(session, 1, f"{self.ingest_bytes} bytes")))
            await ws.send(json.dumps(_event(session, 2, "session.ended", reason="end_of_input",
                                            counts={"utterances": 1, "frames": 1, "dropped_frames": 0,
                                                    "discarded_segments": 0, "partials": 0, "errors": 0},
                                            duration=1.0)))
        await ws.close(1000, "session ended")

    async def subscribe(self, ws: ServerConnection, query: dict[str, list[str]]) -> None:
        self.subscriptions += 1
        session = query.get("session", [None])[0]
        since = int(query.get("since", ["0"])[0])
        if session != "s1":
            await ws.send(_error("unknown_session", f"no session {session!r} is known"))
            await ws.close(4004, "unknown session")
            return
        if self.drop == "since_gone":
            await ws.send(_error("since_unavailable", "since=0 is older than the oldest retained event 3",
                                 oldest_seq=3))
            await ws.close(4010, "since unavailable")
            return
        dropping = self.drop == "always" or (self.drop != "never" and self.subscriptions <= self.drops)
        for seq in range(since, 10):
            if dropping and seq == 5:
                await asyncio.sleep(0.05)  # let the client read what was sent
                self.dropped += 1
                if self.drop in ("abort", "always"):
                    ws.transport.abort()
                else:
                    await ws.close(int(self.drop), "dropped")
                return
            await ws.send(json.dumps(_sub_event(seq)))
        await ws.close(1000, "session ended")


def run_with_server(body: Callable[[FakeServer, str], Awaitable[None]], fake: FakeServer | None = None,
                    timeout: float = 8.0) -> FakeServer:
    fake = fake or FakeServer()

    async def main() -> None:
        async with serve(fake.handler, "127.0.0.1", 0, process_request=fake.process_request) as server:
            await asyncio.wait_for(body(fake, _url(server)), timeout)

    asyncio.run(main())
    return fake


def _url(server: Server) -> str:
    host, port = next(iter(server.sockets)).getsockname()[:2]
    return f"ws://{host}:{port}"


def _tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


# -- ingest -----------------------------------------------------------------------------------------


def test_stream_audio_sends_start_audio_eof_and_collects_events() -> None:
    seen: list[dict[str, Any]] = []
    result: list[dict[str, Any]] = []

    async def body(fake: FakeServer, url: str) -> None:
        result.extend(await stream_audio(url, _tone(0.5), session="call-1", roles=["agent"], asr="none",
                                         on_event=seen.append))

    fake = run_with_server(body)
    assert fake.starts == [{"type": "start", "sample_rate": 16000, "channels": 1, "events": True,
                            "session": "call-1", "roles": ["agent"], "asr": "none"}]
    assert fake.paths == ["/ingest"]
    assert fake.ingest_bytes == 16000  # 0.5 s of mono PCM16
    assert [len for _t, len in fake.ingest_messages] == [3200] * 5  # 100 ms chunks
    assert [e["type"] for e in result] == ["session.started", "utterance", "session.ended"]
    assert result[1]["text"] == "16000 bytes"
    assert seen == result


def test_stream_audio_stereo_bytes_and_token_header() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        stereo = _tone(0.25, 48000, 2)
        events = await stream_audio(url + "/", stereo, sample_rate=48000, channels=2, token=TOKEN, chunk_ms=50)
        assert events[-1]["type"] == "session.ended"
        await stream_audio(url, stereo.tobytes(), sample_rate=48000, channels=2, token=TOKEN, events=False)

    fake = run_with_server(body, FakeServer(require_token=True))
    assert fake.auth == [f"Bearer {TOKEN}"] * 2
    assert fake.ingest_bytes == 2 * 12000 * 4
    assert fake.starts[1]["events"] is False


def test_stream_audio_wrong_token_is_a_client_error() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        with pytest.raises(ClientError, match="401"):
            await stream_audio(url, _tone(0.1), token="wrong")
        with pytest.raises(ClientError, match="401"):
            await follow(url, "s1")

    run_with_server(body, FakeServer(require_token=True))


def test_stream_audio_error_close_raises_with_code_and_message() -> None:
    seen: list[dict[str, Any]] = []

    async def body(fake: FakeServer, url: str) -> None:
        with pytest.raises(ClientError) as info:
            await stream_audio(url, _tone(0.3), session="bad", on_event=seen.append)
        err = info.value
        assert err.code == 4000
        assert "4000" in str(err) and "bad start message" in str(err)
        assert err.error is not None and err.error["code"] == "bad_start"
        assert err.events and err.events[-1]["type"] == "error"

    run_with_server(body)
    assert isinstance(ClientError("x"), RealtimeSerError)
    assert [e["type"] for e in seen] == ["error"]


def test_stream_audio_rejects_bad_input_before_connecting() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        with pytest.raises(RealtimeSerError, match="channels"):
            await stream_audio(url, _tone(0.1, channels=2), channels=1)
        with pytest.raises(RealtimeSerError, match="int16"):
            await stream_audio(url, np.zeros(100, dtype=np.float32))
        with pytest.raises(ClientError, match="sample_rate"):
            await stream_audio(url, _tone(0.1), sample_rate=44100)
        with pytest.raises(ClientError, match="ws://"):
            await stream_audio("ftp://x", _tone(0.1))

    fake = run_with_server(body)
    assert fake.paths == []


def test_connection_refused_is_a_client_error() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        pass

    async def main() -> str:
        async with serve(FakeServer().handler, "127.0.0.1", 0) as server:
            url = _url(server)
        return url

    url = asyncio.run(main())  # the port is closed again
    with pytest.raises(ClientError, match="cannot connect"):
        asyncio.run(stream_audio(url, _tone(0.1)))
    with pytest.raises(ClientError, match="cannot connect"):
        asyncio.run(follow(url, "s1"))


def test_realtime_pacing_takes_the_audio_duration() -> None:
    elapsed: list[float] = []

    async def body(fake: FakeServer, url: str) -> None:
        t0 = time.monotonic()
        await stream_audio(url, _tone(1.0), realtime=True)
        elapsed.append(time.monotonic() - t0)
        t0 = time.monotonic()
        await stream_audio(url, _tone(1.0))
        elapsed.append(time.monotonic() - t0)

    fake = run_with_server(body)
    assert 0.95 <= elapsed[0] < 1.5, elapsed
    assert elapsed[1] < 0.5, elapsed
    times = [t for t, _n in fake.ingest_messages[:10]]
    assert 0.8 <= times[-1] - times[0] < 1.3  # the 10 chunks are spread over the second
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    assert 0.07 <= gaps[len(gaps) // 2] <= 0.13, gaps  # paced: a late chunk may be followed by a quicker one


def test_stream_frames_from_a_source(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    sf.write(path, _tone(0.6, 16000, 2), 16000, subtype="PCM_16")
    source = FileSource(path, SourceConfig(split_channels=True))

    async def body(fake: FakeServer, url: str) -> None:
        await stream_audio(url, source, channels=2)

    fake = run_with_server(body)
    assert fake.ingest_bytes == int(0.6 * 16000) * 4
    assert fake.starts[0]["channels"] == 2


def test_stream_file_rates_and_channels(tmp_path: Path) -> None:
    odd = tmp_path / "odd.flac"
    sf.write(odd, _tone(0.5, 22050), 22050)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, _tone(0.5, 8000, 2), 8000, subtype="PCM_16")

    async def body(fake: FakeServer, url: str) -> None:
        await stream_file(url, odd)
        await stream_file(url, stereo, session="st")
        with pytest.raises(RealtimeSerError, match="not found"):
            await stream_file(url, tmp_path / "missing.wav")

    fake = run_with_server(body)
    assert fake.starts[0]["sample_rate"] == 16000 and fake.starts[0]["channels"] == 1
    assert fake.starts[1]["sample_rate"] == 8000 and fake.starts[1]["channels"] == 2
    sizes = [n for _t, n in fake.ingest_messages]
    first = sum(sizes[: len(sizes) - 5])  # the 8 kHz stereo file came in 5 chunks of 100 ms
    assert abs(first - 16000) <= 64  # 0.5 s resampled to 16 kHz mono
    assert sum(sizes[-5:]) == 4000 * 4


# -- subscribe ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["abort", "1011", "4008"])
def test_follow_reconnects_with_since_and_deduplicates(drop: str) -> None:
    seen: list[int] = []
    result: list[dict[str, Any]] = []

    async def body(fake: FakeServer, url: str) -> None:
        result.extend(await follow(url, "s1", token=TOKEN, on_event=lambda e: seen.append(e["seq"])))

    fake = run_with_server(body, FakeServer(drop=drop))
    assert [e["seq"] for e in result] == list(range(10))
    assert seen == list(range(10))
    assert result[-1]["type"] == "session.ended"
    assert fake.paths == ["/subscribe?session=s1", "/subscribe?session=s1&since=5"]
    assert fake.auth == [f"Bearer {TOKEN}"] * 2


def test_follow_url_with_query_and_since() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        events = await follow(url + "/subscribe?session=s1&since=3")
        assert [e["seq"] for e in events] == list(range(3, 10))

    fake = run_with_server(body, FakeServer(drop="never"))
    assert fake.paths == ["/subscribe?session=s1&since=3"]


def test_follow_gives_up_after_max_retries() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        t0 = time.monotonic()
        with pytest.raises(ClientError, match="gave up after 2") as info:
            await follow(url, "s1", max_retries=2)
        assert 0.25 < time.monotonic() - t0 < 3.0  # backoff 0.1 s + 0.2 s
        # the first connection delivered 0..4; retries resumed at 5 and got 5..9? no: they drop at 5
        assert [e["seq"] for e in info.value.events] == [0, 1, 2, 3, 4]

    fake = run_with_server(body, FakeServer(drop="always"))
    assert fake.paths[1:] == ["/subscribe?session=s1&since=5"] * 2


def test_follow_without_reconnect_raises_on_drop() -> None:
    async def body(fake: FakeServer, url: str) -> None:
        with pytest.raises(ClientError, match="1011"):
            await follow(url, "s1", reconnect=False)

    run_with_server(body, FakeServer(drop="1011"))


@pytest.mark.parametrize(("session", "drop", "code", "words"), [
    ("nope", "never", 4004, "no session 'nope'"),
    ("s1", "since_gone", 4010, "oldest retained event 3"),
])
def test_follow_fatal_closes_raise(session: str, drop: str, code: int, words: str) -> None:
    async def body(fake: FakeServer, url: str) -> None:
        with pytest.raises(ClientError) as info:
            await follow(url, session, since=0)
        assert info.value.code == code
        assert str(code) in str(info.value) and words in str(info.value)

    fake = run_with_server(body, FakeServer(drop=drop))
    assert fake.subscriptions == 1  # no retry


def test_follow_reconnects_when_the_server_restarts() -> None:
    """Connection refused while retrying is retried too."""
    fake = FakeServer(drop="abort")
    result: list[dict[str, Any]] = []

    async def main() -> None:
        server = await serve(fake.handler, "127.0.0.1", 0)
        url = _url(server)
        port = int(url.rsplit(":", 1)[1])
        task = asyncio.create_task(follow(url, "s1"))
        while not fake.dropped:  # the subscription was dropped after seq 4 ...
            await asyncio.sleep(0)
        server.close(close_connections=False)  # ... and the port closes before the first retry (0.1 s)
        await server.wait_closed()
        await asyncio.sleep(0.4)  # the client retries against a closed port meanwhile
        async with serve(fake.handler, "127.0.0.1", port):
            result.extend(await asyncio.wait_for(task, 8))

    asyncio.run(main())
    assert [e["seq"] for e in result] == list(range(10))
    assert fake.subscriptions >= 2


# -- command line ---------------------------------------------------------------------------------------


def test_run_stream_and_run_follow_write_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(0.3), 16000, subtype="PCM_16")
    out = tmp_path / "events.jsonl"

    stream_parser = argparse.ArgumentParser()
    add_stream_arguments(stream_parser)
    follow_parser = argparse.ArgumentParser()
    add_follow_arguments(follow_parser)

    async def body(fake: FakeServer, url: str) -> None:
        args = stream_parser.parse_args([str(wav), "--server", url, "--session", "cli-1", "--roles", "agent",
                                         "--asr", "none", "--jsonl", str(out)])
        assert await asyncio.to_thread(run_stream, args) == 0
        args = follow_parser.parse_args([url + "/subscribe?session=s1", "--since", "7", "--jsonl", "-"])
        assert await asyncio.to_thread(run_follow, args) == 0
        args = follow_parser.parse_args([url, "--session", "nope", "--timeout", "0"])  # 0: no waiting for it
        with pytest.raises(ClientError, match="4004"):
            await asyncio.to_thread(run_follow, args)

    fake = run_with_server(body, FakeServer(drop="never"))
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["type"] for e in events] == ["session.started", "utterance", "session.ended"]
    assert fake.starts[0]["roles"] == ["agent"] and fake.starts[0]["session"] == "cli-1"
    assert fake.ingest_bytes == 9600
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in printed] == [7, 8, 9]
