"""The clients of alphacephei's vosk-server repository, reimplemented message for message.

Each function sends exactly what the script of that name sends (the same text
messages, byte for byte; audio in the same chunk sizes, read the same way) and
returns the replies it prints, parsed. Only the address is a parameter (the
scripts hard-code ``ws://localhost:2700``) and the input file (their ``argv[1]``).

- ``websocket/test.py``: config with the WAV's rate, 0.2 s chunks, eof.
- ``websocket/test_words.py``: config with a phrase list, ``sample_rate`` 16000.0
  (a float) and ``words: 0``; chunks of 4000 frames.
- ``websocket/test_alternatives.py``: config with ``max_alternatives: 20``.
- ``websocket/test_srt.py``: *no* config (so 8000 Hz); the file's raw bytes,
  header included, 8000 bytes at a time; subtitles from the results' words.
- ``websocket/test_ffmpeg.py``: config 16000; ffmpeg's s16le output, 8000 bytes
  at a time (sox makes the same bytes where ffmpeg is not installed).
- ``websocket-gpu-batch/test.py``: config with the WAV's rate, 6400-frame chunks.

``{"reset" : 1}`` is sent by none of them; :func:`with_reset` is test.py with a
reset in the middle, the way vosk-server's own server code handles it.

Import the module (``import vosk_clients``), not its functions: pytest would
collect functions named ``test_*`` as tests.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import wave
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

Reply = dict[str, Any]


async def _exchange(ws: Any, data: bytes | str) -> Reply:
    await ws.send(data)
    return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def test_py(uri: str, path: Path) -> list[Reply]:
    replies = []
    async with connect(uri) as websocket:
        wf = wave.open(str(path), "rb")
        await websocket.send('{ "config" : { "sample_rate" : %d } }' % (wf.getframerate()))  # noqa: UP031
        buffer_size = int(wf.getframerate() * 0.2)  # 0.2 seconds of audio
        while True:
            data = wf.readframes(buffer_size)
            if len(data) == 0:
                break
            replies.append(await _exchange(websocket, data))
        replies.append(await _exchange(websocket, '{"eof" : 1}'))
    return replies


async def test_words_py(uri: str, path: Path) -> list[Reply]:
    replies = []
    async with connect(uri) as websocket:
        wf = wave.open(str(path), "rb")
        await websocket.send('''{"config" : 
                    { "phrase_list" : ["zero one two three four five six seven eight nine oh"],
                      "sample_rate" : 16000.0,
                      "words" : 0}}''')  # noqa: W291 - the script's message, trailing space included
        while True:
            data = wf.readframes(4000)
            if len(data) == 0:
                break
            replies.append(await _exchange(websocket, data))
        replies.append(await _exchange(websocket, '{"eof" : 1}'))
    return replies


async def test_alternatives_py(uri: str, path: Path) -> list[Reply]:
    replies = []
    async with connect(uri) as websocket:
        wf = wave.open(str(path), "rb")
        await websocket.send('{"config" : { "max_alternatives" : 20, "sample_rate" : %d } }'  # noqa: UP031
                             % (wf.getframerate()))
        buffer_size = int(wf.getframerate() * 0.2)  # 0.2 seconds of audio
        while True:
            data = wf.readframes(buffer_size)
            if len(data) == 0:
                break
            replies.append(await _exchange(websocket, data))
        replies.append(await _exchange(websocket, '{"eof" : 1}'))
    return replies


WORDS_PER_LINE = 7


async def test_srt_py(uri: str, path: Path) -> tuple[list[Reply], list[tuple[int, str, float, float]]]:
    """The replies, and the subtitles the script composes (index, text, start, end)."""
    async with connect(uri) as websocket:
        wf = open(path, "rb")  # noqa: SIM115 - as the script (the WAV header is sent as audio too)
        results = []
        while True:
            data = wf.read(8000)
            if len(data) == 0:
                break
            await websocket.send(data)
            results.append(await websocket.recv())
        await websocket.send('{"eof" : 1}')
        results.append(await websocket.recv())
        wf.close()
    subs = []
    for res in results:
        jres = json.loads(res)
        if "result" not in jres:
            continue
        words = jres["result"]
        for j in range(0, len(words), WORDS_PER_LINE):
            line = words[j : j + WORDS_PER_LINE]
            start = datetime.timedelta(seconds=line[0]["start"]).total_seconds()
            end = datetime.timedelta(seconds=line[-1]["end"]).total_seconds()
            subs.append((len(subs), " ".join(w["word"] for w in line), start, end))
    return [json.loads(r) for r in results], subs


def _decoder_command(path: Path) -> list[str]:
    if shutil.which("ffmpeg"):
        return ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-i", str(path), "-ar", "16000", "-ac", "1", "-f", "s16le",
                "-"]
    # The same bytes: 16 kHz mono signed 16-bit little-endian raw PCM on stdout.
    return ["sox", str(path), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-t", "raw", "-"]


async def test_ffmpeg_py(uri: str, path: Path) -> list[Reply]:
    replies = []
    async with connect(uri) as websocket:
        cmd = _decoder_command(path)
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        await websocket.send('{ "config" : { "sample_rate" : 16000 } }')
        while True:
            data = await proc.stdout.read(8000)
            if len(data) == 0:
                break
            replies.append(await _exchange(websocket, data))
        replies.append(await _exchange(websocket, '{"eof" : 1}'))
        await proc.wait()
    return replies


async def gpu_batch_test_py(uri: str, path: Path) -> list[Reply]:
    replies = []
    async with connect(uri) as websocket:
        wf = wave.open(str(path), "rb")
        await websocket.send('{ "config" : { "sample_rate" : %d } }' % (wf.getframerate()))  # noqa: UP031
        buffer_size = 6400  # 0.4 seconds of audio, don't make it too small otherwise compute will be slow
        while True:
            data = wf.readframes(buffer_size)
            if len(data) == 0:
                break
            replies.append(await _exchange(websocket, data))
        replies.append(await _exchange(websocket, '{"eof" : 1}'))
    return replies


async def with_reset(uri: str, path: Path, reset_after_s: float, config: str | None = None) -> list[Reply]:
    """test.py with ``{"reset" : 1}`` sent once ``reset_after_s`` of audio went out."""
    replies = []
    async with connect(uri) as websocket:
        wf = wave.open(str(path), "rb")
        rate = wf.getframerate()
        await websocket.send(config or '{ "config" : { "sample_rate" : %d } }' % rate)  # noqa: UP031
        buffer_size = int(rate * 0.2)
        sent = 0
        reset = False
        while True:
            data = wf.readframes(buffer_size)
            if len(data) == 0:
                break
            replies.append(await _exchange(websocket, data))
            sent += len(data) // 2
            if not reset and sent >= reset_after_s * rate:
                reset = True
                replies.append(await _exchange(websocket, '{"reset" : 1}'))
        replies.append(await _exchange(websocket, '{"eof" : 1}'))
    return replies


def write_pcm_wav(path: Path, samples: Any, rate: int) -> Path:
    """int16 mono samples as a PCM16 WAV (the format the scripts read with ``wave``)."""
    import numpy as np

    data = np.asarray(samples, dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def run_script(fn: Any, *args: Any) -> Any:
    return asyncio.run(fn(*args))


def decoder_available() -> bool:
    return shutil.which("ffmpeg") is not None or shutil.which("sox") is not None
