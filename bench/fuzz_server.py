"""Coverage-guided fuzzing of the server's message handlers (atheris, libFuzzer).

``python -m bench.fuzz_server`` feeds generated connections to the same handler the
server runs for every WebSocket (``Server._handle``: the ingest, subscribe and
vosk-server protocols), in process and without sockets, so that libFuzzer's coverage
feedback over ``realtime_ser`` steers the inputs. One input is one connection:

    byte 0            which endpoint: /ingest, /subscribe?QUERY, / (vosk-server protocol)
    then              messages separated by b"\\xff\\xfe\\xfd"; a message whose first byte
                      is even is sent as text (the rest decoded as UTF-8, errors replaced),
                      odd as binary; for /subscribe the first message is the query string

Every connection must end, within 10 s, with a close code the protocol documents (or
a normal end), and the handler must not raise. Anything else stops the run and leaves
the input in ``--out``/crash-*. Seeds (valid start messages, audio, eof, vosk configs,
resumes) are written to a fresh corpus first. Writes ``fuzz.json`` and ``fuzz.md``: the
inputs tried, the coverage reached and what was found. ``make fuzz`` runs 10 minutes;
``tests/test_fuzz.py`` runs a short one where atheris is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SEP = b"\xff\xfe\xfd"
ENDPOINTS = ("/ingest", "/subscribe", "/")
# Close codes the protocol documents (docs/protocol.md), plus a normal end.
ALLOWED_CLOSE = {1000, 1001, 1003, 1008, 1009, 4000, 4004, 4008, 4009, 4010, 4013, 4029}


def encode(endpoint: int, messages: list[str | bytes]) -> bytes:
    """One fuzz input from an endpoint and messages (the format above)."""
    parts = [(b"\x00" + m.encode("utf-8")) if isinstance(m, str) else (b"\x01" + m) for m in messages]
    return bytes([endpoint]) + SEP.join(parts)


def decode(data: bytes) -> tuple[str, list[str | bytes]]:
    if not data:
        return "/ingest", []
    endpoint = ENDPOINTS[data[0] % len(ENDPOINTS)]
    messages: list[str | bytes] = []
    for part in data[1:].split(SEP) if len(data) > 1 else []:
        if not part:
            continue
        body = part[1:]
        messages.append(body.decode("utf-8", errors="replace") if part[0] % 2 == 0 else body)
    if endpoint == "/subscribe":
        query = messages.pop(0) if messages else ""
        query = query if isinstance(query, str) else query.decode("latin-1")
        endpoint = "/subscribe?" + query.replace("#", "%23")
    return endpoint, messages[:64]


def seeds() -> list[bytes]:
    voice = (np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000) * 6000).astype("<i2").tobytes()
    start = {"type": "start", "sample_rate": 16000, "session": "fuzz-seed", "asr": "none"}
    return [
        encode(0, [json.dumps(start), voice[:3200], voice[3200:9600], json.dumps({"type": "eof"})]),
        encode(0, [json.dumps({**start, "channels": 2, "roles": ["agent", "customer"], "sample_rate": 8000}),
                   voice[:3200], json.dumps({"type": "eof"})]),
        encode(0, [json.dumps({**start, "events": False}), voice[:1601]]),
        encode(0, [json.dumps(start), "not json", json.dumps({"type": "eof"})]),
        encode(1, ["session=fuzz-seed&since=0"]),
        encode(1, ["since=3"]),
        encode(1, ["", "ping"]),
        encode(2, [json.dumps({"config": {"sample_rate": 16000}}), voice[:3200], json.dumps({"eof": 1})]),
        encode(2, [voice[:3200], json.dumps({"config": {"sample_rate": 8000}})]),
    ]


# -- the harness (runs in the child process that libFuzzer drives) ---------------------------------


class _Closed(Exception):
    pass


class FakeConnection:
    """What ``Server._handle`` uses of a websockets ServerConnection, fed from a list."""

    def __init__(self, path: str, messages: list[str | bytes]) -> None:
        from types import SimpleNamespace

        from websockets.datastructures import Headers

        self.request = SimpleNamespace(path=path, headers=Headers())
        self.remote_address = ("fuzz", 0)
        self._in = list(messages)
        self.sent: list[str | bytes] = []
        self.close_code: int | None = None
        self.transport = SimpleNamespace(abort=lambda: self._set_closed(1006))

    def _set_closed(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code

    def _closed_error(self) -> Exception:
        from websockets.exceptions import ConnectionClosedOK
        from websockets.frames import Close

        return ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)

    async def recv(self) -> str | bytes:
        await asyncio.sleep(0)
        if self.close_code is not None or not self._in:
            raise self._closed_error()
        return self._in.pop(0)

    def __aiter__(self) -> FakeConnection:
        return self

    async def __anext__(self) -> str | bytes:
        await asyncio.sleep(0)
        if self.close_code is not None or not self._in:
            raise StopAsyncIteration  # the client closed normally after its last message
        return self._in.pop(0)

    async def send(self, message: str | bytes) -> None:
        await asyncio.sleep(0)
        if self.close_code is not None:
            raise self._closed_error()
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if len(reason.encode("utf-8")) > 123:
            raise ValueError(f"close reason of {len(reason.encode('utf-8'))} bytes (at most 123)")
        self._set_closed(code)


def _harness() -> None:  # pragma: no cover - runs under libFuzzer
    import atheris

    with atheris.instrument_imports(include=["realtime_ser"]):
        from realtime_ser.config import PipelineConfig, apply_overrides
        from realtime_ser.server import Server

    cfg = apply_overrides(PipelineConfig(), ["asr.backend=none", "emotion.enabled=false", "server.retain_ended_s=5",
                                             "server.max_messages_per_s=100000", "server.ingest_stall_s=2"])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = Server(cfg, {"none": None})
    state = {"n": 0}

    async def one(path: str, messages: list[str | bytes]) -> FakeConnection:
        ws = FakeConnection(path, messages)
        await asyncio.wait_for(server._handle(ws), timeout=10.0)  # type: ignore[arg-type]
        return ws

    def test_one_input(data: bytes) -> None:
        path, messages = decode(data)
        ws = loop.run_until_complete(one(path, messages))
        if ws.close_code is not None and ws.close_code not in ALLOWED_CLOSE:
            raise AssertionError(f"{path}: closed with {ws.close_code}, not a documented code")
        state["n"] += 1
        if state["n"] % 200 == 0:
            # A connection that broke the protocol is closed at once while its session flushes
            # what it had; within a few seconds every session must have ended.
            deadline = time.monotonic() + 5.0
            while server.hub.live_sessions() and time.monotonic() < deadline:
                loop.run_until_complete(asyncio.sleep(0.1))
            if server.hub.live_sessions():
                raise AssertionError(f"sessions still live 5 s after their connections ended: "
                                     f"{[r.session for r in server.hub.live_sessions()]}")
            server.hub.expire()

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


# -- the driver --------------------------------------------------------------------------------------

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def run(seconds: int, work: Path) -> dict[str, Any]:
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seeds()):
        (corpus / f"seed{i:02d}").write_bytes(s)
    crashes = work / "crashes"
    crashes.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "bench.fuzz_server", "--child", str(corpus), f"-max_total_time={seconds}",
           "-max_len=65536", "-timeout=30", "-rss_limit_mb=4096", f"-artifact_prefix={crashes}/",
           "-print_final_stats=1"]
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=seconds + 300)
    wall = time.monotonic() - t0
    log = proc.stdout
    (work / "fuzz.log").write_text(log, encoding="utf-8")
    done = _DONE.findall(log)
    stats = _STAT.findall(log)
    found = sorted(p.name for p in crashes.iterdir())
    result: dict[str, Any] = {
        "benchmark": "fuzz_server", "seconds": seconds, "wall_seconds": round(wall, 1),
        "exit_status": proc.returncode,
        "inputs": int(done[-1][0]) if done else (int(stats[-1][0]) if stats else None),
        "coverage_edges": int(stats[-1][1]) if stats else None,
        "features": int(stats[-1][2]) if stats else None,
        "corpus": int(stats[-1][3]) if stats else None,
        "seeds": len(seeds()),
        "findings": found,
        "passed": proc.returncode == 0 and not found,
    }
    if not result["passed"]:
        result["log_tail"] = log[-4000:]
    return result


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Fuzzing the server's message handlers",
        "",
        f"`python -m bench.fuzz_server --seconds {r['seconds']}` (atheris, coverage-guided over `realtime_ser`; "
        "every input is one connection to `/ingest`, `/subscribe` or the vosk-server endpoint, driven through "
        "the server's own handler).",
        "",
        "| | |",
        "|---|---|",
        f"| inputs tried | {r['inputs']} |",
        f"| coverage (edges / features) | {r['coverage_edges']} / {r['features']} |",
        f"| corpus at the end (from {r['seeds']} seeds) | {r['corpus']} |",
        f"| findings | {', '.join(r['findings']) or 'none'} |",
        f"| result | {'**passed**' if r['passed'] else '**failed**'} |",
        "",
        f"Whole run {r['wall_seconds']} s.",
    ]
    if r.get("git"):
        lines.append(f"Commit {r['git'].get('commit', '?')}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        sys.argv = [sys.argv[0], *argv[1:]]
        _harness()
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.fuzz_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=600, help="how long to fuzz (default 600)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("error: atheris is not installed: pip install 'realtime-ser[fuzz]'", file=sys.stderr)
        return 2
    from bench.latency import git_info, machine, write_result

    with tempfile.TemporaryDirectory(prefix="rtser-fuzz-") as tmp:
        result = run(args.seconds, Path(tmp))
        kept = []
        for name in result["findings"]:  # keep what was found, to reproduce it
            args.out.mkdir(parents=True, exist_ok=True)
            target = args.out / f"fuzz-{name}"
            target.write_bytes((Path(tmp) / "crashes" / name).read_bytes())
            kept.append(str(target.relative_to(REPO_ROOT)) if target.is_relative_to(REPO_ROOT) else str(target))
        result["kept"] = kept
    result |= {"machine": machine(), "git": git_info()}
    write_result(args.out, "fuzz", result, render(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
