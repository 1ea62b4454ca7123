"""The WebSocket + HTTP server: live sessions in, events out (docs/protocol.md)."""

from .app import Server, serve_forever

__all__ = ["Server", "serve_forever"]
