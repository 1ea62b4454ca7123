"""`realtime-ser serve`, `stream` and `follow` as separate processes, as users run them."""

from __future__ import annotations

import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, parse_jsonl, validate_stream

from realtime_ser.asr.whisper_backend import model_available
from realtime_ser.config import AsrConfig
from realtime_ser.sources import demo_path


def start_server(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "realtime_ser", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"serving on (wss?://[\d.]+:\d+)", line)
    assert match, (line, proc.stderr.read().decode() if proc.poll() is not None else "")
    return proc, match.group(1)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> tuple[float, int]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=10)
    return time.monotonic() - t0, proc.returncode


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "realtime_ser", *args], capture_output=True, timeout=timeout,
                          cwd=REPO)


def test_serve_stream_follow_and_ctrl_c() -> None:
    proc, url = start_server("--asr", "none")
    http = url.replace("ws://", "http://")
    try:
        with urllib.request.urlopen(http + "/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
        done = cli("stream", str(demo_path()), "--server", url, "--session", "demo-1", "--jsonl", "-")
        assert done.returncode == 0, done.stderr.decode()
        streamed = parse_jsonl(done.stdout)
        validate_stream(streamed)
        followed = cli("follow", url, "--session", "demo-1", "--since", "0", "--jsonl", "-")
        assert followed.returncode == 0, followed.stderr.decode()
        assert parse_jsonl(followed.stdout) == streamed
        with urllib.request.urlopen(http + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "realtime_ser_sessions_total 1" in metrics
        assert 'realtime_ser_stage_latency_seconds_count{stage="total"} 6' in metrics

        # Ctrl-C while a live session streams: it is ended cleanly and the server exits within 3 s.
        live = subprocess.Popen([sys.executable, "-m", "realtime_ser", "stream", str(demo_path()), "--server", url,
                                 "--session", "live", "--realtime", "--jsonl", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        assert live.stdout is not None
        first = live.stdout.readline()  # the session has started (however long the client took to start)
        assert b'"session.started"' in first, (first, live.stderr.read().decode() if live.stderr else "")
        time.sleep(1.0)
        took, code = stop(proc)
        out, err = live.communicate(timeout=15)
        assert took < 3.0 and code == 0, proc.stderr.read().decode() if proc.stderr else ""
        events = parse_jsonl(first + out)
        validate_stream(events)
        assert events[-1]["type"] == "session.ended"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stream_to_a_server_that_is_not_there() -> None:
    done = cli("stream", str(demo_path()), "--server", "ws://127.0.0.1:9", "--jsonl", "-", timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err and "realtime-ser: error:" in err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    proc, url = start_server("--asr", "none", "--certfile", str(cert), "--keyfile", str(key), "--token", "t0k")
    try:
        assert url.startswith("wss://")
        ctx = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(url.replace("wss://", "https://") + "/sessions",
                                     headers={"Authorization": "Bearer t0k"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            assert json.loads(r.read())["sessions"] == []
        # A client that does not trust the certificate cannot connect.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url.replace("wss://", "https://") + "/healthz", timeout=5)

        import asyncio

        from realtime_ser.client import stream_file

        events = asyncio.run(stream_file(url, demo_path(), token="t0k", ssl=ctx))
        validate_stream(events)
    finally:
        took, _ = stop(proc)
        assert took < 3.0


def test_stream_takes_the_same_input_names_as_run(tmp_path: Path) -> None:
    """`stream demo`, `stream -` (raw PCM16 on stdin, any rate `run` takes) and files, as `run --input`."""
    import numpy as np
    import soundfile as sf

    proc, url = start_server("--asr", "none")
    try:
        demo = cli("stream", "demo", "--server", url, "--session", "named-demo", "--jsonl", "-")
        assert demo.returncode == 0, demo.stderr.decode()
        events = parse_jsonl(demo.stdout)
        validate_stream(events)
        assert [u["speaker"] for u in events if u["type"] == "utterance"] == ["ch0", "ch1"] * 3  # stereo: 2 speakers
        pcm, rate = sf.read(demo_path(), dtype="int16")
        import soxr

        raw = np.clip(np.round(soxr.resample(pcm.astype(np.float32) / 32768, rate, 22050) * 32768), -32768,
                      32767).astype("<i2").tobytes()
        piped = subprocess.run([sys.executable, "-m", "realtime_ser", "stream", "-", "--rate", "22050", "--channels",
                                "2", "--server", url, "--jsonl", "-"], input=raw, capture_output=True, timeout=120,
                               cwd=REPO)
        assert piped.returncode == 0, piped.stderr.decode()
        events = parse_jsonl(piped.stdout)
        validate_stream(events)
        assert [u["speaker"] for u in events if u["type"] == "utterance"] == ["ch0", "ch1"] * 3
        wrong = cli("stream", str(demo_path()), "--rate", "8000", "--server", url)
        assert wrong.returncode == 1 and "use them with '-'" in wrong.stderr.decode()
    finally:
        stop(proc)


def test_follow_waits_for_a_session_that_has_not_started() -> None:
    proc, url = start_server("--asr", "none")
    try:
        follower = subprocess.Popen([sys.executable, "-m", "realtime_ser", "follow", "-v", url, "--session", "later",
                                     "--jsonl", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        assert follower.stderr is not None
        said: list[bytes] = []
        while not said or b"waiting for session later to start" not in said[-1]:
            said.append(follower.stderr.readline())  # the follower asks, is told there is no such session yet
            assert said[-1], b"".join(said).decode()  # (it ended instead of waiting)
        assert follower.poll() is None, b"".join(said).decode()
        done = cli("stream", "demo", "--server", url, "--session", "later", "--jsonl", "-")
        assert done.returncode == 0, done.stderr.decode()
        out, err = follower.communicate(timeout=30)
        assert follower.returncode == 0, err.decode()
        assert parse_jsonl(out) == parse_jsonl(done.stdout)
        t0 = time.monotonic()
        gone = cli("follow", url, "--session", "never", "--timeout", "1.5")
        assert 1.4 < time.monotonic() - t0 < 20
        assert gone.returncode == 1 and "session never did not start within 1.5 s" in gone.stderr.decode()
    finally:
        stop(proc)


@pytest.mark.skipif(not model_available(AsrConfig(backend="whisper")),
                    reason="needs faster-whisper and `realtime-ser models prepare whisper-base`")
def test_stream_asks_for_whisper_or_pocketsphinx_whatever_the_server_runs() -> None:
    proc, url = start_server("--asr", "whisper")
    try:
        for asr in ("pocketsphinx", "whisper"):
            done = cli("stream", "demo", "--server", url, "--asr", asr, "--jsonl", "-", timeout=180)
            assert done.returncode == 0, done.stderr.decode()
            events = parse_jsonl(done.stdout)
            validate_stream(events)
            assert events[0]["asr"]["backend"] == asr
            assert any(e["type"] == "utterance" and e["text"] for e in events)
    finally:
        stop(proc)
