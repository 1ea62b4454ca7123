"""The server: one port for WebSocket (ingest, subscribe, vosk-server protocol)
and plain HTTP (/healthz, /metrics, /sessions, the dashboard).

The event loop only moves bytes: audio goes into each session's bounded
buffer, events come out of the hub. Segmentation, recognition and every model
call run on session threads or a worker pool, never on the loop, so keepalive
pings and other clients are never held up by a model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import http
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..asr import RecognizerBackend, close_backend, create_backend
from ..config import AsrConfig, PipelineConfig
from ..errors import RealtimeSerError
from ..memory import release_free_memory
from ..pipeline import Pipeline
from ..sources import PushSource
from .bus import BusRefused, BusUnavailable, create_bus, owner_key
from .hub import Hub, SinceUnavailable, Subscriber
from .metrics import Registry, server_metrics
from .vosk_compat import VoskCompatSession, VoskConfig, VoskProtocolError, apply_config, parse_message

log = logging.getLogger(__name__)

INGEST_RATES = (8000, 16000, 32000, 48000)
START_FIELDS = {"type", "session", "sample_rate", "channels", "roles", "asr", "events"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ROLE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_TRY_AGAIN = 1013
CLOSE_POLICY = 1008
CLOSE_BAD_REQUEST = 4000
CLOSE_UNKNOWN_SESSION = 4004
CLOSE_TOO_SLOW = 4008
CLOSE_INGEST_OVERFLOW = 4009
CLOSE_SINCE_UNAVAILABLE = 4010
CLOSE_LIMIT = 4013
CLOSE_RATE = 4029


class ProtocolError(RealtimeSerError):
    """A client broke the protocol; ``code`` is the close code to send."""

    def __init__(self, close_code: int, error_code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.error_code = error_code
        self.extra = extra


def parse_start(text: str, default_asr: str, available_asr: set[str]) -> dict[str, Any]:
    """Validate an ingest start message; raise ProtocolError saying what is allowed."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(CLOSE_BAD_REQUEST, "bad_json", f"the start message is not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(CLOSE_BAD_REQUEST, "bad_start", "the start message must be a JSON object")
    unknown = sorted(set(msg) - START_FIELDS)
    if unknown:
        raise ProtocolError(CLOSE_BAD_REQUEST, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join(sorted(START_FIELDS))}")
    if msg.get("type") != "start":
        raise ProtocolError(CLOSE_BAD_REQUEST, "bad_start", 'the first message must be {"type": "start", ...}')
    rate = msg.get("sample_rate")
    if isinstance(rate, bool) or rate not in INGEST_RATES:
        raise ProtocolError(CLOSE_BAD_REQUEST, "unsupported_sample_rate",
                            f"sample_rate {rate!r} is not supported; use one of {', '.join(map(str, INGEST_RATES))}")
    channels = msg.get("channels", 1)
    if isinstance(channels, bool) or channels not in (1, 2):
        raise ProtocolError(CLOSE_BAD_REQUEST, "bad_channels", f"channels {channels!r} is not allowed; use 1 or 2")
    session = msg.get("session")
    if session is not None and (not isinstance(session, str) or not _NAME.match(session)):
        raise ProtocolError(CLOSE_BAD_REQUEST, "bad_session",
                            "session must be 1-64 characters of letters, digits, '_', '.', '-'")
    roles = msg.get("roles")
    if roles is not None:
        if (not isinstance(roles, list) or len(roles) != channels
                or not all(isinstance(r, str) and _ROLE.match(r) for r in roles) or len(set(roles)) != len(roles)):
            raise ProtocolError(CLOSE_BAD_REQUEST, "bad_roles",
                                f"roles must be a list of {channels} distinct names of 1-32 letters, digits, '_.-'")
    asr = msg.get("asr", default_asr)
    if asr not in available_asr:
        raise ProtocolError(CLOSE_BAD_REQUEST, "unsupported_asr", f"asr {asr!r} is not available on this server; "
                            f"use one of {', '.join(sorted(available_asr))}")
    events = msg.get("events", True)
    if not isinstance(events, bool):
        raise ProtocolError(CLOSE_BAD_REQUEST, "bad_start", "events must be true or false")
    return {"session": session, "sample_rate": rate, "channels": channels, "roles": roles, "asr": asr,
            "events": events}


class _RateLimit:
    """Token bucket: ``rate`` messages per second with a burst of two seconds' worth."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = 2.0 * rate
        self.last = time.monotonic()

    def check(self) -> None:
        """Take a token for one message; raise ProtocolError (4029) when there is none."""
        now = time.monotonic()
        self.tokens = min(2.0 * self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            raise ProtocolError(CLOSE_RATE, "rate_limited", f"more than {self.rate:g} messages per second")
        self.tokens -= 1.0


def _error_event(session: str, code: str, message: str, **extra: Any) -> str:
    event = {"v": 1, "type": "error", "session": session or "-", "seq": 0, "t": 0.0, "code": code,
             "message": message, "fatal": True, **extra}
    return json.dumps(event, separators=(",", ":"))


class Server:
    """Owns the hub, the recognizer backends and the listening socket."""

    def __init__(self, config: PipelineConfig, backends: dict[str, RecognizerBackend | None] | None = None,
                 ingest: bool = True) -> None:
        self.config = config
        self.ingest = ingest
        """False: the server takes no audio (no /ingest, no vosk-server protocol) and only serves
        the events of sessions published into its hub (``realtime-ser run --serve``)."""
        self.srv = config.server
        self.registry = Registry()
        self.metrics = server_metrics(self.registry)
        self.hub = Hub(self.srv.log_events, self.srv.retain_ended_s, self.srv.subscriber_queue,
                       observe=self.metrics.observe_event, bus=create_bus(self.srv, self.registry))
        self._backends: dict[str, RecognizerBackend | None] = dict(backends or {})
        self.available_asr: set[str] = set(self._backends)
        """Recognizers an ingest may ask for: the server's own, ``none``, and those it can load on
        first use (pocketsphinx, bundled; whisper when its model is prepared; vosk with a model)."""
        if not self._backends:
            self._backends[config.asr.backend] = create_backend(config.asr)
            if config.asr.backend != "none":
                self._backends["none"] = None
            self.available_asr = set(self._backends) | loadable_backends(config.asr)
        self._loading: dict[str, asyncio.Lock] = {}
        self._pipelines: dict[str, tuple[Pipeline, PushSource, threading.Thread]] = {}
        self._workers = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="ser-vosk")
        self._server: Any = None
        self._vosk_server: Any = None
        self.vosk_port: int | None = None
        """The port of the vosk-server protocol listener (``server.vosk_port``), once started."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._vosk_count = 0
        self._janitor: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        """Connections that end a session of their own (ingest, vosk); shutdown waits for them to
        send the last events and close with 1001."""
        self._owns_backends = not backends
        self.backends_running = False
        """After shutdown: True when a recognizer this server loaded was still decoding."""
        self.port = self.srv.port

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "wss" if self.srv.certfile else "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.srv.host}:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ssl_context = None
        if self.srv.certfile:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                ssl_context.load_cert_chain(self.srv.certfile, self.srv.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise RealtimeSerError(f"cannot load TLS certificate/key: {exc}") from None
        try:
            self._server = await serve(
                self._handle, self.srv.host, self.srv.port, process_request=self._process_request,
                max_size=self.srv.max_frame_bytes, ssl=ssl_context, ping_interval=20, ping_timeout=20,
                close_timeout=2, max_queue=16, write_limit=self.srv.write_limit_bytes,
            )
        except OSError as exc:
            raise RealtimeSerError(f"cannot listen on {self.srv.host}:{self.srv.port}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            await self.hub.bus.start(self.srv.node or f"{socket.gethostname()}:{self.port}")
        except BaseException:
            self._server.close()
            raise
        if self.srv.vosk_port and self.ingest:
            # vosk-server's clients hard-code ws://localhost:2700 (any path): a second listener
            # that speaks only that protocol, so they run unchanged.
            try:
                self._vosk_server = await serve(
                    functools.partial(self._handle, vosk_only=True), self.srv.host, self.srv.vosk_port,
                    process_request=self._process_vosk_request, max_size=self.srv.max_frame_bytes, ssl=ssl_context,
                    ping_interval=20, ping_timeout=20, close_timeout=2, max_queue=16,
                    write_limit=self.srv.write_limit_bytes)
            except OSError as exc:
                self._server.close()
                raise RealtimeSerError(f"cannot listen on {self.srv.host}:{self.srv.vosk_port} (server.vosk_port): "
                                       f"{exc.strerror or exc}") from None
            self.vosk_port = self._vosk_server.sockets[0].getsockname()[1]
        self._janitor = asyncio.create_task(self._expire_loop())
        log.info("listening on %s", self.url)

    async def shutdown(self) -> None:
        """End every session cleanly (flush, session.ended), then close clients with 1001."""
        if self._closing:
            return
        self._closing = True
        t0 = time.monotonic()
        live = self.hub.live_sessions()
        for rec in live:
            if rec.stop is not None:
                rec.stop()
        if live:
            await asyncio.wait([asyncio.create_task(r.done.wait()) for r in live],
                               timeout=self.srv.shutdown_timeout_s)
        for session, (pipeline, _source, _thread) in list(self._pipelines.items()):
            log.warning("session %s did not end in time; aborting it", session)
            pipeline.abort()
        try:
            await self.hub.bus.close(self.srv.shutdown_timeout_s)  # the sessions' last events reach the others
        except Exception:
            log.exception("the event bus did not close cleanly")
        for sub in list(self.hub.all_subscribers):
            sub.offer(None)
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:  # they send each session's last events, then close with 1001
            await asyncio.wait(handlers, timeout=1.0)
        if self._janitor is not None:
            self._janitor.cancel()
        for listener in (self._server, self._vosk_server):
            if listener is None:
                continue
            listener.close(close_connections=True)
            try:
                await asyncio.wait_for(listener.wait_closed(), timeout=1.0)
            except TimeoutError:
                log.warning("some connections did not close in time")
        self._workers.shutdown(wait=False, cancel_futures=True)
        if self._owns_backends:
            # Every session has ended: an idle decoder thread stops at once, and one still
            # decoding (an interrupted utterance) is not waited for.
            closed = await asyncio.to_thread(
                lambda: [close_backend(b, 0.2) for b in self._backends.values() if b is not None])
            self.backends_running = not all(closed)
        log.info("shut down in %.2f s", time.monotonic() - t0)

    async def _expire_loop(self) -> None:
        every = min(30.0, self.srv.retain_ended_s / 2)
        if self.srv.release_memory_s > 0:
            every = min(every, self.srv.release_memory_s)
        last_release = time.monotonic()
        while True:
            await asyncio.sleep(every)
            self.hub.expire()
            if self.srv.release_memory_s > 0 and time.monotonic() - last_release >= self.srv.release_memory_s:
                last_release = time.monotonic()
                # Freed memory fragments across the session threads' arenas; hand it back so
                # that hours of sessions do not creep up the resident size (see memory.py).
                await asyncio.to_thread(release_free_memory)

    # -- HTTP and routing -----------------------------------------------------------------------

    def _tokens(self) -> list[str]:
        return [t.strip() for t in self.srv.token.split(",") if t.strip()]

    def _client_token(self, request: Request, query: dict[str, list[str]]) -> int | None:
        """Which configured token the request carries (its index; 0 when no token is configured),
        or None. Every token is compared, each in constant time."""
        tokens = self._tokens()
        if not tokens:
            return 0
        given = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):].strip()
        elif query.get("token"):
            given = query["token"][0]
        found = None
        for i, token in enumerate(tokens):
            if hmac.compare_digest(given.encode(), token.encode()) and found is None:
                found = i
        return found

    def _authorized(self, request: Request, query: dict[str, list[str]]) -> bool:
        return self._client_token(request, query) is not None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """A browser's Origin: this server's own pages, or one listed in ``server.origins``."""
        allowed = {o.strip().rstrip("/").lower() for o in self.srv.origins.split(",") if o.strip()}
        if "*" in allowed or origin.rstrip("/").lower() in allowed:
            return True
        parts = urlsplit(origin)
        return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()

    def _process_request(self, connection: ServerConnection,
                         request: Request) -> Response | Awaitable[Response] | None:
        parts = urlsplit(request.path)
        path, query = parts.path, parse_qs(parts.query)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if path == "/healthz" and not upgrade:
            degraded = self.hub.bus.health()  # still 200: the node serves its own sessions (docs/deploy.md)
            return _response(200, f"degraded: {degraded}\n" if degraded else "ok\n", "text/plain; charset=utf-8")
        if path.startswith("/static/") and not upgrade:  # the dashboard's code: no data, no token needed
            return _static(path[len("/static/"):])
        if not self._authorized(request, query):
            self.metrics.errors_total.inc(code="unauthorized")
            return _unauthorized(page=path in ("/", "/index.html", "/wallboard") and not upgrade)
        if upgrade:
            origin = request.headers.get("Origin")
            if origin is not None and not self._origin_allowed(origin, request.headers.get("Host", "")):
                self.metrics.errors_total.inc(code="origin")
                log.info("refused a WebSocket from origin %r", origin[:100])
                return _response(403, f"origin {origin[:100]!r} may not open WebSockets here; allowed: this "
                                      f"server's own pages and server.origins\n", "text/plain; charset=utf-8")
            if path not in ("/", "/ingest", "/subscribe"):
                return _response(404, f"no WebSocket endpoint at {path}; use /ingest, /subscribe or /\n")
            if path != "/subscribe" and not self.ingest:
                return _response(403, "this server shows the events of `realtime-ser run --serve` (/subscribe, "
                                      "/sessions, the dashboard at /) and takes no audio; `realtime-ser serve` "
                                      "takes audio over WebSocket\n")
            return None
        if path == "/metrics":
            self._update_gauges()
            return _response(200, self.registry.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/sessions":
            return self._sessions_response()
        if path in ("/", "/index.html", "/wallboard"):
            name = "wallboard.html" if path == "/wallboard" else "dashboard.html"
            page = resources.files("realtime_ser").joinpath("data", name).read_text("utf-8")
            return _response(200, page, "text/html; charset=utf-8", [("Content-Security-Policy", DASHBOARD_CSP)])
        return _response(404, f"not found: {path}\n")

    async def _sessions_response(self) -> Response:
        """Every session of the cluster (docs/protocol.md), this node's and the others'."""
        bus = self.hub.bus
        sessions, complete = await bus.sessions()
        body = json.dumps({"sessions": sessions, "node": bus.node, "bus": bus.kind, "complete": complete,
                           "nodes": bus.live_nodes()})
        return _response(200, body, "application/json")

    async def _backend(self, name: str) -> RecognizerBackend | None:
        """The loaded recognizer ``name``, loading it (off the event loop) on first use."""
        if name in self._backends:
            return self._backends[name]
        lock = self._loading.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._backends:
                log.info("loading the %s recognizer for the first session that asks for it", name)
                try:
                    self._backends[name] = await asyncio.to_thread(
                        create_backend, replace(self.config.asr, backend=name))
                except RealtimeSerError as exc:
                    self.available_asr.discard(name)
                    raise ProtocolError(CLOSE_BAD_REQUEST, "unsupported_asr",
                                        f"asr {name!r} could not be loaded on this server: {exc}") from None
        return self._backends[name]

    def _update_gauges(self) -> None:
        self.hub.bus.update_metrics()
        self.metrics.sessions_active.set(len(self.hub.live_sessions()))
        self.metrics.subscribers_active.set(self.hub.subscriber_count)
        buffered = sum(src.buffered_seconds for _p, src, _t in self._pipelines.values())
        self.metrics.queue_depth.set(buffered, queue="ingest_buffer_seconds")
        self.metrics.queue_depth.set(sum(r.subscribers.__len__() for r in self.hub.sessions.values()),
                                     queue="session_subscribers")
        pending = sum(sub.queue.qsize() for r in self.hub.sessions.values() for sub in r.subscribers)
        pending += sum(sub.queue.qsize() for sub in self.hub.all_subscribers)
        self.metrics.queue_depth.set(pending, queue="subscriber_events")

    def _process_vosk_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The vosk-server port: a WebSocket on any path is the vosk protocol; /healthz answers."""
        parts = urlsplit(request.path)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if parts.path == "/healthz" and not upgrade:
            return _response(200, "ok\n", "text/plain; charset=utf-8")
        if not self._authorized(request, parse_qs(parts.query)):
            self.metrics.errors_total.inc(code="unauthorized")
            return _unauthorized()
        if not upgrade:
            return _response(426, f"this port speaks the vosk-server protocol over WebSocket "
                                  f"(ws://HOST:{self.vosk_port}); the dashboard and the other endpoints are on "
                                  f"port {self.port}\n", "text/plain; charset=utf-8", [("Upgrade", "websocket")])
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("Host", "")):
            self.metrics.errors_total.inc(code="origin")
            return _response(403, f"origin {origin[:100]!r} may not open WebSockets here\n")
        return None

    async def _handle(self, ws: ServerConnection, vosk_only: bool = False) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        task = asyncio.current_task()
        try:
            if vosk_only:
                if task is not None:
                    self._handlers.add(task)
                await self._vosk(ws)
            elif parts.path == "/subscribe":
                await self._subscribe(ws, parse_qs(parts.query))
            elif task is not None:
                self._handlers.add(task)
                await (self._ingest(ws) if parts.path == "/ingest" else self._vosk(ws))
        except ProtocolError as exc:
            self.metrics.errors_total.inc(code=exc.error_code)
            log.info("closing %s: %s (%d)", ws.remote_address, exc, exc.close_code)
            await _fail(ws, exc)
        except ConnectionClosed:
            pass
        finally:
            self._handlers.discard(task)  # type: ignore[arg-type]

    # -- ingest -------------------------------------------------------------------------------

    async def _recv_text(self, ws: ServerConnection, what: str) -> str:
        try:
            msg = await asyncio.wait_for(ws.recv(), timeout=10.0)
        except TimeoutError:
            raise ProtocolError(CLOSE_BAD_REQUEST, "timeout", f"no {what} within 10 s") from None
        if not isinstance(msg, str):
            raise ProtocolError(CLOSE_UNSUPPORTED, "expected_text", f"expected the JSON {what}, got binary data")
        return msg

    async def _ingest(self, ws: ServerConnection) -> None:
        start = parse_start(await self._recv_text(ws, "start message"), self.config.asr.backend, self.available_asr)
        if len(self.hub.live_sessions()) >= self.srv.max_sessions:
            raise ProtocolError(CLOSE_LIMIT, "too_many_sessions",
                                f"the server holds its maximum of {self.srv.max_sessions} live sessions; try later")
        if self._closing:
            raise ProtocolError(CLOSE_GOING_AWAY, "shutting_down", "the server is shutting down")
        assert ws.request is not None
        owner = self._client_token(ws.request, parse_qs(urlsplit(ws.request.path).query)) or 0
        per_token = self.srv.max_sessions_per_token
        if per_token and sum(1 for r in self.hub.live_sessions() if r.owner == owner) >= per_token:
            raise ProtocolError(CLOSE_LIMIT, "too_many_sessions",
                                f"this token already has its maximum of {per_token} live sessions "
                                f"(server.max_sessions_per_token); try later")
        session = start["session"] or uuid.uuid4().hex[:12]
        existing = self.hub.sessions.get(session)
        if existing is not None and existing.live:
            raise ProtocolError(CLOSE_BAD_REQUEST, "session_exists", f"session {session!r} is already live")
        channels = start["channels"]
        backend = await self._backend(start["asr"])
        cfg = replace(self.config,
                      asr=replace(self.config.asr, backend=start["asr"]),
                      source=replace(self.config.source, split_channels=channels == 2, realtime=False))
        source = PushSource(cfg.source, start["sample_rate"], channels, self.srv.ingest_buffer_s)
        tokens = self._tokens()
        key = owner_key(tokens[owner] if tokens else "")
        try:  # the cluster's view: the name and the token's sessions on every node
            await self.hub.bus.claim(session, key, per_token)
        except BusRefused as exc:
            raise ProtocolError(CLOSE_LIMIT if exc.code == "too_many_sessions" else CLOSE_BAD_REQUEST, exc.code,
                                str(exc)) from None
        existing = self.hub.sessions.get(session)  # again: another connection may have opened it meanwhile
        if existing is not None and existing.live:
            raise ProtocolError(CLOSE_BAD_REQUEST, "session_exists", f"session {session!r} is already live")
        loop = asyncio.get_running_loop()
        rec = self.hub.open(session)
        rec.owner = owner
        rec.owner_key = key
        sub = self.hub.subscribe(session, None)
        # Without events the client still gets session.started, so it learns the session id.
        sender = asyncio.create_task(self._pump(ws, sub) if start["events"] else self._pump_started(ws, sub))
        sub.on_overflow = self._closer(ws, session)

        def publish(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self.hub.publish, event)

        pipeline = Pipeline(cfg, source, [publish],
                            backend=backend, session=session, input_name="websocket",
                            speakers=start["roles"])
        rec.stop = pipeline.stop  # server shutdown: flush what was heard, within the pipeline's deadline
        thread = threading.Thread(target=self._run_pipeline, args=(pipeline, session), name=f"ser-session-{session}",
                                  daemon=True)
        self._pipelines[session] = (pipeline, source, thread)
        self.metrics.sessions_total.inc()
        thread.start()
        log.info("session %s started: %d Hz x %d, asr %s", session, start["sample_rate"], channels, start["asr"])
        eof = False
        reader = asyncio.create_task(self._read_audio(ws, source, session))
        ended = asyncio.create_task(rec.done.wait())
        try:
            # Until the client's eof, or until the session ends without it (the server is
            # shutting down): audio that still arrives then is not read.
            await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                eof = reader.result()
        finally:
            reader.cancel()
            ended.cancel()
            await asyncio.gather(reader, ended, return_exceptions=True)
            if not eof:
                pipeline.input_lost()  # no eof: session.ended says "stopped"
            source.end()  # also when the client vanished: everything it sent is still processed
        await rec.done.wait()
        await sender
        await ws.close(CLOSE_GOING_AWAY if self._closing else CLOSE_NORMAL,
                       "server shutting down" if self._closing else "session ended")

    def _run_pipeline(self, pipeline: Pipeline, session: str) -> None:
        try:
            pipeline.run()
        except RealtimeSerError as exc:  # reported as a fatal error event by the pipeline
            log.error("session %s ended with an error: %s", session, exc)
        except Exception:  # a bug: reported as a fatal error event too, logged with its traceback
            log.exception("session %s failed", session)
        finally:
            self._pipelines.pop(session, None)

    async def _read_audio(self, ws: ServerConnection, source: PushSource, session: str) -> bool:
        """Feed the session until eof (True) or until the connection ends without it (False)."""
        limit = _RateLimit(self.srv.max_messages_per_s)
        async for msg in ws:
            limit.check()
            if isinstance(msg, str):
                try:
                    control = json.loads(msg)
                except (json.JSONDecodeError, RecursionError):
                    raise ProtocolError(CLOSE_UNSUPPORTED, "expected_audio",
                                        'expected binary PCM16 audio or {"type": "eof"}, got text') from None
                if isinstance(control, dict) and control.get("type") == "eof":
                    return True
                raise ProtocolError(CLOSE_UNSUPPORTED, "expected_audio",
                                    'expected binary PCM16 audio or {"type": "eof"}')
            if len(msg) % (2 * source.channels):
                raise ProtocolError(CLOSE_BAD_REQUEST, "bad_audio",
                                    f"audio message of {len(msg)} bytes is not a whole number of {source.channels}-"
                                    f"channel PCM16 samples")
            if source.ended:  # the session was stopped (server shutdown): later audio is not read
                return False
            self.metrics.ingest_bytes_total.inc(len(msg))
            waited = 0.0
            while not source.try_push(msg):
                # The session is behind: stop reading (TCP paces the client) until room frees up.
                if waited >= self.srv.ingest_stall_s:
                    raise ProtocolError(CLOSE_INGEST_OVERFLOW, "ingest_overflow",
                                        f"session {session} could not keep up: its buffer of "
                                        f"{self.srv.ingest_buffer_s:g} s of audio stayed full for "
                                        f"{self.srv.ingest_stall_s:g} s")
                await asyncio.sleep(0.01)
                waited += 0.01
                if source.ended:
                    return False
        return False

    # -- subscribe ------------------------------------------------------------------------------

    async def _subscribe(self, ws: ServerConnection, query: dict[str, list[str]]) -> None:
        unknown = sorted(set(query) - {"session", "since", "token"})
        if unknown:
            raise ProtocolError(CLOSE_BAD_REQUEST, "unknown_field",
                                f"unknown query parameter(s) {', '.join(unknown)}; allowed: session, since")
        session = query.get("session", [None])[0]
        since_text = query.get("since", [None])[0]
        since: int | None = None
        if since_text is not None:
            if session is None:
                raise ProtocolError(CLOSE_BAD_REQUEST, "bad_since", "since needs a session")
            if not since_text.isdigit() or len(since_text) > 18:
                raise ProtocolError(CLOSE_BAD_REQUEST, "bad_since", f"since must be a non-negative integer, "
                                    f"got {since_text!r}")
            since = int(since_text)
        try:
            sub = await self.hub.subscribe_any(session, since)
        except BusUnavailable as exc:
            raise ProtocolError(CLOSE_TRY_AGAIN, "bus_unavailable", str(exc)) from None
        except KeyError:
            raise ProtocolError(CLOSE_UNKNOWN_SESSION, "unknown_session", f"no session {session!r} is known "
                                f"(live or ended within the last {self.srv.retain_ended_s:g} s)") from None
        except SinceUnavailable as exc:
            raise ProtocolError(CLOSE_SINCE_UNAVAILABLE, "since_unavailable", str(exc),
                                oldest_seq=exc.oldest) from None
        sub.on_overflow = self._closer(ws, session)
        reader = asyncio.create_task(self._read_subscriber(ws))
        pump = asyncio.create_task(self._pump(ws, sub))
        try:
            # Until the events end (the session ended, the server is closing) or the client
            # leaves: a subscriber that went away does not linger until the next event.
            await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, pump):
                task.cancel()
            await asyncio.gather(reader, pump, return_exceptions=True)
            self.hub.unsubscribe(sub)
        await ws.close(CLOSE_GOING_AWAY if self._closing else CLOSE_NORMAL,
                       "server shutting down" if self._closing else "session ended")

    async def _read_subscriber(self, ws: ServerConnection) -> None:
        async for msg in ws:
            if msg == "ping":
                await ws.send("pong")

    async def _pump(self, ws: ServerConnection, sub: Subscriber) -> None:
        """Send a subscriber its backlog, then its queue, until the end marker or until the
        connection closes (then the reader side reports why)."""
        try:
            for text in sub.backlog:
                await ws.send(text)
            sub.backlog = []
            while True:
                item = await sub.queue.get()
                if item is None:
                    return
                await ws.send(item)
        except ConnectionClosed:
            return

    async def _pump_started(self, ws: ServerConnection, sub: Subscriber) -> None:
        """Send only the session's ``session.started`` event, then stop following it."""
        try:
            for text in sub.backlog:
                if '"session.started"' in text and json.loads(text).get("type") == "session.started":
                    await ws.send(text)
                    return
            sub.backlog = []
            while True:
                item = await sub.queue.get()
                if item is None:
                    return
                if '"session.started"' in item and json.loads(item).get("type") == "session.started":
                    await ws.send(item)
                    return
        except ConnectionClosed:
            return
        finally:
            self.hub.unsubscribe(sub)

    def _closer(self, ws: ServerConnection, session: str | None) -> Callable[[Subscriber], None]:
        def on_overflow(_sub: Subscriber) -> None:
            asyncio.ensure_future(self._close_slow(ws, session))

        return on_overflow

    async def _close_slow(self, ws: ServerConnection, session: str | None) -> None:
        self.metrics.subscribers_dropped_total.inc(reason="too_slow")
        log.info("closing slow subscriber %s of %s", ws.remote_address, session or "all sessions")
        try:
            await asyncio.wait_for(ws.close(CLOSE_TOO_SLOW, "subscriber too slow"), timeout=2.0)
        except TimeoutError:
            ws.transport.abort()

    # -- vosk-server protocol ----------------------------------------------------------------------

    async def _vosk(self, ws: ServerConnection) -> None:
        """The vosk-server protocol (vosk_compat.py): each message answered in order, on a worker
        thread; the connection is a session ``vosk-N`` with events like any other."""
        if len(self.hub.live_sessions()) >= self.srv.max_sessions:
            raise ProtocolError(CLOSE_LIMIT, "too_many_sessions",
                                f"the server holds its maximum of {self.srv.max_sessions} live sessions")
        if self._closing:
            raise ProtocolError(CLOSE_GOING_AWAY, "shutting_down", "the server is shutting down")
        loop = asyncio.get_running_loop()
        limit = _RateLimit(self.srv.max_messages_per_s)
        backend = self._backends.get(self.config.asr.backend)
        vosk = VoskConfig()
        proc: VoskCompatSession | None = None
        self._vosk_count += 1
        session = self.hub.bus.session_name(f"vosk-{self._vosk_count}")
        rec = None
        stopping = asyncio.Event()
        reason = "stopped"  # unless the client sends eof

        def publish(e: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self.hub.publish, e)

        async def run(fn: Callable[..., Any], *args: Any) -> Any:
            return await loop.run_in_executor(self._workers, fn, *args)

        messages = aiter(ws)
        try:
            while True:
                # The next message, unless the server stops first (then the session ends as if
                # the client had sent eof, and the connection closes with 1001).
                receive = asyncio.ensure_future(anext(messages))
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not receive.done():
                    receive.cancel()
                    await asyncio.gather(receive, return_exceptions=True)
                    break
                try:
                    msg = receive.result()
                except StopAsyncIteration:
                    break
                limit.check()
                if isinstance(msg, str):
                    try:
                        obj = parse_message(msg)
                        if "config" in obj:
                            if proc is not None:
                                raise VoskProtocolError("bad_config", "config must come before the audio")
                            vosk = apply_config(vosk, obj["config"])
                            continue
                    except VoskProtocolError as exc:
                        raise ProtocolError(CLOSE_BAD_REQUEST, exc.code, str(exc)) from None
                    if "eof" in obj:
                        reason = "end_of_input"
                        break
                    if "reset" in obj:
                        await ws.send(json.dumps(await run(proc.reset) if proc is not None else {"text": ""}))
                        continue
                    raise ProtocolError(CLOSE_BAD_REQUEST, "bad_json",
                                        'expected {"config": {...}}, {"reset": 1} or {"eof": 1}')
                if proc is None:
                    rec = self.hub.open(session, kind="vosk")
                    rec.stop = stopping.set
                    self.metrics.sessions_total.inc()
                    try:
                        proc = await run(VoskCompatSession, session, self.config, backend, publish, vosk)
                    except RealtimeSerError as exc:  # e.g. a model that cannot load: said, not a traceback
                        self.hub.sessions.pop(session, None)  # nothing was published: it never started
                        raise ProtocolError(1011, "session_failed", f"the session could not start: {exc}") from None
                self.metrics.ingest_bytes_total.inc(len(msg))
                await ws.send(json.dumps(await run(proc.feed, msg)))
            final = await run(proc.finish, reason) if proc is not None else {"text": ""}
            proc = None
            if reason == "end_of_input" or stopping.is_set():
                await ws.send(json.dumps(final))
        finally:
            if proc is not None:  # the client left, or broke the protocol: end the session anyway
                await run(proc.finish, "stopped")
        await ws.close(CLOSE_GOING_AWAY if stopping.is_set() else CLOSE_NORMAL, "server shutting down"
                       if stopping.is_set() else "")


def loadable_backends(asr: AsrConfig) -> set[str]:
    """Recognizers a server can load when a session asks for one (files checked, nothing loaded)."""
    names = {"pocketsphinx", "none"}  # pocketsphinx's model is in its wheel
    from ..asr.whisper_backend import model_available

    if model_available(replace(asr, backend="whisper")):
        names.add("whisper")
    if asr.vosk_model:
        names.add("vosk")
    return names


def close_reason(text: str, limit: int = 123) -> str:
    """``text`` cut to the 123 bytes of UTF-8 a close frame's reason may hold (whole characters;
    the full message is in the ``error`` event sent before the close)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode("utf-8", errors="ignore") + "..."


async def _fail(ws: ServerConnection, exc: ProtocolError) -> None:
    try:
        await ws.send(_error_event("", exc.error_code, str(exc), **exc.extra))
        await ws.close(exc.close_code, close_reason(str(exc)))
    except ConnectionClosed:
        pass


# Only the page's own script and style may run: even if event text reached the page as
# HTML somewhere, no inline script or event handler in it would execute.
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                 "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC_FILES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8",
                "common.js": "text/javascript; charset=utf-8", "wallboard.js": "text/javascript; charset=utf-8"}


def _static(name: str) -> Response:
    """A file of the dashboard from realtime_ser/data (only the names in STATIC_FILES)."""
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return _response(404, f"not found: /static/{name}\n")
    body = resources.files("realtime_ser").joinpath("data", name).read_text("utf-8")
    return _response(200, body, content_type, [("X-Content-Type-Options", "nosniff")])


def _unauthorized(page: bool = False) -> Response:
    """401 that says how to pass the token: a header for programs, ``?token=`` for browsers
    (which cannot set headers on the page or its WebSockets)."""
    text = ("missing or wrong token. Pass the server's token (--token, server.token or REALTIME_SER_TOKEN "
            "where the server runs) as the header 'Authorization: Bearer TOKEN', or, in a browser, in the "
            "address: ?token=TOKEN (for example /?token=TOKEN).")
    headers = [("WWW-Authenticate", 'Bearer realm="realtime-ser"')]
    if not page:
        return _response(401, text + "\n", "text/plain; charset=utf-8", headers)
    html = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>realtime-ser: token needed</title>"
            "</head><body style='font:15px/1.5 system-ui,sans-serif;max-width:42em;margin:3em auto'>"
            "<h1 style='font-size:20px'>This dashboard needs the server's token</h1>"
            "<p>The token was missing or wrong. Add it to the address, like this:</p>"
            "<p><code>http://HOST:PORT/?token=TOKEN</code></p>"
            "<p>The token is the one the server was started with (<code>realtime-ser serve --token TOKEN</code>, "
            "<code>server.token</code> in its config, or <code>REALTIME_SER_TOKEN</code>). Programs send it as "
            "the header <code>Authorization: Bearer TOKEN</code>.</p></body></html>")
    return _response(401, html, "text/html; charset=utf-8",
                     [*headers, ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")])


def _response(status: int, body: str, content_type: str = "text/plain; charset=utf-8",
              extra: list[tuple[str, str]] | None = None) -> Response:
    data = body.encode("utf-8")
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                       ("Cache-Control", "no-store"), *(extra or [])])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


async def serve_forever(config: PipelineConfig, ready: Any = None) -> bool:
    """Run the server until SIGINT/SIGTERM, then shut down gracefully (docs: README, "Stopping").
    False when a recognizer was still decoding at the end (the process should then exit at once)."""
    import signal

    server = Server(config)
    await server.start()
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown()
    return not server.backends_running
