"""Recognizers in worker processes: same results, and faults stay contained."""

from __future__ import annotations

import numpy as np
import pytest
from speech import espeak, have_tool

from realtime_ser.asr import create_backend
from realtime_ser.asr.process import ProcessBackend
from realtime_ser.config import AsrConfig
from realtime_ser.errors import ModelError, RecognizerError

pytestmark = pytest.mark.skipif(not have_tool("espeak-ng"), reason="needs espeak-ng to make speech")


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return espeak("the quick brown fox jumps over the lazy dog")


def decode(stream, audio: np.ndarray) -> str:  # type: ignore[no-untyped-def]
    stream.start()
    for i in range(0, len(audio), 480):
        stream.accept(audio[i : i + 480])
    return stream.finish().text  # type: ignore[no-any-return]


def test_worker_gives_the_same_transcript_as_in_process(audio: np.ndarray) -> None:
    inproc = create_backend(AsrConfig(), in_process=True)
    backend = create_backend(AsrConfig())
    assert isinstance(backend, ProcessBackend)
    local = inproc.new_stream()  # type: ignore[union-attr]
    expected = decode(local, audio)
    stream = backend.new_stream()
    assert decode(stream, audio) == expected and expected
    # The second utterance of a stream (the decoder has adapted to the first) too.
    assert decode(stream, audio) == decode(local, audio)
    stream.close()
    # A pooled worker starts the next stream from scratch.
    again = backend.new_stream()
    assert decode(again, audio) == expected
    again.close()
    backend.close()


def test_a_dead_worker_is_an_utterance_error_and_the_stream_recovers(audio: np.ndarray) -> None:
    backend = ProcessBackend(AsrConfig())
    stream = backend.new_stream()
    stream.start()
    stream.accept(audio[:8000])
    stream._worker.proc.kill()  # type: ignore[union-attr]
    stream._worker.proc.join()  # type: ignore[union-attr]
    with pytest.raises(RecognizerError, match="process"):
        stream.finish()
    assert decode(stream, audio), "a new worker takes over"
    stream.close()
    backend.close()


def test_a_model_that_cannot_load_fails_at_start() -> None:
    with pytest.raises(ModelError, match="not found"):
        ProcessBackend(AsrConfig(pocketsphinx_model="/nonexistent/model"))


def test_a_hung_worker_times_out_into_an_error_and_the_stream_recovers(audio: np.ndarray) -> None:
    import os
    import signal
    import time

    backend = ProcessBackend(AsrConfig(worker_timeout_s=1.0))
    stream = backend.new_stream()
    stream.start()
    stream.accept(audio[:8000])
    os.kill(stream._worker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]  # hangs, does not die
    t0 = time.monotonic()
    with pytest.raises(RecognizerError, match="did not answer within 1 s"):
        stream.finish()
    assert time.monotonic() - t0 < 5.0
    assert decode(stream, audio), "a new worker takes over"
    stream.close()
    backend.close()
