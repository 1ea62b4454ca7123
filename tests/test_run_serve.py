"""`realtime-ser run --serve HOST:PORT`: one command that processes local audio and serves its events.

A real process, a real WebSocket client: the subscriber sees exactly the events the command
writes as JSON lines, resumes with since=, the dashboard and /sessions show the call, audio
is refused, and Ctrl-C to the process group ends the session for subscribers too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, parse_jsonl, utterances, validate_stream
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime_ser.errors import ConfigError
from realtime_ser.server.local import parse_host_port


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal's foreground job


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "realtime_ser", "run", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_default_sigint, bufsize=0)


def _address(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    """(ws://HOST:PORT, session) from the line the command prints on stderr."""
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    match = re.search(r"events on (ws://[\d.]+:\d+)/subscribe\?session=(\S+) \(dashboard http://", line)
    assert match, line + (proc.stderr.read().decode() if proc.poll() is not None else "")
    return match.group(1), match.group(2)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _follow(url: str, until: Any = None) -> tuple[list[dict[str, Any]], int | None]:
    """Every event of the subscription until the server closes it; ``until(events)`` may act meanwhile."""
    events: list[dict[str, Any]] = []
    async with connect(url, open_timeout=10) as ws:
        try:
            async for msg in ws:
                events.append(json.loads(msg))
                if until is not None:
                    until(events)
        except ConnectionClosed:
            pass
        return events, ws.close_code


def _stop(proc: subprocess.Popen[bytes]) -> tuple[float, str]:
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    return time.monotonic() - t0, err.decode()


def test_address_forms_and_what_is_refused() -> None:
    assert parse_host_port("127.0.0.1:8765", "h") == ("127.0.0.1", 8765)
    assert parse_host_port(":0", "h") == ("h", 0)
    assert parse_host_port("8765", "h") == ("h", 8765)
    assert parse_host_port("[::1]:80", "h") == ("::1", 80)
    for bad in ("", "x", "host:", "host:http", "1.2.3.4:70000", "::1:80"):
        with pytest.raises(ConfigError, match="--serve takes HOST:PORT"):
            parse_host_port(bad, "h")


def test_bad_address_and_taken_port_exit_with_a_message(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    bad = subprocess.run([sys.executable, "-m", "realtime_ser", "run", "--input", "demo", "--asr", "none",
                          "--serve", "localhost", "--jsonl", str(out)], cwd=REPO, capture_output=True, timeout=60)
    assert bad.returncode == 1 and "--serve takes HOST:PORT" in bad.stderr.decode(), bad.stderr.decode()
    assert "Traceback" not in bad.stderr.decode()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "realtime_ser", "run", "--input", "demo", "--asr", "none",
                               "--serve", f"127.0.0.1:{port}", "--jsonl", str(out)],
                              cwd=REPO, capture_output=True, timeout=60)
    err = busy.stderr.decode()
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err, err
    assert not out.exists() or not out.read_text(), "nothing was processed"


def test_a_file_is_served_until_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = _spawn("--input", "demo", "--asr", "none", "--serve", "127.0.0.1:0", "--session", "desk-1",
                  "--jsonl", str(out), "--set", "server.token=s3cret")
    try:
        url, session = _address(proc)
        assert session == "desk-1"
        assert proc.stderr is not None
        assert "the input has ended" in proc.stderr.readline().decode()
        http = url.replace("ws://", "http://")
        written = parse_jsonl(out.read_bytes())
        validate_stream(written)
        assert written[-1]["type"] == "session.ended" and len(utterances(written)) == 6

        # The same events, the same seq, for any subscriber, and from any seq on.
        events, code = asyncio.run(_follow(f"{url}/subscribe?session=desk-1&since=0&token=s3cret"))
        assert events == written and code == 1000
        tail, _ = asyncio.run(_follow(f"{url}/subscribe?session=desk-1&since=5&token=s3cret"))
        assert tail == written[5:]

        status, body = _get(f"{http}/sessions?token=s3cret")
        assert status == 200
        listed = json.loads(body)["sessions"]
        assert [(s["session"], s["kind"], s["state"], s["next_seq"]) for s in listed] == \
            [("desk-1", "run", "ended", len(written))]
        assert _get(f"{http}/?token=s3cret")[0] == 200, "the dashboard"
        assert _get(f"{http}/sessions")[0] == 401, "the token is checked as by serve"
        assert _get(f"{http}/healthz") == (200, "ok\n")
        assert "realtime_ser_sessions_total 1" in _get(f"{http}/metrics?token=s3cret")[1]

        async def ingest() -> None:
            async with connect(f"{url}/ingest?token=s3cret", open_timeout=10):
                pass

        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(ingest())
        assert refused.value.response.status_code == 403
        assert b"takes no audio" in refused.value.response.body
    finally:
        took, err = _stop(proc) if proc.poll() is None else (0.0, "")
    assert proc.returncode == 0, err
    assert took < 5.0, f"{took:.2f} s from Ctrl-C to exit"


def test_ctrl_c_during_a_live_call_ends_it_for_subscribers_too(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = _spawn("--input", "demo", "--realtime", "--asr", "pocketsphinx", "--serve", "127.0.0.1:0",
                  "--jsonl", str(out))
    stopped: list[float] = []
    try:
        url, session = _address(proc)

        def at_second_turn(events: list[dict[str, Any]]) -> None:
            if not stopped and sum(e["type"] == "speech.started" for e in events) == 2:
                stopped.append(time.monotonic())
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the middle of the second turn

        events, code = asyncio.run(_follow(f"{url}/subscribe?session={session}&since=0", at_second_turn))
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert stopped and proc.returncode == 0, err
    assert time.monotonic() - stopped[0] < 8.0
    validate_stream(events)
    assert events == parse_jsonl(out.read_bytes()), "the subscriber got every event the command wrote"
    assert events[-1]["type"] == "session.ended" and events[-1]["reason"] == "stopped"
    utts = utterances(events)
    assert len(utts) == 2 and utts[0]["text"], "the turns heard were recognized and published"
    assert code in (1000, 1001)
