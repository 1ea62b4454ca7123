"""The server of ``realtime-ser run --serve HOST:PORT``: one local session's events, served live.

``run`` processes the microphone (or a file, or stdin) in this process; with ``--serve`` it
also serves that session's events exactly as ``realtime-ser serve`` serves an ingested call:
``/subscribe`` (with ``since=`` to resume), ``/sessions``, the dashboard at ``/`` and the
wallboard, ``/healthz`` and ``/metrics``, with the same token and origin checks. It takes no
audio (``/ingest`` and the vosk-server protocol answer 403): the recognizer of this process is
the local input's.

The server's event loop runs on a thread of its own; the pipeline's events reach its hub
through ``call_soon_threadsafe``, in order, so a subscriber sees the same events, with the same
``seq``, as the terminal view and the JSON lines.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..config import PipelineConfig
from ..errors import ConfigError, RealtimeSerError
from .app import Server
from .bus import BusRefused, owner_key

__all__ = ["LocalServer", "parse_host_port"]

log = logging.getLogger(__name__)


def parse_host_port(value: str, default_host: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (on ``default_host``); ``[::1]:PORT`` for IPv6. Port 0 = any free port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    elif ":" in text:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            sep = ""  # a bare IPv6 address: ambiguous
    else:
        host, sep, port_text = "", ":", text
    port = int(port_text) if port_text.isdigit() else -1
    if not sep or not 0 <= port <= 65535:
        raise ConfigError(f"--serve takes HOST:PORT (e.g. 127.0.0.1:8765, :8765 or 8765; port 0 = any free "
                               f"port; [::1]:8765 for IPv6), got {value!r}")
    return host or default_host, port


class LocalServer:
    """A :class:`~realtime_ser.server.app.Server` that takes no audio, on a thread of its own."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="ser-serve", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Listen; raises :class:`RealtimeSerError` (e.g. the port is taken) when it cannot."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RealtimeSerError(f"the server did not start within {timeout:.0f} s")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the events server failed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # The server owns no recognizer: it never loads one, since it takes no audio.
        self.server = Server(self.config, backends={"none": None}, ingest=False)
        await self.server.start()
        self._ready.set()
        await self._stop.wait()
        await self.server.shutdown()

    def close(self, timeout: float | None = None) -> None:
        """Shut down: subscribers get every event published before, then a normal close (1001)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has already closed
                pass
        if self._thread.is_alive():
            limit = timeout if timeout is not None else self.config.server.shutdown_timeout_s + 3.0
            self._thread.join(limit)

    # -- the local session -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` (the port it got, when 0 was asked for)."""
        assert self.server is not None, "start() first"
        host = self.config.server.host
        return f"{self.server.scheme}://{f'[{host}]' if ':' in host else host}:{self.server.port}"

    @property
    def page_url(self) -> str:
        """The dashboard's address."""
        return self.url.replace("wss://", "https://").replace("ws://", "http://") + "/"

    def open_session(self, session: str) -> Callable[[dict[str, Any]], None]:
        """Register ``session`` (before its first event) and return the sink that publishes its events.
        The server is closed only after the session ended (its ``session.ended`` published)."""
        assert self._loop is not None and self.server is not None, "start() first"
        server = self.server

        async def opening() -> None:
            hub = server.hub
            existing = hub.sessions.get(session)
            if existing is not None and existing.live:
                raise RealtimeSerError(f"session {session!r} is already live on this server")
            try:
                await hub.bus.claim(session, owner_key(""), 0)
            except BusRefused as exc:
                raise RealtimeSerError(f"session {session!r}: {exc}") from None
            hub.open(session, kind="run")
            server.metrics.sessions_total.inc()

        asyncio.run_coroutine_threadsafe(opening(), self._loop).result(timeout=30)
        loop = self._loop

        def publish(event: dict[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(server.hub.publish, event)
            except RuntimeError:  # the server has shut down (a second Ctrl-C): the other sinks still get it
                pass

        return publish
