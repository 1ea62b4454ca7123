"""The server's event hub: retention of ended sessions does not follow the wall clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from realtime_ser.server.hub import Hub


def _end(hub: Hub, session: str) -> None:
    hub.open(session)
    hub.publish({"v": 1, "type": "session.started", "session": session, "seq": 0, "t": 0.0})
    hub.publish({"v": 1, "type": "session.ended", "session": session, "seq": 1, "t": 1.0, "reason": "end_of_input",
                 "counts": {}})


def test_a_wall_clock_jump_neither_expires_nor_keeps_ended_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        hub = Hub(100, 60.0, 10)
        _end(hub, "a")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 86400.0)  # the wall clock jumps a day ahead
        assert hub.expire() == 0 and "a" in hub.sessions
        monkeypatch.setattr(time, "time", lambda: real() - 86400.0)  # and a day back
        _end(hub, "b")
        assert hub.expire(time.monotonic() + 61.0) == 2 and not hub.sessions  # retention runs on monotonic time

    asyncio.run(scenario())
