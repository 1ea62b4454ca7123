"""The real server on loopback with real WebSocket clients (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from conftest import run_with_server, validate_event, validate_stream
from speech import espeak, have_tool, silence
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime_ser.config import PipelineConfig, apply_overrides
from realtime_ser.server import Server

needs_espeak = pytest.mark.skipif(not have_tool("espeak-ng"), reason="needs espeak-ng to make speech")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    if not have_tool("espeak-ng"):
        pytest.skip("needs espeak-ng to make speech")
    return np.concatenate([silence(0.5), espeak("hello there, how are you today"), silence(1.0),
                           espeak("I would like to check my order please"), silence(1.0)])


def config(*overrides: str) -> PipelineConfig:
    return apply_overrides(PipelineConfig(), ["server.port=0", *overrides])


async def ingest(url: str, pcm: np.ndarray, *, rate: int = 16000, channels: int = 1, chunk_ms: int = 100,
                 realtime: bool = False, **start: Any) -> tuple[list[dict], int | None]:
    """Stream PCM16 to /ingest; return the events received and the close code."""
    events: list[dict] = []
    async with connect(url + "/ingest") as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "channels": channels, **start}))

        async def receive() -> None:
            async for msg in ws:
                events.append(json.loads(msg))

        receiver = asyncio.create_task(receive())
        step = rate * chunk_ms // 1000
        data = pcm.astype("<i2")
        t0 = time.monotonic()
        for i in range(0, len(data), step):
            if realtime:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            await ws.send(data[i : i + step].tobytes())
        await ws.send(json.dumps({"type": "eof"}))
        await receiver
        return events, ws.close_code


async def subscribe(url: str, query: str = "", until_end: bool = True) -> tuple[list[dict], int | None]:
    events: list[dict] = []
    async with connect(f"{url}/subscribe{query}") as ws:
        try:
            async for msg in ws:
                events.append(json.loads(msg))
        except ConnectionClosed:
            pass
        return events, ws.close_code


async def expect_error(ws_url: str, first: str | bytes | None, *more: str | bytes) -> tuple[dict | None, int | None]:
    """Send messages and return the error event (if any) and the close code."""
    error = None
    async with connect(ws_url) as ws:
        try:
            if first is not None:
                await ws.send(first)
            for m in more:
                await ws.send(m)
            async for msg in ws:
                e = json.loads(msg)
                if e.get("type") == "error":
                    error = e
        except ConnectionClosed:
            pass
        return error, ws.close_code


def http_get(url: str, token: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def http_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


# -- tests ------------------------------------------------------------------------------------------


def test_http_endpoints(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> None:
        base = http_url(server)
        results = await asyncio.to_thread(lambda: [http_get(base + p) for p in
                                                   ("/healthz", "/metrics", "/sessions", "/", "/nope")])
        (hs, _, hb), (ms, mt, mb), (ss, _, sb), (ds, dt, db), (ns, _, _) = results
        assert (hs, hb) == (200, "ok\n")
        assert ms == 200 and "text/plain; version=0.0.4" in mt and "realtime_ser_sessions_active" in mb
        listing = json.loads(sb)
        assert ss == 200 and listing["sessions"] == [] and listing["bus"] == "memory" and listing["complete"]
        assert listing["nodes"] == [listing["node"]]
        assert ds == 200 and "text/html" in dt and "/subscribe" in db
        assert ns == 404

    run_with_server(config(), backends, scenario)


@needs_espeak
def test_ingest_gets_its_events_on_the_same_connection(backends: dict[str, Any], speech: np.ndarray) -> None:
    async def scenario(server: Server) -> tuple[list[dict], int | None]:
        return await ingest(server.url, speech, session="call-1", roles=["agent"])

    events, code = run_with_server(config(), backends, scenario)
    assert code == 1000
    validate_stream(events)
    assert events[0]["session"] == "call-1" and events[0]["speakers"] == ["agent"]
    utts = [e for e in events if e["type"] == "utterance"]
    assert len(utts) == 2 and all(u["speaker"] == "agent" and u["text"] for u in utts)


@needs_espeak
def test_8khz_stereo_with_roles(backends: dict[str, Any], speech: np.ndarray) -> None:
    import soxr

    mono8k = (soxr.resample(speech.astype(np.float32) / 32768, 16000, 8000) * 32767).astype(np.int16)
    stereo = np.stack([mono8k, np.zeros_like(mono8k)], axis=1)
    stereo = np.concatenate([stereo, np.stack([np.zeros_like(mono8k), mono8k], axis=1)])

    async def scenario(server: Server) -> tuple[list[dict], int | None]:
        return await ingest(server.url, stereo, rate=8000, channels=2, roles=["agent", "customer"], asr="none")

    events, code = run_with_server(config(), backends, scenario)
    validate_stream(events)
    assert [u["speaker"] for u in events if u["type"] == "utterance"] == ["agent", "agent", "customer", "customer"]


def test_bad_input_gets_specific_errors_and_close_codes(backends: dict[str, Any]) -> None:
    start = {"type": "start", "sample_rate": 16000}

    async def scenario(server: Server) -> dict[str, tuple[dict | None, int | None]]:
        url = server.url
        out = {
            "malformed_json": await expect_error(url + "/ingest", "{not json"),
            "unknown_field": await expect_error(url + "/ingest", json.dumps({**start, "colour": "red"})),
            "bad_rate": await expect_error(url + "/ingest", json.dumps({**start, "sample_rate": 44100})),
            "binary_first": await expect_error(url + "/ingest", b"\x00\x01" * 100),
            "text_as_audio": await expect_error(url + "/ingest", json.dumps(start), "hello"),
            "odd_bytes": await expect_error(url + "/ingest", json.dumps(start), b"\x00\x01\x02"),
            "oversized": await expect_error(url + "/ingest", json.dumps(start), b"\x00" * 70000),
            "deep_json": await expect_error(url + "/ingest", "[" * 100000 + "]" * 100000),
            "unknown_session": await expect_error(url + "/subscribe?session=nope", None),
            "bad_since": await expect_error(url + "/subscribe?session=x&since=-3", None),
            "vosk_bad_rate": await expect_error(url + "/", json.dumps({"config": {"sample_rate": 1234567}})),
        }
        # The server is still fine: a good session works after all that.
        events, code = await ingest(url, np.zeros(16000, dtype=np.int16), asr="none")
        out["after"] = (events[-1], code)
        return out

    out = run_with_server(config(), backends, scenario)
    expected = {
        "malformed_json": ("bad_json", 4000), "unknown_field": ("unknown_field", 4000),
        "bad_rate": ("unsupported_sample_rate", 4000), "binary_first": ("expected_text", 1003),
        "text_as_audio": ("expected_audio", 1003), "odd_bytes": ("bad_audio", 4000),
        "deep_json": (None, 1009), "oversized": (None, 1009),
        "unknown_session": ("unknown_session", 4004), "bad_since": ("bad_since", 4000),
        "vosk_bad_rate": ("unsupported_sample_rate", 4000),
    }
    for name, (code_name, close) in expected.items():
        error, got_close = out[name]
        assert got_close == close, (name, got_close, error)
        if code_name is not None:
            assert error is not None and error["code"] == code_name and error["fatal"], (name, error)
            validate_event(error)
            assert error["message"]
    assert "allowed" in out["unknown_field"][0]["message"]
    assert "8000, 16000, 32000, 48000" in out["bad_rate"][0]["message"]
    ended, code = out["after"]
    assert ended["type"] == "session.ended" and code == 1000


def test_token_is_required_everywhere_but_healthz(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> None:
        base = http_url(server)
        assert (await asyncio.to_thread(http_get, base + "/healthz"))[0] == 200
        for path in ("/metrics", "/sessions", "/"):
            assert (await asyncio.to_thread(http_get, base + path))[0] == 401
            assert (await asyncio.to_thread(http_get, base + path, "wrong"))[0] == 401
            assert (await asyncio.to_thread(http_get, base + path, "s3cret"))[0] == 200
        for path in ("/ingest", "/subscribe", "/"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url + path, additional_headers={"Authorization": "Bearer wrong"}):
                    pass
            assert info.value.response.status_code == 401
        async with connect(server.url + "/subscribe", additional_headers={"Authorization": "Bearer s3cret"}):
            pass

    run_with_server(config("server.token=s3cret"), backends, scenario)


def test_ingest_without_events_gets_session_started_and_events_never_carry_the_token(
        backends: dict[str, Any]) -> None:
    auth = {"Authorization": "Bearer s3cret"}

    async def scenario(server: Server) -> tuple[list[str], list[str], int | None]:
        got: list[str] = []
        async with connect(server.url + "/ingest", additional_headers=auth) as ws:
            await ws.send(json.dumps({"type": "start", "session": "quiet", "sample_rate": 16000, "asr": "none",
                                      "events": False}))
            got.append(await asyncio.wait_for(ws.recv(), 10))  # the session id, even without events
            await ws.send(np.zeros(16000, dtype="<i2").tobytes())
            await ws.send(json.dumps({"type": "eof"}))
            async for msg in ws:
                got.append(msg)
        log: list[str] = []
        async with connect(server.url + "/subscribe?session=quiet&since=0", additional_headers=auth) as sub:
            async for msg in sub:
                log.append(msg)
        return got, log, ws.close_code

    got, log, code = run_with_server(config("server.token=s3cret"), backends, scenario)
    assert code == 1000
    assert [json.loads(m)["type"] for m in got] == ["session.started"]
    started = json.loads(got[0])
    validate_event(started)
    assert started["session"] == "quiet" and started["config"]["server"]["token"] == "<set>"
    assert [json.loads(m)["type"] for m in log] == ["session.started", "session.ended"]
    assert not any("s3cret" in m for m in got + log)


def test_session_limit(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> tuple[dict | None, int | None]:
        async with connect(server.url + "/ingest") as first:
            await first.send(json.dumps({"type": "start", "sample_rate": 16000, "asr": "none"}))
            await first.recv()
            result = await expect_error(server.url + "/ingest",
                                        json.dumps({"type": "start", "sample_rate": 16000}))
            await first.send(json.dumps({"type": "eof"}))
            return result

    error, code = run_with_server(config("server.max_sessions=1"), backends, scenario)
    assert code == 4013 and error is not None and error["code"] == "too_many_sessions"


def test_message_rate_limit(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> tuple[dict | None, int | None]:
        frames = [b"\x00\x00" * 16 for _ in range(200)]
        return await expect_error(server.url + "/ingest", json.dumps({"type": "start", "sample_rate": 16000,
                                                                     "asr": "none"}), *frames)

    error, code = run_with_server(config("server.max_messages_per_s=20"), backends, scenario)
    assert code == 4029 and error is not None and error["code"] == "rate_limited"


@needs_espeak
def test_subscribers_resume_with_since_and_get_identical_lists(backends: dict[str, Any], speech: np.ndarray) -> None:
    async def scenario(server: Server) -> tuple[list[dict], list[dict], list[dict]]:
        url = server.url
        ingest_task = asyncio.create_task(ingest(url, speech, session="s1", realtime=True, events=False))
        await asyncio.sleep(0.3)
        steady = asyncio.create_task(subscribe(url, "?session=s1&since=0"))
        # A subscriber that drops after its first utterance and comes back with since=.
        first: list[dict] = []
        async with connect(url + "/subscribe?session=s1&since=0") as ws:
            async for msg in ws:
                first.append(json.loads(msg))
                if first[-1]["type"] == "utterance":
                    break
        await asyncio.sleep(1.0)  # events happen while it is away
        rest, code = await subscribe(url, f"?session=s1&since={first[-1]['seq'] + 1}")
        assert code == 1000
        await ingest_task
        steady_events, _ = await steady
        late, _ = await subscribe(url, "?session=s1&since=0")  # ended sessions stay readable
        return first + rest, steady_events, late

    resumed, steady, late = run_with_server(config(), backends, scenario)
    validate_stream(steady)
    assert resumed == steady == late


def test_since_older_than_the_log_is_a_clear_error(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> tuple[dict | None, int | None]:
        await ingest(server.url, np.zeros(32000, dtype=np.int16), session="tiny", asr="none")
        return await expect_error(server.url + "/subscribe?session=tiny&since=0", None)

    error, code = run_with_server(config("server.log_events=1"), backends, scenario)
    assert code == 4010 and error is not None and error["code"] == "since_unavailable"
    assert error["oldest_seq"] >= 1


@needs_espeak
def test_vosk_server_protocol_client(backends: dict[str, Any], speech: np.ndarray) -> None:
    """The shape of vosk-server's test.py: config, 0.2 s chunks each answered, eof."""
    import soxr

    pcm8k = (soxr.resample(speech.astype(np.float32) / 32768, 16000, 8000) * 32767).astype("<i2").tobytes()

    async def scenario(server: Server) -> tuple[list[dict], list[dict]]:
        replies = []
        follower = None
        async with connect(server.url) as websocket:
            await websocket.send('{ "config" : { "sample_rate" : %d } }' % 8000)  # noqa: UP031 - as test.py
            buffer_size = int(8000 * 0.2) * 2
            for i in range(0, len(pcm8k), buffer_size):
                await websocket.send(pcm8k[i : i + buffer_size])
                replies.append(json.loads(await websocket.recv()))
                if follower is None:
                    follower = asyncio.create_task(subscribe(server.url, "?session=vosk-1&since=0"))
            await websocket.send('{"eof" : 1}')
            replies.append(json.loads(await websocket.recv()))
        assert follower is not None
        followed, _ = await follower
        return replies, followed

    replies, followed = run_with_server(config(), backends, scenario)
    assert all(set(r) in ({"partial"}, {"result", "text", "emotion"}, {"text"}) for r in replies), replies
    results = [r for r in replies if "result" in r]
    assert len(results) == 2 and all(r["text"] for r in results)
    assert any(r.get("partial") for r in replies)
    for r in results:
        assert all(set(w) == {"conf", "end", "start", "word"} for w in r["result"])
    validate_stream(followed)
    assert [u["text"] for u in followed if u["type"] == "utterance"] == [r["text"] for r in results]


@needs_espeak
def test_shutdown_ends_sessions_cleanly_and_says_going_away(backends: dict[str, Any], speech: np.ndarray) -> None:
    async def scenario(server: Server) -> tuple[list[dict], int | None, list[dict], int | None, float]:
        events: list[dict] = []
        ws = await connect(server.url + "/ingest")
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "session": "live1"}))
        sub_task = asyncio.create_task(subscribe(server.url, "?session=live1&since=0"))
        data = speech.astype("<i2")
        for i in range(0, 16000 * 3, 1600):  # 3 s of audio, mid-utterance
            await ws.send(data[i : i + 1600].tobytes())
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await server.shutdown()
        took = time.monotonic() - t0
        try:
            async for msg in ws:
                events.append(json.loads(msg))
        except ConnectionClosed:
            pass
        sub_events, sub_code = await sub_task
        return events, ws.close_code, sub_events, sub_code, took

    events, code, sub_events, sub_code, took = run_with_server(config(), backends, scenario)
    assert took < 3.0
    assert code == 1001 and sub_code == 1001
    assert sub_events[-1]["type"] == "session.ended"
    validate_stream(sub_events)
    assert any(e["type"] == "utterance" for e in sub_events), "what was heard is flushed"


@needs_espeak
def test_a_client_that_vanishes_mid_stream_loses_nothing_already_sent(backends: dict[str, Any],
                                                                       speech: np.ndarray) -> None:
    async def scenario(server: Server) -> list[dict]:
        ws = await connect(server.url + "/ingest")
        await ws.send(json.dumps({"type": "start", "session": "gone", "sample_rate": 16000,
                                  "asr": "pocketsphinx", "events": False}))
        await ws.recv()  # session.started
        data = speech.astype("<i2")
        for i in range(0, len(data), 1600):
            await ws.send(data[i:i + 1600].tobytes())
        ws.transport.abort()  # no eof, no close frame
        events, code = await subscribe(server.url, "?session=gone&since=0")
        assert code == 1000
        return events

    events = run_with_server(config("emotion.enabled=false"), backends, scenario)
    validate_stream(events)
    texts = [e["text"] for e in events if e["type"] == "utterance"]
    assert len(texts) == 2 and all(texts), texts
    assert events[-1]["type"] == "session.ended" and events[-1]["reason"] == "stopped", events[-1]


def test_browser_origins_other_than_the_servers_own_are_refused(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> dict[str, int]:
        host = server.url.removeprefix("ws://")
        out: dict[str, int] = {}
        for name, origin in {"own": f"http://{host}", "listed": "https://dash.example.com",
                             "evil": "https://evil.example", "lookalike": f"http://{host}.evil.example",
                             "none": None}.items():
            headers = {"Origin": origin} if origin else None
            try:
                async with connect(server.url + "/subscribe", additional_headers=headers,
                                   origin=None) as ws:
                    await ws.send("ping")
                    assert await ws.recv() == "pong"
                out[name] = 101
            except InvalidStatus as exc:
                out[name] = exc.response.status_code
        return out

    got = run_with_server(config("server.origins=https://dash.example.com"), backends, scenario)
    assert got == {"own": 101, "listed": 101, "evil": 403, "lookalike": 403, "none": 101}, got


def test_several_tokens_each_with_its_own_session_limit(backends: dict[str, Any]) -> None:
    async def scenario(server: Server) -> dict[str, Any]:
        out: dict[str, Any] = {}

        async def start(token: str) -> Any:
            ws = await connect(server.url + "/ingest", additional_headers={"Authorization": f"Bearer {token}"})
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "asr": "none", "events": False}))
            return ws, json.loads(await ws.recv())

        a1, first = await start("alpha")
        out["first"] = first["type"]
        a2, refused = await start("alpha")  # alpha's second session: over its limit of 1
        out["refused"] = refused
        await a2.wait_closed()
        out["refused_close"] = a2.close_code
        b1, other = await start("beta")  # another token still gets its session
        out["other"] = other["type"]
        for ws in (a1, b1):
            await ws.send(json.dumps({"type": "eof"}))
            await ws.wait_closed()
        return out

    got = run_with_server(config("server.token=alpha,beta", "server.max_sessions_per_token=1"), backends, scenario)
    assert got["first"] == "session.started" and got["other"] == "session.started"
    assert got["refused"]["type"] == "error" and got["refused"]["code"] == "too_many_sessions"
    assert "max_sessions_per_token" in got["refused"]["message"] and got["refused_close"] == 4013


class _HangingStream:
    """Recognizes its first utterance, then never returns from the second."""

    def __init__(self, release: Any) -> None:
        self.release, self.done = release, 0

    def start(self) -> None:
        pass

    def accept(self, samples: np.ndarray) -> None:
        pass

    def partial(self) -> str:
        return ""

    def finish(self) -> Any:
        from realtime_ser.asr import Transcript

        self.done += 1
        if self.done > 1:
            self.release.wait()
        return Transcript("first words", (), True)

    def reset(self) -> None:
        pass


class _HangingBackend:
    name, model = "vosk", "hangs-on-the-second-utterance"

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()

    def new_stream(self) -> _HangingStream:
        return _HangingStream(self.release)


def test_a_recognizer_that_hangs_ends_its_session_and_the_others_go_on(backends: dict[str, Any],
                                                                        speech: np.ndarray) -> None:
    hanging = _HangingBackend()

    async def scenario(server: Server) -> tuple[Any, Any, float]:
        t0 = time.monotonic()
        stuck, fine = await asyncio.gather(ingest(server.url, speech, asr="vosk", session="stuck"),
                                           ingest(server.url, speech, asr="pocketsphinx", session="fine",
                                                  realtime=True))
        return stuck, fine, time.monotonic() - t0

    try:
        (stuck, stuck_code), (fine, fine_code), took = run_with_server(
            config("asr.worker_timeout_s=2", "emotion.enabled=false"), {**backends, "vosk": hanging}, scenario)
    finally:
        hanging.release.set()
    validate_stream(stuck)
    validate_stream(fine)
    assert [e["text"] for e in stuck if e["type"] == "utterance"] == ["first words"]
    assert stuck[-2]["type"] == "error" and stuck[-2]["code"] == "recognizer_hung" and stuck[-2]["fatal"]
    assert stuck[-1]["type"] == "session.ended" and stuck[-1]["reason"] == "error" and stuck_code == 1000
    # The session beside it, streaming in real time through the hang, loses nothing.
    texts = [e["text"] for e in fine if e["type"] == "utterance"]
    assert len(texts) == 2 and all(texts) and not [e for e in fine if e["type"] == "error"], fine
    assert fine[-1]["reason"] == "end_of_input" and fine_code == 1000
    assert took < 30, took


def test_a_subscriber_that_leaves_a_quiet_server_is_let_go_at_once(backends: dict[str, Any]) -> None:
    # Found by the coverage-guided fuzz run: the handler waited for the next event to notice that
    # a subscriber had gone, so one that left while nothing happened stayed forever.
    async def scenario(server: Server) -> list[int]:
        counts = []
        for query in ("", "?session=quiet"):
            if query:
                server.hub.open("quiet")  # a live session that says nothing
            async with connect(server.url + "/subscribe" + query) as ws:
                await ws.send("ping")
                assert await ws.recv() == "pong"
                counts.append(server.hub.subscriber_count)
            for _ in range(50):
                if server.hub.subscriber_count == 0:
                    break
                await asyncio.sleep(0.02)
            counts.append(server.hub.subscriber_count)
        return counts

    assert run_with_server(config(), backends, scenario) == [1, 0, 1, 0]


@pytest.mark.parametrize("every,expect_calls", [("0.2", True), ("0", False)])
def test_the_server_hands_freed_memory_back_on_its_schedule(backends: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                            every: str, expect_calls: bool) -> None:
    from realtime_ser import memory
    from realtime_ser.server import app

    assert memory.available()  # glibc here; elsewhere release_free_memory() is a no-op returning False
    calls: list[float] = []
    monkeypatch.setattr(app, "release_free_memory", lambda: calls.append(time.monotonic()) or True)

    async def scenario(server: Server) -> None:
        await asyncio.sleep(1.0)

    run_with_server(config(f"server.release_memory_s={every}"), backends, scenario)
    assert (len(calls) >= 2) if expect_calls else not calls, calls
