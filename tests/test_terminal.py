"""The terminal monitor: TerminalView on scripted events, and `realtime-ser run` and
`realtime-ser follow` in a pseudo-terminal, as a person (also over SSH) sees them.

With tmux and Chromium present, a capture of the terminal is rendered to
tests/artifacts/terminal.png (and, with ``REALTIME_SER_DOC_IMAGES=1``, copied to
docs/img/terminal.png).
"""

from __future__ import annotations

import asyncio
import fcntl
import html
import io
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, parse_jsonl
from test_alerts import Script

from realtime_ser.alerts import AlertTracker
from realtime_ser.client import stream_audio
from realtime_ser.config import PipelineConfig, to_dict
from realtime_ser.output import TerminalView, format_utterance
from realtime_ser.sources import demo_path

ARTIFACTS = REPO / "tests" / "artifacts"
SGR = re.compile(r"\x1b\[[0-9;]*m")
ANY_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
UTTERANCE_LINE = re.compile(r"^\[ ?\d+:\d\d\.\d– ?\d+:\d\d\.\d\] (\S+) +(\S+)(?: +(\d+)%)? +(.*?)(?:   \(\d+ ms\))?$")


# -- TerminalView on scripted events ------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def scripted(session: str = "call-9") -> list[dict[str, Any]]:
    started = {"v": 1, "type": "session.started", "session": session, "seq": 0, "t": 0.0, "input": "scripted",
               "asr": {"backend": "pocketsphinx", "model": "en-us"}, "sample_rate": 16000, "channels": 2,
               "speakers": ["agent", "customer"], "realtime": True, "config": to_dict(PipelineConfig())}
    events = [started]
    s, tracker = Script(), AlertTracker()
    for speaker, label in [("agent", "neutral"), ("customer", "angry"), ("customer", "angry"), ("agent", None),
                           ("customer", "frustrated")]:
        labels = ("neutral", "happy", "sad", "angry", "frustrated")
        e = s.turn(speaker, label, 0.8, labels=labels) | {"session": session, "seq": len(events)}
        e["text"] = f"turn {len(events)} of {speaker}"
        events.append(e)
        for alert in tracker.observe(e):
            events.append({"v": 1, "type": "alert", "session": session, "seq": len(events), **alert})
    events.append({"v": 1, "type": "transcript.partial", "session": session, "seq": len(events), "t": 16.0,
                   "speaker": "agent", "channel": 0, "utterance_id": "agent-9", "start": 15.5, "text": "let me"})
    events.append({"v": 1, "type": "session.ended", "session": session, "seq": len(events), "t": 17.0,
                   "reason": "end_of_input", "duration": 17.0,
                   "counts": {"utterances": 5, "frames": 0, "dropped_frames": 0, "discarded_segments": 0,
                              "partials": 1, "errors": 0}})
    return events


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = TerminalView(out)
    for e in scripted():
        view(e)
    text = out.getvalue()
    assert not ANY_ESCAPE.search(text) and "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "session call-9: scripted · 16000 Hz × 2 · asr pocketsphinx (en-us)"
    # One definition of the negative level, stated once in the header and used in the alert.
    assert lines[1] == ("  speakers: agent, customer · negative = share of angry/frustrated/sad over a speaker's "
                        "last 4 turns; alert from 50%")
    utts = [m.groups() for line in lines if (m := UTTERANCE_LINE.match(line))]
    assert utts == [("agent", "neutral", "80", "turn 1 of agent"), ("customer", "angry", "80", "turn 2 of customer"),
                    ("customer", "angry", "80", "turn 3 of customer"), ("agent", "–", None, "turn 5 of agent"),
                    ("customer", "frustrated", "80", "turn 6 of customer")]
    alerts = [line for line in lines if "ALERT" in line]
    assert len(alerts) == 1 and "customer: negative 90% over the last 4 turns (2 so far); " in alerts[0]
    assert lines[-1].startswith("session ended (end_of_input): 5 utterances, 17.0 s of audio, 0 frames dropped, "
                                "1 alert · agent: neutral 1 · customer: angry 2 frustrated 1")
    assert "let me" not in text  # partials only on the status line of a terminal


def test_colour_and_status_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = FakeTty()
    view = TerminalView(out)
    for e in scripted()[:-1]:
        view(e)
    text = out.getvalue()
    assert "\x1b[1;31mangry       80%\x1b[0m" in text  # the emotion in colour
    assert "\x1b[1;37;41m ALERT \x1b[0m" in text
    status = text.rsplit("\r\x1b[K", 1)[-1]
    plain = SGR.sub("", status)
    assert plain.startswith("── 0:16.0 · 5 utt · negative: agent 15% customer 90% · 1 alert")
    assert plain.endswith("agent … let me")

    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTty()
    view = TerminalView(out)
    for e in scripted():
        view(e)
    assert not SGR.search(out.getvalue())  # no colour, but still the status line
    assert "\r\x1b[K" in out.getvalue()


def test_status_line_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    out = FakeTty()
    view = TerminalView(out, color=False)
    for e in scripted()[:-1]:
        view(e)
    status = out.getvalue().rsplit("\r\x1b[K", 1)[-1]
    assert len(status) <= 40 and status.endswith("…")


def test_following_several_sessions_prefixes_lines_and_joins_late() -> None:
    out = io.StringIO()
    view = TerminalView(out, show_session=True)
    a, b = scripted("a"), scripted("b")
    for x, y in zip(a[2:], b[2:], strict=True):  # joined after session.started and the first utterance
        view(x)
        view(y)
    lines = out.getvalue().splitlines()
    assert lines[0] == "a: session a (joined at event 2)" and lines[2] == "b: session b (joined at event 2)"
    assert sum(1 for line in lines if line.startswith("a: [")) == sum(1 for line in lines if line.startswith("b: ["))


def test_format_utterance_takes_labels_from_the_scores() -> None:
    event = {"start": 61.25, "end": 63.0, "speaker": "ch1", "text": "hm", "latency_ms": {"total": 612.4},
             "emotion": {"label": "contempt", "scores": {"contempt": 0.55, "calm": 0.45}}}
    assert format_utterance(event) == "[ 1:01.2– 1:03.0] ch1  contempt    55%  hm   (612 ms)"
    event["emotion"] = None
    assert format_utterance(event, latency=False) == "[ 1:01.2– 1:03.0] ch1  –                hm"


# -- in a pseudo-terminal ------------------------------------------------------------------------------


class Pty:
    """A command whose stdout and stderr are a pseudo-terminal (COLS x ROWS); what it
    writes is kept with the time each piece arrived."""

    def __init__(self, args: list[str], *, stdin: Any = None, env: dict[str, str] | None = None,
                 cols: int = 130, rows: int = 30) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        environ.update({"TERM": "xterm-256color", **(env or {})})
        self.proc = subprocess.Popen([sys.executable, "-m", "realtime_ser", *args], stdin=stdin if stdin else slave,
                                     stdout=slave, stderr=slave, cwd=REPO, env=environ, start_new_session=True)
        os.close(slave)
        self._master = master
        self.chunks: list[tuple[float, bytes]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not data:
                break
            self.chunks.append((time.monotonic(), data))
        os.close(self._master)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(5)
        return code

    def text(self) -> str:
        return b"".join(c for _t, c in self.chunks).decode("utf-8", "replace")

    def lines(self) -> list[tuple[float, str]]:
        """Each finished line (status-line redraws removed, colour stripped) with when it arrived."""
        out, buf = [], ""
        for t, chunk in self.chunks:
            buf += chunk.decode("utf-8", "replace")
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                line = line.rstrip("\r").rsplit("\r\x1b[K", 1)[-1]
                out.append((t, SGR.sub("", line)))
        return out


def utterance_lines(lines: list[tuple[float, str]]) -> list[tuple[float, tuple[str, ...]]]:
    return [(t, m.groups()) for t, line in lines if (m := UTTERANCE_LINE.match(line))]


def demo_pcm() -> np.ndarray:
    pcm, rate = sf.read(demo_path(), dtype="int16")
    assert rate == 16000 and pcm.shape[1] == 2
    return pcm


@pytest.mark.slow
def test_run_on_a_terminal_shows_lines_as_utterances_arrive(tmp_path: Any) -> None:
    """Audio arrives on stdin at 4x the speed of speech; the view runs because stdout is a terminal
    (and the events go to a JSON lines file too, to compare)."""
    pcm = demo_pcm()
    jsonl = tmp_path / "events.jsonl"
    term = Pty(["run", "--input", "-", "--rate", "16000", "--channels", "2", "--split-channels", "--asr", "none",
                "--jsonl", str(jsonl)], stdin=subprocess.PIPE)
    assert term.proc.stdin is not None
    block = 1600 * 2  # 0.1 s of stereo
    t0 = time.monotonic()
    data = pcm.astype("<i2").tobytes()
    try:
        for k, i in enumerate(range(0, len(data), block * 2)):
            time.sleep(max(0.0, t0 + k * 0.1 / 4 - time.monotonic()))
            term.proc.stdin.write(data[i : i + block * 2])
            term.proc.stdin.flush()
        term.proc.stdin.close()
    except BrokenPipeError:
        pytest.fail(f"realtime-ser run ended early (exit {term.wait(10)}):\n{term.text()}")
    t_sent = time.monotonic()
    assert term.wait(60) == 0, term.text()
    lines = term.lines()
    text = [line for _t, line in lines]
    head = next(i for i, line in enumerate(text) if line.startswith("session "))  # after any notice on stderr
    assert "16000 Hz × 2" in text[head] and text[head + 1].startswith("  speakers: ch0, ch1")
    utts = utterance_lines(lines)
    events = [e for e in parse_jsonl(jsonl.read_bytes()) if e["type"] == "utterance"]
    assert [u[1][0] for u in utts] == [e["speaker"] for e in events] == ["ch0", "ch1"] * 3
    for (_t, (_speaker, emotion, conf, transcript)), e in zip(utts, events, strict=True):
        assert transcript == "(no words recognized)"
        if e["emotion"]:  # with an emotion model: its label and confidence
            assert emotion == e["emotion"]["label"]
            assert conf == f"{round(100 * e['emotion']['scores'][emotion])}"
        else:
            assert emotion == "–" and conf is None
    # As they arrive: the first line long before the input ends, the lines spread over the input.
    assert utts[0][0] < t_sent - 3.0 and utts[-1][0] - utts[0][0] > 3.0, [(u[0] - t0, u[1]) for u in utts]
    # The summary is the last line (wrapped by the terminal when it is long).
    assert any(line.startswith("session ended (end_of_input): 6 utterances") for line in text[-3:]), text[-3:]
    raw = term.text()
    assert "\r\x1b[K" in raw and " utt" in raw  # the live status line
    assert SGR.search(raw)  # colour on a terminal


def test_run_with_no_color_on_a_terminal() -> None:
    term = Pty(["run", "--input", "demo", "--split-channels", "--asr", "none"], env={"NO_COLOR": "1"})
    assert term.wait(60) == 0, term.text()
    assert not SGR.search(term.text())
    assert len(utterance_lines(term.lines())) == 6


async def paced(pcm: np.ndarray, speed: float) -> AsyncIterator[np.ndarray]:
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), 1600)):
        await asyncio.sleep(max(0.0, t0 + k * 0.1 / speed - time.monotonic()))
        yield pcm[i : i + 1600]


def start_server(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "realtime_ser", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"serving on (ws://[\d.]+:\d+)", line)
    assert match, (line, proc.stderr.read().decode() if proc.poll() is not None else "")
    return proc, match.group(1)


@pytest.mark.slow
def test_follow_a_live_call_on_a_terminal() -> None:
    """`realtime-ser follow URL` against the real server while a call streams in (2x speed)."""
    server, url = start_server()
    result: dict[str, Any] = {}

    def stream() -> None:
        result["events"] = asyncio.run(stream_audio(url, paced(demo_pcm(), 2.0), sample_rate=16000, channels=2,
                                                    session="call-7", roles=["agent", "customer"]))
        result["done"] = time.monotonic()

    streamer = threading.Thread(target=stream)
    try:
        streamer.start()
        deadline = time.monotonic() + 20
        while b'"call-7"' not in urllib.request.urlopen(url.replace("ws://", "http://") + "/sessions").read():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        term = Pty(["follow", url, "--session", "call-7", "--since", "0"])
        assert term.wait(90) == 0, term.text()
        streamer.join(30)
        events = result["events"]
        lines = term.lines()
        text = [line for _t, line in lines]
        assert text[0].startswith("session call-7: websocket · 16000 Hz × 2 · asr ")
        assert text[1].startswith("  speakers: agent, customer")
        utts = utterance_lines(lines)
        expected = [e for e in events if e["type"] == "utterance"]
        assert [(g[0], g[3]) for _t, g in utts] == [(e["speaker"], e["text"] or "(no words recognized)")
                                                    for e in expected]
        for (_t, g), e in zip(utts, expected, strict=True):
            if e["emotion"]:
                assert g[1] == e["emotion"]["label"] and g[2] is not None
            else:
                assert g[1] == "–"
        assert utts[0][0] < result["done"] - 3.0 and utts[-1][0] - utts[0][0] > 3.0  # as they arrived
        assert text[-1].startswith(f"session ended (end_of_input): {len(expected)} utterances")
    finally:
        streamer.join(30)
        server.terminate()
        server.wait(10)


# -- a capture for the README ------------------------------------------------------------------


def ansi_to_html(text: str) -> str:
    """tmux's capture (with -e) as HTML: enough SGR for the view's colours."""
    colors = {30: "#1d1f21", 31: "#e05252", 32: "#5fb35f", 33: "#e0b040", 34: "#6b9cf0", 35: "#c678dd",
              36: "#56b6c2", 37: "#e6e6e6", 39: None}
    backgrounds = {41: "#c62828", 49: None}
    out, style = [], {"fg": None, "bg": None, "bold": False, "dim": False}
    pos = 0
    for m in re.finditer(r"\x1b\[([0-9;]*)m", text):
        out.append(html.escape(text[pos : m.start()]))
        pos = m.end()
        codes = [int(c) for c in m.group(1).split(";") if c] or [0]
        for c in codes:
            if c == 0:
                style = {"fg": None, "bg": None, "bold": False, "dim": False}
            elif c == 1:
                style["bold"] = True
            elif c == 2:
                style["dim"] = True
            elif c in (22,):
                style["bold"] = style["dim"] = False
            elif c in colors:
                style["fg"] = colors[c]
            elif c in backgrounds:
                style["bg"] = backgrounds[c]
        css = []
        if style["fg"]:
            css.append(f"color:{style['fg']}")
        if style["bg"]:
            css.append(f"background:{style['bg']}")
        if style["bold"]:
            css.append("font-weight:bold")
        if style["dim"]:
            css.append("opacity:.6")
        out.append("</span><span style='" + ";".join(css) + "'>")
    out.append(html.escape(text[pos:]))
    return ("<!doctype html><meta charset=utf-8><body style='margin:0;background:#1d1f21'>"
            "<pre style='margin:0;padding:14px 16px;color:#e6e6e6;font:14px/1.35 \"DejaVu Sans Mono\",monospace'>"
            "<span>" + "".join(out) + "</span></pre>")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_tmux_capture_of_a_session(tmp_path: Any) -> None:
    """The view in tmux, as over SSH: the capture has the lines; rendered to PNG when Chromium is here."""
    sock = f"realtime-ser-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    cmd = (f"cd {demo_path().parent} && TERM=xterm-256color {sys.executable} -m realtime_ser run "
           f"--input {demo_path().name} --session call-1 --split-channels; sleep 60")
    subprocess.run([*tmux, "new-session", "-d", "-x", "132", "-y", "14", "-s", "view", cmd], check=True)
    try:
        deadline = time.monotonic() + 90
        capture = ""
        while "session ended" not in capture:
            assert time.monotonic() < deadline, capture
            time.sleep(0.3)
            capture = subprocess.run([*tmux, "capture-pane", "-p", "-e", "-t", "view"], capture_output=True,
                                     text=True, check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    plain = SGR.sub("", capture)
    lines = [line.rstrip() for line in plain.splitlines() if line.strip()]
    assert any(line.startswith("session ") for line in lines)  # (after any notice on stderr)
    assert lines[-1].startswith("session ended (end_of_input): 6 utterances")
    assert len([line for line in lines if UTTERANCE_LINE.match(line)]) == 6
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "terminal.txt").write_text(capture)
    page = tmp_path / "terminal.html"
    page.write_text(ansi_to_html(capture.rstrip("\n")))
    try:
        from test_dashboard import CHROMIUM, sync_playwright
    except ImportError:
        return
    if CHROMIUM is None or sync_playwright is None:
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1120, "height": 100})
        tab.goto(page.as_uri())
        tab.locator("pre").screenshot(path=str(ARTIFACTS / "terminal.png"))
        browser.close()
    if os.environ.get("REALTIME_SER_DOC_IMAGES"):
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "terminal.png", REPO / "docs" / "img" / "terminal.png")
