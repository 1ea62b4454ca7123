"""The browser dashboard end to end: the real server, real audio, headless Chromium.

The page is driven with Playwright on Debian's ``chromium`` (never a browser
Playwright downloads). Screenshots go to tests/artifacts/; with
``REALTIME_SER_DOC_IMAGES=1`` the one of the real call is also copied to
docs/img/dashboard.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, parse_jsonl, validate_event, validate_stream

from realtime_ser.alerts import AlertTracker
from realtime_ser.client import stream_audio
from realtime_ser.config import PipelineConfig, apply_overrides, to_dict
from realtime_ser.server import Server
from realtime_ser.sources import demo_path

ARTIFACTS = REPO / "tests" / "artifacts"
DOC_IMAGES = REPO / "docs" / "img"
CHROMIUM = os.environ.get("REALTIME_SER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="needs Debian's chromium (apt-get install chromium) and the playwright package (pip install playwright)",
)


class LiveServer:
    """The real server on loopback, its event loop on a thread of its own."""

    def __init__(self, config: PipelineConfig, backends: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self.server = Server(config, backends)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = self.server.url
        self.http = self.url.replace("ws://", "http://")

    def publish_session(self, session: str, events: list[dict[str, Any]]) -> None:
        """Put a whole session's events into the hub, as a pipeline would."""

        def put() -> None:
            self.server.hub.open(session)
            for event in events:
                self.server.hub.publish(event)

        self.loop.call_soon_threadsafe(put)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.server.shutdown()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def config(*overrides: str) -> PipelineConfig:
    return apply_overrides(PipelineConfig(), ["server.port=0", *overrides])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def none_server() -> Iterator[LiveServer]:
    server = LiveServer(config("asr.backend=none", "server.token=s3cret"), {"none": None})
    yield server
    server.close()


def test_page_and_static_files_are_served(none_server: LiveServer) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    status, headers, body = get(none_server.http + "/", auth)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert b'src="static/dashboard.js"' in body and b"<script>" not in body  # no inline script at all
    assert get(none_server.http + "/")[0] == 401  # the page itself needs the token
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, headers, body = get(f"{none_server.http}/static/{name}")  # code, not data: no token needed
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    for name in ("demo.flac", "../schema/events-v1.schema.json", "dashboard.html", "%2e%2e/config.py", ""):
        assert get(f"{none_server.http}/static/{name}")[0] == 404, name
    js = (REPO / "realtime_ser" / "data" / "dashboard.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


# -- scripted sessions (events published through the hub, as a pipeline would) ----------------------

HOSTILE = [
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=2</script>",
    '"><svg onload="window.__pwned=3">',
    "I said <b>no</b> & I mean it",
]


def scripted_session(session: str, turns: list[tuple[str, str | None, float, str]],
                     labels: tuple[str, ...] = ("neutral", "happy", "sad", "angry")) -> list[dict[str, Any]]:
    """session.started, then per turn (speaker, label, p, text) an utterance and the alerts
    AlertTracker makes of it, then session.ended; all valid events v1."""
    cfg = PipelineConfig()
    events: list[dict[str, Any]] = []

    def emit(type_: str, t: float, **fields: Any) -> dict[str, Any]:
        event = {"v": 1, "type": type_, "session": session, "seq": len(events), "t": round(t, 3), **fields}
        events.append(event)
        return event

    emit("session.started", 0.0, input="scripted", asr={"backend": "none", "model": None}, sample_rate=16000,
         channels=2, speakers=["agent", "customer"], realtime=True, config=to_dict(cfg), version="test")
    tracker = AlertTracker(cfg.alerts)
    for i, (speaker, label, p, text) in enumerate(turns):
        start = 1.0 + 3.2 * i
        emotion = None
        if label is not None:
            rest = (1 - p) / (len(labels) - 1)
            scores = {k: round(p if k == label else rest, 4) for k in labels}
            emotion = {"label": label, "scores": scores, "modalities": {"audio": scores, "text": scores},
                       "context_turns": min(i, 8), "model": {"name": "scripted", "version": "0"}}
        ch = 0 if speaker == "agent" else 1
        utt = emit("utterance", start + 2.5, utterance_id=f"{speaker}-{i}", speaker=speaker, channel=ch,
                   start=start, end=start + 2.5, text=text, words=[], emotion=emotion, end_reason="silence",
                   asr={"backend": "none", "model": None},
                   latency_ms={"vad": 500.0, "queue": 1.0, "asr": 40.0, "emit": 1.0, "total": 542.0})
        for alert in tracker.observe(utt):
            emit("alert", **alert)
    emit("session.ended", 3.2 * len(turns) + 1, reason="end_of_input", duration=3.2 * len(turns) + 1,
         counts={"utterances": len(turns), "frames": 0, "dropped_frames": 0, "discarded_segments": 0,
                 "partials": 0, "errors": 0})
    validate_stream(events)
    return events


class Tab:
    """A browser page and what went wrong on it (script errors, dialogs)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))


def wait_ended(page: Page, timeout_ms: int = 30000) -> None:
    page.wait_for_function("() => window.realtimeSer.state() && window.realtimeSer.state().ended",
                           timeout=timeout_ms)
    page.wait_for_timeout(300)  # the last animation frame


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or sync_playwright is None:
        pytest.skip("needs Debian's chromium and the playwright package")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def scripted_server() -> Iterator[LiveServer]:
    server = LiveServer(config("asr.backend=none"), {"none": None})
    yield server
    server.close()


@pytest.fixture(params=["csp", "no-csp"])
def tab(request: pytest.FixtureRequest, browser: Any) -> Iterator[Tab]:
    """A page with the server's Content-Security-Policy in force, and one without it
    (so that the page's own rendering is shown to be safe, not only the policy)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=request.param == "no-csp")
    yield Tab(context.new_page())
    context.close()


@pytest.fixture
def csp_tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield Tab(context.new_page())
    context.close()


@needs_browser
def test_hostile_text_stays_text_and_emotions_and_alerts_show(scripted_server: LiveServer, tab: Tab) -> None:
    server, page = scripted_server, tab.page
    turns: list[tuple[str, str | None, float, str]] = [
        ("agent", "neutral", 0.8, "thank you for calling, how can I help"),
        ("customer", "neutral", 0.6, HOSTILE[0]),
        ("agent", "happy", 0.7, HOSTILE[1]),
        ("customer", "angry", 0.8, HOSTILE[2]),
        ("customer", "angry", 0.9, "this is the third time I am calling about this"),
        ("agent", None, 0.0, ""),
        ("customer", "angry", 0.85, HOSTILE[3]),
        ("agent", "neutral", 0.8, "I understand, let me fix that right now"),
        ("customer", "neutral", 0.8, "okay"),
        ("customer", "neutral", 0.9, "fine, thank you"),
        ("customer", "happy", 0.8, "that is great, thanks"),
        ("agent", "happy", 0.8, "you are welcome, anything else?"),
        ("customer", "neutral", 0.9, "no, that was all"),
        ("customer", "neutral", 0.9, "bye"),
    ]
    events = scripted_session("scripted-1", turns)
    alerts = [e for e in events if e["type"] == "alert"]
    assert [a["state"] for a in alerts] == ["raised", "cleared"]
    server.publish_session("scripted-1", events)
    page.goto(server.http + "/?session=scripted-1")
    wait_ended(page)
    page.screenshot(path=str(ARTIFACTS / "dashboard-scripted.png"), full_page=True)

    assert page.evaluate("window.__pwned") is None
    assert page.locator("#view img, #view script, #view svg[onload], #view b").count() == 0
    utts = [e for e in events if e["type"] == "utterance"]
    rows = page.locator("#transcript li")
    assert rows.count() == len(utts)
    for i, u in enumerate(utts):
        row = rows.nth(i)
        assert row.get_attribute("data-utterance") == u["utterance_id"]
        assert row.locator(".text").text_content() == (u["text"] or "(no words recognized)")
        chip = row.locator(".chip")
        if u["emotion"] is None:
            assert chip.text_content() == "–"
        else:
            label = u["emotion"]["label"]
            assert chip.text_content() == f"{label} {round(100 * u['emotion']['scores'][label])}%"
            title = chip.get_attribute("title") or ""
            assert "scores: " in title and "audio: " in title and u["text"] in title
    # Timeline: one block per utterance in its speaker's lane, coloured by emotion.
    for speaker in ("agent", "customer"):
        lane = page.locator(f'.lane-row[data-speaker="{speaker}"] .utt')
        assert lane.count() == sum(1 for u in utts if u["speaker"] == speaker)
    angry = page.locator('.utt[data-label="angry"]').first
    assert angry.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(211, 47, 47)"
    assert page.locator("#legend .key").count() == 3  # the labels seen: neutral, happy, angry
    # Alerts as they fired: raised then cleared; the banner is gone once cleared.
    items = page.locator("#alerts li")
    assert items.count() == 2
    assert "cleared" in (items.nth(0).get_attribute("class") or "")
    assert "raised" in (items.nth(1).get_attribute("class") or "")
    assert alerts[0]["message"] in (items.nth(1).text_content() or "")
    assert page.locator("#banner").is_hidden()
    assert page.locator('.alert-band.cleared').count() == 1
    trend = page.locator('.lane-row[data-speaker="customer"] .trend').text_content() or ""
    assert trend.startswith("negative ") and trend.endswith("%")
    assert "session ended" in (page.locator("#conn").text_content() or "")
    assert tab.problems == []


@pytest.mark.slow
@needs_browser
def test_hundreds_of_utterances_stay_fast(scripted_server: LiveServer, csp_tab: Tab) -> None:
    server, page = scripted_server, csp_tab.page
    labels = ["neutral", "happy", "sad", "angry"]
    turns = [("agent" if i % 2 else "customer", labels[(i * 7) % 4], 0.7, f"utterance number {i} " * 3)
             for i in range(600)]
    events = scripted_session("busy", turns)
    server.publish_session("busy", events)
    t0 = time.monotonic()
    page.goto(server.http + "/?session=busy")
    wait_ended(page)
    took = time.monotonic() - t0
    print(f"600 utterances ({len(events)} events) shown in {took:.2f} s")
    assert page.locator("#transcript li").count() == 600
    assert took < 15.0, f"{took:.1f} s to show 600 utterances"
    assert csp_tab.problems == []


# -- the real server on real audio ------------------------------------------------------------------


async def paced(pcm: np.ndarray, speed: float, block_s: float = 0.1) -> AsyncIterator[np.ndarray]:
    """The recording in blocks, at ``speed`` times the speed of speech (a live call, faster)."""
    step = int(16000 * block_s)
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, t0 + k * block_s / speed - time.monotonic()))
        yield pcm[i : i + step]


@pytest.fixture
def call_server(backends: dict[str, Any]) -> Iterator[LiveServer]:
    server = LiveServer(config(), backends)
    yield server
    server.close()


@pytest.mark.slow
@needs_browser
def test_dashboard_follows_a_live_call_and_resumes_after_a_drop(call_server: LiveServer, csp_tab: Tab) -> None:
    pcm, rate = sf.read(demo_path(), dtype="int16")
    assert rate == 16000 and pcm.ndim == 2
    server, page = call_server, csp_tab.page
    arrived: list[tuple[float, dict[str, Any]]] = []
    result: dict[str, Any] = {}

    def stream() -> None:
        try:
            result["events"] = asyncio.run(stream_audio(
                server.url, paced(pcm, speed=2.0), sample_rate=16000, channels=2, session="call-1",
                roles=["agent", "customer"], on_event=lambda e: arrived.append((time.monotonic(), e))))
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    streamer = threading.Thread(target=stream, name="test-stream")
    try:
        streamer.start()
        deadline = time.monotonic() + 10
        while not any(e["type"] == "session.started" for _t, e in arrived):
            assert time.monotonic() < deadline and "error" not in result, result
            time.sleep(0.05)
        page.goto(server.http + "/")  # no ?session=: it follows the newest live session
        page.wait_for_function("() => document.querySelectorAll('#transcript li').length >= 2", timeout=30000)
        assert page.evaluate("window.realtimeSer.state().session") == "call-1"
        assert "session call-1" in (page.locator("#session-title").text_content() or "")
        assert page.locator('#sessions li.live[data-session="call-1"]').count() == 1

        # A network drop: the page stays away until an utterance has ended meanwhile, then
        # resumes with since= and must show it, and everything else, once.
        seen = page.evaluate("window.realtimeSer.state().lastSeq")
        t_drop = time.monotonic()
        page.evaluate("window.realtimeSer.disconnect(60000)")
        page.wait_for_function("() => document.getElementById('conn').textContent.includes('connection lost')",
                               timeout=5000)
        deadline = time.monotonic() + 30
        while not [e for t, e in arrived if e["type"] == "utterance" and t > t_drop]:
            assert time.monotonic() < deadline, "no utterance ended while the page was away"
            time.sleep(0.05)
        assert page.evaluate("window.realtimeSer.state().lastSeq") == seen  # it was away indeed
        page.evaluate("window.realtimeSer.resume()")
        page.wait_for_function("() => document.getElementById('conn').textContent.includes('reconnected')",
                               timeout=15000)
        t_back = time.monotonic()
        status = page.locator("#conn").text_content() or ""
        assert f"resumed from event {seen + 1}" in status, status

        streamer.join(120)
        assert not streamer.is_alive() and "error" not in result, result
        events = result["events"]
        validate_stream(events)
        wait_ended(page)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        utts = [e for e in events if e["type"] == "utterance"]
        assert len(utts) >= 4
        missed_live = [e for t, e in arrived if e["type"] == "utterance" and t_drop < t < t_back]
        state = page.evaluate("window.realtimeSer.state()")
        assert state["utterances"] == [u["utterance_id"] for u in utts]  # all, once each, in order
        assert state["reconnects"] == 1 and state["lastSeq"] == events[-1]["seq"]
        rows = page.locator("#transcript li")
        assert rows.count() == len(utts)
        assert [rows.nth(i).locator(".text").text_content() for i in range(len(utts))] == [
            u["text"] or "(no words recognized)" for u in utts]
        assert sum(1 for u in utts if u["text"]) >= 3  # real transcripts, not only empty ones
        for speaker in {u["speaker"] for u in utts}:
            assert page.locator(f'.lane-row[data-speaker="{speaker}"] .utt').count() == sum(
                1 for u in utts if u["speaker"] == speaker)
        # Emotions: shown when the events carry them (the emotion model), "–" when they do not.
        for i, u in enumerate(utts):
            chip = rows.nth(i).locator(".chip").text_content() or ""
            if u["emotion"]:
                assert chip.startswith(u["emotion"]["label"] + " "), (chip, u["emotion"])
            else:
                assert chip == "–"
        assert page.locator("#alerts li").count() == sum(1 for e in events if e["type"] == "alert")
        for e in events:
            validate_event(e)
        assert csp_tab.problems == []

        # Opened afresh after the call: the whole session from the server's log.
        page.set_viewport_size({"width": 1400, "height": 640})
        page.goto(server.http + "/?session=call-1")
        wait_ended(page)
        assert page.evaluate("window.realtimeSer.state().utterances") == [u["utterance_id"] for u in utts]
        assert page.locator('#sessions li.ended[data-session="call-1"]').count() == 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-ended.png"))
        if os.environ.get("REALTIME_SER_DOC_IMAGES"):
            DOC_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ARTIFACTS / "dashboard-ended.png", DOC_IMAGES / "dashboard.png")
        print(json.dumps({"utterances": len(utts), "missed_while_away": len(missed_live),
                          "away_s": round(t_back - t_drop, 2)}))
    finally:
        streamer.join(60)


# -- the page's rough edges ---------------------------------------------------------------------------


def _alert_turns() -> list[tuple[str, str | None, float, str]]:
    return [("agent", "neutral", 0.8, "hello, how can I help"), ("customer", "angry", 0.8, "this is broken"),
            ("customer", "angry", 0.9, "again broken"), ("agent", "neutral", 0.7, "let me look")]


@needs_browser
def test_alert_banner_goes_when_the_call_ends_and_slash_opens_the_latest_call(scripted_server: LiveServer,
                                                                               csp_tab: Tab) -> None:
    server, page = scripted_server, csp_tab.page
    older = scripted_session("older", [("agent", "happy", 0.8, "hi")])
    server.publish_session("older", older)
    time.sleep(0.3)
    events = scripted_session("angry-call", _alert_turns())
    assert [e["state"] for e in events if e["type"] == "alert"] == ["raised"]  # still raised at the end
    live = events[:-1]
    server.publish_session("angry-call", live)
    page.goto(server.http + "/?session=angry-call")
    page.wait_for_function("() => window.realtimeSer.state() && window.realtimeSer.state().utterances.length === 4")
    page.wait_for_timeout(300)
    assert page.locator("#banner").is_visible()  # a live call with an alert raised
    server.loop.call_soon_threadsafe(server.server.hub.publish, events[-1])
    wait_ended(page)
    assert page.locator("#banner").is_hidden(), "the banner is for calls in progress"
    assert page.locator("#alerts li.raised").count() == 1  # what was raised stays in the list
    # Opened at / with no live call: the call that ended last, not "no session selected".
    page.goto(server.http + "/")
    page.wait_for_function("() => window.realtimeSer.state() && window.realtimeSer.state().session", timeout=10000)
    assert page.evaluate("window.realtimeSer.state().session") == "angry-call"
    wait_ended(page)
    assert "session angry-call" in (page.locator("#session-title").text_content() or "")
    assert csp_tab.problems == []


@needs_browser
def test_one_definition_of_the_negative_level_everywhere(scripted_server: LiveServer, csp_tab: Tab) -> None:
    from realtime_ser.alerts import describe_level

    server, page = scripted_server, csp_tab.page
    events = scripted_session("levels", _alert_turns())
    server.publish_session("levels", events)
    page.goto(server.http + "/?session=levels")
    wait_ended(page)
    tracker = AlertTracker(PipelineConfig().alerts)
    said: dict[str, str] = {}
    for e in events:
        if e["type"] == "utterance" and e["emotion"]:
            tracker.observe(e)
            level = tracker.level(e["speaker"], e["channel"])
            assert level is not None
            turns = min(4, sum(1 for u in events if u["type"] == "utterance" and u["speaker"] == e["speaker"]
                               and u["seq"] <= e["seq"] and u["emotion"]))
            said[e["speaker"]] = describe_level(level, turns, 4)
        if e["type"] == "alert":
            assert said[e["speaker"]] in e["message"]  # the alert words it as the views do
    for speaker, text in said.items():
        assert page.locator(f'.lane-row[data-speaker="{speaker}"] .trend').get_attribute("title") == text
    definition = page.locator("#definition").text_content() or ""
    assert definition == "negative = share of angry/frustrated/sad over a speaker's last 4 turns"
    assert csp_tab.problems == []


@needs_browser
def test_no_scrollbars_where_nothing_overflows(scripted_server: LiveServer, csp_tab: Tab) -> None:
    server, page = scripted_server, csp_tab.page
    server.publish_session("short", scripted_session("short", _alert_turns()))
    labels = ["neutral", "happy", "sad", "angry"]
    server.publish_session("long", scripted_session("long", [("agent" if i % 2 else "customer", labels[i % 4], 0.7,
                                                              "words") for i in range(80)]))
    page.goto(server.http + "/?session=short")
    wait_ended(page)
    sizes = page.evaluate("""() => { const t = document.getElementById('timeline'), d = document.documentElement;
        return [d.scrollHeight, d.clientHeight, d.scrollWidth, d.clientWidth, t.scrollWidth, t.clientWidth]; }""")
    page_h, view_h, page_w, view_w, tl_w, tl_view = sizes
    assert page_h <= view_h and page_w <= view_w, sizes
    assert tl_w <= tl_view, sizes  # a 14 s call fits the panel: no sideways scrollbar
    page.goto(server.http + "/?session=long")  # 4 minutes: the timeline scrolls, the page does not widen
    wait_ended(page)
    tl_w, tl_view, page_w, view_w = page.evaluate("""() => { const t = document.getElementById('timeline'),
        d = document.documentElement; return [t.scrollWidth, t.clientWidth, d.scrollWidth, d.clientWidth]; }""")
    assert tl_w > tl_view and page_w <= view_w
    assert csp_tab.problems == []


def test_a_missing_token_page_says_how_to_pass_it(none_server: LiveServer) -> None:
    for url in (none_server.http + "/", none_server.http + "/wallboard", none_server.http + "/?token=wrong"):
        status, headers, body = get(url, {"Accept": "text/html"})
        assert status == 401 and headers["Content-Type"].startswith("text/html")
        assert b"?token=TOKEN" in body and b"Authorization: Bearer" in body
    status, headers, body = get(none_server.http + "/sessions")
    assert status == 401 and b"?token=TOKEN" in body and b"Authorization: Bearer TOKEN" in body
    assert get(none_server.http + "/wallboard?token=s3cret")[0] == 200


# -- the wallboard: every live call at once ---------------------------------------------------------


def _level(events: list[dict[str, Any]], speaker: str) -> tuple[float | None, int]:
    tracker = AlertTracker(PipelineConfig().alerts)
    turns = 0
    channel = 0
    for e in events:
        if e["type"] == "utterance" and e["speaker"] == speaker and e["emotion"]:
            tracker.observe(e)
            turns += 1
            channel = e["channel"]
    return tracker.level(speaker, channel), min(turns, 4)


def _alerting(events: list[dict[str, Any]]) -> bool:
    raised: set[str] = set()
    for e in events:
        if e["type"] == "alert":
            (raised.add if e["state"] == "raised" else raised.discard)(e["speaker"])
    return bool(raised)


def _check_wall(page: Page, truth: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The wallboard against the events each call has sent so far: per tile, the same alert state and
    levels as computed here from the events up to the last one the page applied; tiles sorted by
    alert, then negativity."""
    state, dom = page.evaluate("""() => [window.realtimeSerWall.state(),
        [...document.querySelectorAll('#calls > li')].map(li => li.dataset.session)]""")
    for tile in state:
        known = truth.get(tile["session"], [])
        if not known or known[-1]["seq"] < tile["lastSeq"]:
            continue  # the page is ahead of this test's own subscriber: compare next time
        seen = [e for e in known if e["seq"] <= tile["lastSeq"]]
        assert tile["alert"] == _alerting(seen), (tile, seen[-3:])
        for sp in tile["speakers"]:
            level, turns = _level(seen, sp["name"])
            if level is None:
                assert sp["level"] is None
            else:
                assert abs(sp["level"] - level) < 1e-9 and sp["turns"] == turns, (tile["session"], sp, level)
    keys = [(t["alert"], t["level"]) for t in state]
    assert keys == sorted(keys, key=lambda k: (not k[0], -k[1])), keys
    assert dom == [t["session"] for t in state]
    return state  # type: ignore[no-any-return]


async def _vosk_call(url: str, pcm: np.ndarray, speed: float, replies: list[dict[str, Any]]) -> None:
    """vosk-server's test.py, message for message, paced like a live call."""
    from websockets.asyncio.client import connect

    async with connect(url) as ws:
        await ws.send('{ "config" : { "sample_rate" : %d } }' % 16000)  # noqa: UP031
        step = 3200  # 0.2 s
        t0 = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, t0 + k * 0.2 / speed - time.monotonic()))
            await ws.send(pcm[i : i + step].astype("<i2").tobytes())
            replies.append(json.loads(await ws.recv()))
        await ws.send('{"eof" : 1}')
        replies.append(json.loads(await ws.recv()))


@pytest.mark.slow
@needs_browser
def test_wallboard_shows_eight_live_calls_sorted_and_opens_one(call_server: LiveServer, browser: Any) -> None:
    """Eight calls streaming at once (six over /ingest, two over the vosk-server protocol), some
    started before the page opened: one tile each, the state each call's events say, alerts first
    and then the most negative, live; a click opens the call; ended calls leave."""
    from realtime_ser.client import follow

    pcm, rate = sf.read(demo_path(), dtype="int16")
    assert rate == 16000
    mono = pcm.astype(np.int32).sum(axis=1).clip(-32768, 32767).astype(np.int16)
    # the first two calls are real voices (the customer turns angry, then sad: an alert within the call's
    # first seconds), twice over so they last while all eight are live; the synthetic demo's labels follow
    # its words and raise none
    voices, rate = sf.read(demo_path("demo-voices"), dtype="int16")
    assert rate == 16000 and voices.shape[1] == 2
    voices = np.concatenate([voices, voices])
    customer = np.ascontiguousarray(voices[:, 1])  # one leg of that call, for the first vosk-protocol client
    server = call_server
    speed = 3.0
    truth: dict[str, list[dict[str, Any]]] = {}
    done: dict[str, Any] = {}

    async def calls() -> None:
        def record(e: dict[str, Any]) -> None:
            truth.setdefault(e["session"], []).append(e)

        watcher = asyncio.create_task(follow(server.url, on_event=record, reconnect=False))
        await asyncio.sleep(0.3)

        async def ingest(i: int) -> None:
            await asyncio.sleep(2.0 * i)  # staggered: at any moment some calls are further on than others
            await stream_audio(server.url, paced(voices if i < 2 else pcm, speed), sample_rate=16000, channels=2,
                               session=f"call-{i}", roles=["agent", "customer"])

        async def vosk(i: int) -> None:
            await asyncio.sleep(2.0 * i)
            await _vosk_call(server.url, customer if i == 1 else mono, speed, done.setdefault(f"replies-{i}", []))

        await asyncio.gather(*(ingest(i) for i in range(6)), *(vosk(i) for i in (1, 4)))
        await asyncio.sleep(1.0)
        watcher.cancel()

    streamer = threading.Thread(target=lambda: done.setdefault("result", asyncio.run(calls())), name="test-calls")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = Tab(context.new_page())
    page = tab.page
    try:
        streamer.start()
        time.sleep(3.0)  # two calls are under way before the page opens: it catches up on them
        page.goto(server.http + "/wallboard")
        page.wait_for_function("() => window.realtimeSerWall.state().length === 8", timeout=40000)
        sessions = {t["session"] for t in page.evaluate("window.realtimeSerWall.state()")}
        assert sessions == {f"call-{i}" for i in range(6)} | {"vosk-1", "vosk-2"}
        seen_mixed = False
        shot = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = _check_wall(page, truth)
            alerting = sum(t["alert"] for t in state)
            if 0 < alerting < len(state):
                seen_mixed = True
                if not shot and alerting >= 2 and len(state) == 8:
                    page.screenshot(path=str(ARTIFACTS / "wallboard.png"))
                    shot = True
            if len(state) < 8:
                break  # calls are ending
            page.wait_for_timeout(400)
        assert seen_mixed, "alerts first: some calls alerting while others were not"
        assert shot
        # A click opens the call on the dashboard.
        first = page.locator("#calls > li").first
        target = first.get_attribute("data-session")
        first.locator("a").click()
        page.wait_for_function("() => window.realtimeSer && window.realtimeSer.state() "
                               "&& window.realtimeSer.state().utterances.length > 0", timeout=15000)
        assert page.evaluate("window.realtimeSer.state().session") == target
        page.goto(server.http + "/wallboard")
        streamer.join(120)
        assert not streamer.is_alive()
        page.wait_for_function("() => window.realtimeSerWall.state().length === 0", timeout=15000)
        assert page.locator("#wall-empty").is_visible()
        # Every call had its emotion on every utterance, the vosk-protocol ones included.
        for session, events in truth.items():
            validate_stream(events)
            assert all(u["emotion"] for u in events if u["type"] == "utterance"), session
        assert any(e["type"] == "alert" for e in truth["vosk-1"])
        assert tab.problems == []
        if os.environ.get("REALTIME_SER_DOC_IMAGES"):
            DOC_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ARTIFACTS / "wallboard.png", DOC_IMAGES / "wallboard.png")
    finally:
        streamer.join(120)
        context.close()


def test_run_serve_shows_its_call_in_the_dashboard(tmp_path: Path, csp_tab: Tab) -> None:
    """The desktop case: one command (`run --serve`) processes the audio; the browser page shows its call."""
    from test_run_serve import _address, _spawn, _stop

    out = tmp_path / "events.jsonl"
    proc = _spawn("--input", "demo", "--asr", "none", "--serve", "127.0.0.1:0", "--session", "desk",
                  "--jsonl", str(out))
    try:
        url, session = _address(proc)
        assert proc.stderr is not None and "the input has ended" in proc.stderr.readline().decode()
        page = csp_tab.page
        page.goto(url.replace("ws://", "http://") + "/")  # no ?session=: the call that ended last
        wait_ended(page)
        utterances = [e for e in parse_jsonl(out.read_bytes()) if e["type"] == "utterance"]
        assert page.evaluate("window.realtimeSer.state().session") == session == "desk"
        assert page.locator("#transcript li").count() == len(utterances) == 6
        assert not csp_tab.problems, csp_tab.problems
    finally:
        _, err = _stop(proc) if proc.poll() is None else (0.0, "")
    assert proc.returncode == 0, err
