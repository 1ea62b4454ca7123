"""A client of the realtime-ser WebSocket protocol (docs/protocol.md, v1).

* :func:`stream_audio` / :func:`stream_file` send audio to ``/ingest`` and
  collect the session's events;
* :func:`follow` subscribes to ``/subscribe`` and resumes with ``since=``
  after a dropped connection, so no event is lost or seen twice;
* :func:`stream_file_sync` / :func:`follow_sync` wrap them for code without
  an event loop;
* :func:`add_stream_arguments` / :func:`run_stream` and
  :func:`add_follow_arguments` / :func:`run_follow` implement the
  ``realtime-ser stream`` and ``realtime-ser follow`` commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np

from .errors import InputError, RealtimeSerError

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventCallback = Callable[[Event], None]

INGEST_RATES = (8000, 16000, 32000, 48000)
"""Sample rates the server's ``/ingest`` accepts."""
MAX_FRAME_BYTES = 65536
"""The server's default ``max_frame_bytes``: no audio message is larger."""
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
RETRYABLE_CLOSE_CODES = frozenset({1006, 1011, 1013, 4008})
"""Close codes after which :func:`follow` reconnects (abnormal closure, server error, try again
later: a node that cannot reach the cluster's Redis, too slow)."""
FATAL_CLOSE_CODES = frozenset({1008, 4004, 4010})
"""Close codes after which reconnecting cannot help (token, unknown session, since too old)."""
_CLOSE_MEANINGS = {
    1001: "server shutting down",
    1003: "wrong message type",
    1006: "connection lost",
    1008: "policy violation: missing or wrong token",
    1009: "message too big",
    1011: "server error",
    1013: "try again later: this node cannot reach the cluster now",
    4000: "bad start message",
    4004: "unknown session",
    4008: "subscriber too slow",
    4009: "ingest buffer overflow",
    4010: "since older than the oldest retained event",
    4013: "server limit reached",
    4029: "message rate limit exceeded",
}

AudioInput = Any
"""What :func:`stream_audio` sends: an int16 array shaped (n,) or (n, channels);
raw little-endian PCM16 bytes (interleaved); or a (sync or async) iterable of such
arrays/bytes or of :class:`~realtime_ser.frames.AudioFrame` (e.g. a ``MicSource``)."""


class ClientError(RealtimeSerError):
    """A connection to the server failed or the server ended it with an error.

    ``code``/``reason``: the WebSocket close code and reason (``None`` when the
    connection never opened); ``error``: the last ``error`` event received;
    ``events``: the events received before the failure.
    """

    def __init__(self, message: str, *, code: int | None = None, reason: str = "", error: Event | None = None,
                 events: list[Event] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.error = error
        self.events: list[Event] = list(events or [])


# -- helpers --------------------------------------------------------------------------------------


def _endpoint(url: str, path: str) -> tuple[str, dict[str, list[str]]]:
    """``url`` with ``path`` as its path (unless it already ends with it), http(s) turned into ws(s);
    also returns the query parameters ``url`` carried."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ClientError(f"not a WebSocket server URL: {url!r}; use ws://HOST:PORT or wss://HOST:PORT")
    base = parts.path.rstrip("/")
    if not base.endswith(path):
        base += path
    return urlunsplit((scheme, parts.netloc, base, "", "")), parse_qs(parts.query)


def _with_query(url: str, params: dict[str, Any]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{url}?{query}" if query else url


def _headers(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


def _close_text(code: int | None, reason: str | None, error: Event | None) -> str:
    code = 1006 if code is None else code
    meaning = reason or _CLOSE_MEANINGS.get(code, "")
    message = str(error.get("message") or "") if error is not None else ""
    if message and meaning and message.startswith(meaning.rstrip(".")):
        meaning = _CLOSE_MEANINGS.get(code, "")  # the reason is the (truncated) message: say it once
    text = f"the server closed the connection with code {code}" + (f" ({meaning})" if meaning else "")
    if message:
        text += f": {error.get('code', 'error') if error is not None else 'error'}: {message}"
    return text


def _connect_error(url: str, exc: BaseException) -> ClientError:
    from websockets.exceptions import InvalidStatus, InvalidURI

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        hint = " (pass the server's token with --token or token=)" if status == 401 else ""
        return ClientError(f"{url}: the server refused the connection with HTTP {status}"
                           + (f": {body[:200]}" if body else "") + hint, code=1008 if status == 401 else None)
    if isinstance(exc, InvalidURI):
        return ClientError(f"not a WebSocket URL: {url}")
    if isinstance(exc, TimeoutError):
        return ClientError(f"{url}: timed out connecting to the server")
    if isinstance(exc, OSError):
        return ClientError(f"cannot connect to {url}: {exc.strerror or exc}")
    return ClientError(f"cannot connect to {url}: {exc}")


def _connect(url: str, token: str | None, ssl_context: Any = None) -> Any:
    from websockets.asyncio.client import connect

    extra = {"ssl": ssl_context} if ssl_context is not None and url.startswith("wss://") else {}
    return connect(url, additional_headers=_headers(token), open_timeout=10, close_timeout=5, max_size=2**24,
                   **extra)


def _parse_event(message: str | bytes) -> Event | None:
    if isinstance(message, bytes):
        log.debug("ignoring a binary message of %d bytes", len(message))
        return None
    if message == "pong":
        return None
    try:
        event = json.loads(message)
    except json.JSONDecodeError:
        log.warning("ignoring a message that is not JSON: %.100r", message)
        return None
    if not isinstance(event, dict):
        log.warning("ignoring a JSON message that is not an object: %.100r", message)
        return None
    return event


def _as_pcm(block: Any, channels: int) -> bytes:
    """Little-endian interleaved PCM16 bytes of an int16 array or of bytes."""
    if isinstance(block, bytes | bytearray | memoryview):
        data = bytes(block)
    else:
        arr = np.asarray(block)
        if arr.dtype != np.int16:
            raise InputError(f"audio must be int16 PCM, got an array of {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != channels:
            raise InputError(f"audio shaped {np.shape(block)} does not match channels={channels}; "
                             f"use an int16 array shaped {'(n, 2)' if channels == 2 else '(n,) or (n, 1)'}")
        data = arr.astype("<i2", copy=False).tobytes()
    if len(data) % (2 * channels):
        raise InputError(f"audio of {len(data)} bytes is not a whole number of {channels}-channel PCM16 samples")
    return data


class _FrameJoiner:
    """Interleaves per-channel :class:`AudioFrame`s (16 kHz, time-ordered) into PCM16 bytes."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._pending: list[list[np.ndarray]] = [[] for _ in range(channels)]

    def push(self, frame: Any) -> bytes:
        ch = int(frame.channel)
        if not 0 <= ch < self.channels:
            raise InputError(f"frame of channel {ch} but channels={self.channels}")
        self._pending[ch].append(np.asarray(frame.samples, dtype=np.int16))
        if self.channels == 1:
            return _as_pcm(self._pending[0].pop(), 1)
        n = min(sum(len(b) for b in p) for p in self._pending)
        if n == 0:
            return b""
        cols = []
        for p in self._pending:
            joined = np.concatenate(p)
            cols.append(joined[:n])
            p[:] = [joined[n:]] if len(joined) > n else []
        return np.stack(cols, axis=1).astype("<i2").tobytes()


async def _pcm_blocks(audio: AudioInput, channels: int) -> Any:
    """Async iterator of PCM16 byte blocks from any accepted audio input."""
    if isinstance(audio, np.ndarray | bytes | bytearray | memoryview):
        yield _as_pcm(audio, channels)
        return
    joiner = _FrameJoiner(channels)

    def convert(item: Any) -> bytes:
        if hasattr(item, "samples") and hasattr(item, "channel"):
            return joiner.push(item)
        return _as_pcm(item, channels)

    if isinstance(audio, AsyncIterable):
        async for item in audio:
            yield convert(item)
        return
    if not isinstance(audio, Iterable):
        raise InputError(f"cannot stream {type(audio).__name__}: pass an int16 array, PCM16 bytes or frames")
    iterator: Iterator[Any] = iter(audio)
    done = object()
    while True:
        # A live source blocks while it waits for audio: not on the event loop.
        item = await asyncio.to_thread(next, iterator, done)
        if item is done:
            return
        yield convert(item)


# -- ingest ---------------------------------------------------------------------------------------


async def stream_audio(url: str, frames_or_pcm: AudioInput, *, sample_rate: int = 16000, channels: int = 1,
                       session: str | None = None, roles: list[str] | None = None, asr: str | None = None,
                       events: bool = True, token: str | None = None, realtime: bool = False, chunk_ms: int = 100,
                       on_event: EventCallback | None = None, max_messages_per_s: float = 150.0,
                       ssl: Any = None) -> list[Event]:
    """Send audio to ``URL/ingest`` as one session and return its events.

    ``frames_or_pcm``: an int16 array shaped (n,) or (n, channels), raw PCM16
    bytes, or an iterable (sync or async) of such blocks or of ``AudioFrame``s
    (16 kHz; a live source such as ``MicSource`` is read off the event loop).
    Audio goes out in messages of ``chunk_ms`` (never more than 64 KiB), paced
    at the speed of speech when ``realtime``, otherwise as fast as the server
    reads it but at most ``max_messages_per_s`` messages per second (the
    server's rate limit is 200). Then ``{"type": "eof"}``; events are received
    meanwhile (``on_event`` is called for each) until the server closes the
    connection after ``session.ended``.

    Raises :class:`ClientError` when the server closes with a code other than
    1000 (1001, the server shutting down, is accepted once ``session.ended``
    came), naming the code, the reason and the last ``error`` event's message.
    """
    if sample_rate not in INGEST_RATES:
        raise ClientError(f"sample_rate {sample_rate} is not accepted by the server; use one of "
                          f"{', '.join(map(str, INGEST_RATES))} (stream_file resamples other rates)")
    if channels not in (1, 2):
        raise ClientError(f"channels={channels}: the server takes 1 or 2 channels")
    if chunk_ms <= 0:
        raise ClientError(f"chunk_ms must be positive, got {chunk_ms}")
    ingest_url, _ = _endpoint(url, "/ingest")
    start: dict[str, Any] = {"type": "start", "sample_rate": sample_rate, "channels": channels, "events": events}
    if session is not None:
        start["session"] = session
    if roles is not None:
        start["roles"] = list(roles)
    if asr is not None:
        start["asr"] = asr
    bytes_per_sample = 2 * channels
    chunk_bytes = max(1, min(sample_rate * chunk_ms // 1000, MAX_FRAME_BYTES // bytes_per_sample)) * bytes_per_sample

    received: list[Event] = []
    state: dict[str, Any] = {"error": None, "ended": False}

    from websockets.exceptions import ConnectionClosed

    async def receive(ws: Any) -> None:
        try:
            async for message in ws:
                event = _parse_event(message)
                if event is None:
                    continue
                received.append(event)
                kind = event.get("type")
                if kind == "error":
                    state["error"] = event
                    log.log(logging.WARNING if event.get("fatal") else logging.INFO, "server error event: %s: %s",
                            event.get("code"), event.get("message"))
                elif kind == "session.started":
                    log.info("session %s started", event.get("session"))
                elif kind == "session.ended":
                    state["ended"] = True
                if on_event is not None:
                    on_event(event)
        except ConnectionClosed:
            pass

    async def send(ws: Any, receiver: asyncio.Task[None]) -> int:
        sent = 0
        t0 = time.monotonic()
        allowance = 2.0
        last = t0
        pending = b""

        async def put(data: bytes) -> None:
            nonlocal sent, allowance, last
            if realtime:
                due = t0 + (sent + len(data)) / bytes_per_sample / sample_rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif max_messages_per_s > 0:  # token bucket, burst of two messages
                now = time.monotonic()
                allowance = min(2.0, allowance + (now - last) * max_messages_per_s)
                last = now
                if allowance < 1.0:
                    await asyncio.sleep((1.0 - allowance) / max_messages_per_s)
                    allowance = 1.0
                    last = time.monotonic()
                allowance -= 1.0
            await ws.send(data)
            sent += len(data)

        async for block in _pcm_blocks(frames_or_pcm, channels):
            if receiver.done():
                return sent
            pending += block
            while len(pending) >= chunk_bytes:
                await put(pending[:chunk_bytes])
                pending = pending[chunk_bytes:]
                if receiver.done():
                    return sent
        if pending:
            await put(pending)
        await ws.send(json.dumps({"type": "eof"}))
        return sent

    if isinstance(frames_or_pcm, np.ndarray | bytes | bytearray | memoryview):
        frames_or_pcm = _as_pcm(frames_or_pcm, channels)  # a wrong shape fails before connecting
    try:
        ws = await _connect(ingest_url, token, ssl)
    except Exception as exc:
        raise _connect_error(ingest_url, exc) from None
    async with ws:
        await ws.send(json.dumps(start))
        receiver = asyncio.create_task(receive(ws))
        try:
            try:
                sent = await send(ws, receiver)
                log.info("sent %d bytes (%.1f s of audio) and eof", sent, sent / bytes_per_sample / sample_rate)
            except ConnectionClosed:
                log.debug("the server closed the connection while audio was being sent")
            await receiver
        finally:
            if not receiver.done():
                receiver.cancel()
    code, reason = ws.close_code, ws.close_reason or ""
    if code == CLOSE_NORMAL or (code == CLOSE_GOING_AWAY and state["ended"]):
        if code == CLOSE_GOING_AWAY:
            log.warning("the server is shutting down; the session ended before it did")
        return received
    raise ClientError(_close_text(code, reason, state["error"]), code=code if code is not None else 1006,
                      reason=reason, error=state["error"], events=received)


def _read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if p.is_dir():
        raise InputError(f"input is a directory, not an audio file: {p}")
    try:
        data, rate = sf.read(str(p), dtype="int16", always_2d=True)
    except Exception as exc:
        raise InputError(f"{p} is not a readable audio file ({str(exc).splitlines()[0] if str(exc) else exc!r})") \
            from None
    if len(data) == 0:
        raise InputError(f"{p} contains no audio samples")
    if data.shape[1] > 2:
        log.warning("%s has %d channels; mixing them down to one", p, data.shape[1])
        data = np.round(data.astype(np.float32).mean(axis=1, keepdims=True)).astype(np.int16)
    if rate not in INGEST_RATES:
        import soxr

        resampled = soxr.resample(data.astype(np.float32) / 32768.0, rate, 16000, quality="HQ")
        resampled = np.asarray(resampled, dtype=np.float32).reshape(-1, data.shape[1])
        data = np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16)
        log.info("%s: resampled %d Hz to 16000 Hz", p, rate)
        rate = 16000
    return np.ascontiguousarray(data), int(rate)


async def stream_file(url: str, path: str | Path, **kw: Any) -> list[Event]:
    """Stream an audio file (any format libsndfile reads) as one session.

    8/16/32/48 kHz files go out at their own rate, others are resampled to
    16 kHz; mono and stereo are kept (stereo: one speaker per channel), more
    channels are mixed down. Keyword arguments are those of :func:`stream_audio`.
    """
    data, rate = await asyncio.to_thread(_read_audio_file, path)
    kw.setdefault("sample_rate", rate)
    kw.setdefault("channels", data.shape[1])
    return await stream_audio(url, data if data.shape[1] > 1 else data[:, 0], **kw)


# -- subscribe ------------------------------------------------------------------------------------


async def follow(url: str, session: str | None = None, *, since: int | None = None, token: str | None = None,
                 on_event: EventCallback | None = None, reconnect: bool = True, max_retries: int = 10,
                 ssl: Any = None, wait: float | None = 0.0,
                 on_wait: Callable[[str], None] | None = None) -> list[Event]:
    """Subscribe to ``URL/subscribe`` and return the events received.

    ``url`` may be ``ws://host:port`` or ``ws://host:port/subscribe?session=x&since=n``
    (explicit arguments win). With ``session``, follows that session (from
    ``since`` when given) and returns after its ``session.ended``; without,
    follows all sessions until the server closes the connection.

    A dropped connection (abnormal closure, close codes 1006/1011/1013/4008, refused
    while reconnecting) is reopened with ``since=last_seq+1`` after a backoff of
    0.1 s doubling to 2 s; events are de-duplicated by ``(session, seq)``, so
    each is delivered once, in seq order. Raises :class:`ClientError` on close
    codes 4004/4010/1008 (and other error closes) or after ``max_retries``
    failed attempts in a row.

    ``wait``: with ``session``, how many seconds to wait for a session the server does
    not know yet (it asks again every 0.5 s, as a dashboard opened before the call
    would), and then follows it from its first event; ``None`` waits as long as it
    takes, 0 (the default) fails at once with 4004. ``on_wait`` is called once, with
    a line saying so, when waiting starts.
    """
    from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

    base, query = _endpoint(url, "/subscribe")
    if session is None and query.get("session"):
        session = query["session"][0]
    if since is None and query.get("since"):
        try:
            since = int(query["since"][0])
        except ValueError:
            raise ClientError(f"since must be a non-negative integer, got {query['since'][0]!r}") from None
    if token is None and query.get("token"):
        token = query["token"][0]
    if since is not None and session is None:
        raise ClientError("since= needs a session")
    if since is not None and since < 0:
        raise ClientError(f"since must be a non-negative integer, got {since}")

    received: list[Event] = []
    last_seq: dict[str, int] = {}
    last_error: Event | None = None
    failures = 0
    delay = 0.1
    connected_once = False
    waiting_since: float | None = None

    def resume_from() -> int | None:
        if session is None:
            return None
        if session in last_seq:
            return last_seq[session] + 1
        return since

    while True:
        target = _with_query(base, {"session": session, "since": resume_from()})
        code: int | None = None
        reason = ""
        retry_why = ""
        new_events = 0
        try:
            ws = await _connect(target, token, ssl)
        except InvalidStatus as exc:
            raise _connect_error(target, exc) from None
        except (OSError, TimeoutError, InvalidMessage) as exc:
            if not connected_once or not reconnect:
                raise _connect_error(target, exc) from None
            retry_why = f"cannot connect: {exc}"
        except Exception as exc:
            raise _connect_error(target, exc) from None
        else:
            if connected_once:
                log.info("reconnected to %s", target)
            connected_once = True
            async with ws:
                try:
                    async for message in ws:
                        event = _parse_event(message)
                        if event is None:
                            continue
                        ev_session = event.get("session")
                        seq = event.get("seq")
                        if event.get("type") == "error" and (ev_session == "-" or ev_session is None
                                                             or (session is not None and ev_session != session)):
                            last_error = event  # about this connection, not an event of a session
                            log.warning("server error: %s: %s", event.get("code"), event.get("message"))
                            continue
                        if session is not None and ev_session != session:
                            log.debug("ignoring an event of session %r", ev_session)
                            continue
                        if isinstance(ev_session, str) and isinstance(seq, int):
                            if seq <= last_seq.get(ev_session, -1):
                                continue  # seen before the reconnect
                            last_seq[ev_session] = seq
                        received.append(event)
                        new_events += 1
                        if on_event is not None:
                            on_event(event)
                        if session is not None and event.get("type") == "session.ended":
                            await ws.close()
                            return received
                except ConnectionClosed:
                    pass
            code, reason = ws.close_code, ws.close_reason or ""
            if code in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
                if session is not None:
                    log.warning("the server closed the subscription (%d %s) before session %s ended",
                                code, reason, session)
                return received
            if (code == 4004 and session is not None and not received and wait != 0
                    and (waiting_since is None or wait is None or time.monotonic() - waiting_since < wait)):
                # Not started yet: ask again until it starts (or ``wait`` runs out).
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    if since is None:  # it has not started: everything it will send is new to us
                        since = 0
                    limit = "" if wait is None else f" (at most {wait:g} s)"
                    if on_wait is not None:
                        on_wait(f"waiting for session {session} to start{limit}")
                await asyncio.sleep(0.5)
                continue
            if code == 4004 and waiting_since is not None:
                raise ClientError(f"session {session} did not start within {wait:g} s", code=code, reason=reason,
                                  error=last_error, events=received)
            if code is None or code in RETRYABLE_CLOSE_CODES:
                retry_why = _close_text(code, reason, None)
            else:
                raise ClientError(_close_text(code, reason, last_error), code=code, reason=reason, error=last_error,
                                  events=received)
        if not reconnect:
            raise ClientError(retry_why, code=code if code is not None else 1006, reason=reason, error=last_error,
                              events=received)
        if new_events:
            failures, delay = 0, 0.1
        failures += 1
        if failures > max_retries:
            raise ClientError(f"gave up after {max_retries} reconnection attempts; last: {retry_why}", code=code,
                              reason=reason, error=last_error, events=received)
        log.warning("%s; reconnecting in %.1f s (since=%s)", retry_why, delay, resume_from())
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)


# -- sync wrappers ----------------------------------------------------------------------------------


def stream_audio_sync(url: str, frames_or_pcm: AudioInput, **kw: Any) -> list[Event]:
    """:func:`stream_audio` for code without an event loop."""
    return asyncio.run(stream_audio(url, frames_or_pcm, **kw))


def stream_file_sync(url: str, path: str | Path, **kw: Any) -> list[Event]:
    """:func:`stream_file` for code without an event loop."""
    return asyncio.run(stream_file(url, path, **kw))


def follow_sync(url: str, session: str | None = None, **kw: Any) -> list[Event]:
    """:func:`follow` for code without an event loop."""
    return asyncio.run(follow(url, session, **kw))


# -- command line -----------------------------------------------------------------------------------


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``realtime-ser stream FILE --server URL ...``."""
    parser.add_argument("file", metavar="mic|PATH|-|demo|demo-voices",
                        help="what to stream, named as for 'run --input': an audio file (WAV, FLAC, ... any rate, "
                             "mono or stereo), a bundled recording ('demo', 'demo-voices'), 'mic' for the "
                             "microphone (live), or '-' for raw PCM16 on stdin (--rate, --channels)")
    parser.add_argument("--server", default="ws://127.0.0.1:8765", metavar="URL",
                        help="server URL, ws://HOST:PORT or wss://HOST:PORT (default ws://127.0.0.1:8765)")
    parser.add_argument("--session", metavar="ID", help="session id (default: one the server makes up)")
    parser.add_argument("--asr", choices=["whisper", "pocketsphinx", "vosk", "none"],
                        help="recognizer (default: the server's; a server loads whisper or pocketsphinx on first use)")
    parser.add_argument("--realtime", action="store_true", help="send at the speed of speech, like a live call")
    parser.add_argument("--roles", metavar="NAME[,NAME]", help="speaker name per channel, e.g. agent,customer")
    parser.add_argument("--chunk-ms", type=int, metavar="MS",
                        help="audio per message (default 100 with --realtime, else 1000)")
    parser.add_argument("--rate", type=int, metavar="HZ", help="sample rate of raw PCM16 on stdin ('-'; default 16000)")
    parser.add_argument("--channels", type=int, choices=[1, 2],
                        help="channel count of raw PCM16 on stdin ('-'; default 1); with 2, one speaker each")
    _add_common(parser)


def add_follow_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``realtime-ser follow URL ...``."""
    parser.add_argument("url", metavar="URL", help="ws://HOST:PORT or ws://HOST:PORT/subscribe?session=ID")
    parser.add_argument("--session", metavar="ID", help="follow this session only (default: all sessions)")
    parser.add_argument("--since", type=int, metavar="N", help="start with the session's event of seq N")
    parser.add_argument("--no-reconnect", action="store_true", help="fail instead of reconnecting when dropped")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="with --session: how long to wait for a session that has not started yet "
                             "(default: as long as it takes)")
    _add_common(parser)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", help="bearer token of the server (or set REALTIME_SER_TOKEN)")
    parser.add_argument("--jsonl", metavar="PATH|-",
                        help="write events as JSON lines to PATH, '-' for stdout "
                             "(default: stdout unless it is a terminal)")
    if not any("-v" in a.option_strings for a in parser._actions):
        parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")


class _Printer:
    """JSON lines to a file or stdout, and the live terminal view (realtime_ser.output.TerminalView)
    when stdout is a terminal that the JSON lines do not go to."""

    def __init__(self, jsonl: str | None, latency: bool, show_session: bool = False) -> None:
        from .output import JsonlSink, TerminalView

        tty = sys.stdout.isatty()
        target = jsonl if jsonl else (None if tty else "-")
        self._sink = JsonlSink(target) if target else None
        self._view = None
        if tty and target != "-":
            self._view = TerminalView(sys.stdout, latency=latency, show_session=show_session)

    def __call__(self, event: Event) -> None:
        if self._sink is not None:
            self._sink(event)
        if self._view is not None:
            try:
                self._view(event)
            except (KeyError, TypeError, ValueError, AttributeError):  # a malformed event: show what it has
                sys.stdout.write(f"{event.get('type', '?')}: {json.dumps(event, ensure_ascii=False)[:200]}\n")
                sys.stdout.flush()

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


def _token(args: argparse.Namespace) -> str | None:
    return getattr(args, "token", None) or os.environ.get("REALTIME_SER_TOKEN") or None


def run_stream(args: argparse.Namespace) -> int:
    """``realtime-ser stream``: 0 when the session ended normally; raises :class:`ClientError`/``InputError``."""
    roles = [r.strip() for r in args.roles.split(",") if r.strip()] if getattr(args, "roles", None) else None
    spec = str(args.file)
    live = spec in ("mic", "-")
    chunk_ms = getattr(args, "chunk_ms", None) or (100 if args.realtime or live else 1000)
    if (getattr(args, "rate", None) is not None or getattr(args, "channels", None) is not None) and spec != "-":
        raise InputError("--rate and --channels describe raw PCM16 on stdin: use them with '-'")
    printer = _Printer(getattr(args, "jsonl", None), latency=bool(args.realtime) or live)
    common: dict[str, Any] = {"session": args.session, "roles": roles, "asr": args.asr, "token": _token(args),
                              "chunk_ms": chunk_ms, "on_event": printer}
    try:
        if live:
            source = _live_source(spec, getattr(args, "rate", None), getattr(args, "channels", None))
            try:
                asyncio.run(stream_audio(args.server, source, sample_rate=16000, channels=source.out_channels,
                                         realtime=False, **common))
            finally:
                source.close()
        else:
            from .sources import BUNDLED, demo_path

            if spec in BUNDLED:
                spec = str(demo_path(spec))
            stream_file_sync(args.server, spec, realtime=bool(args.realtime), **common)
    finally:
        printer.close()
    return 0


def _live_source(spec: str, rate: int | None, channels: int | None) -> Any:
    """The microphone or raw PCM16 on stdin as 16 kHz frames (one stream per channel: one speaker each)."""
    from dataclasses import replace

    from .config import SourceConfig
    from .sources import open_source

    cfg = replace(SourceConfig(), split_channels=True)
    if rate is not None:
        cfg = replace(cfg, stdin_rate=rate)
    if channels is not None:
        cfg = replace(cfg, stdin_channels=channels)
    return open_source(spec, cfg)


def run_follow(args: argparse.Namespace) -> int:
    """``realtime-ser follow``: 0 when the session ended or the server closed; raises :class:`ClientError`."""
    one_session = getattr(args, "session", None) is not None or "session=" in args.url
    printer = _Printer(getattr(args, "jsonl", None), latency=True, show_session=not one_session)
    timeout = getattr(args, "timeout", None)
    if timeout is not None and timeout < 0:
        raise ClientError(f"--timeout must be 0 or more seconds, got {timeout:g}")

    def waiting(line: str) -> None:
        if sys.stderr.isatty():
            print(f"realtime-ser: {line}", file=sys.stderr, flush=True)
        log.info("%s", line)

    try:
        follow_sync(args.url, getattr(args, "session", None), since=getattr(args, "since", None), token=_token(args),
                    on_event=printer, reconnect=not getattr(args, "no_reconnect", False), wait=timeout,
                    on_wait=waiting)
    finally:
        printer.close()
    return 0
