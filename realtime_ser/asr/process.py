"""Recognizers in worker processes.

pocketsphinx's decoder holds Python's GIL for as long as it decodes. In the
process that also segments audio, serves WebSockets and stamps capture times,
that starves every other thread: the segmenter falls behind and end-of-speech
latency grows by seconds. So each stream's decoder runs in a worker process of
its own (its own GIL, and the second core), driven over a pipe:

- ``accept`` only writes audio to the pipe: it never waits for decoding;
- ``partial`` and ``finish`` wait for the answer (``finish`` at most
  ``asr.worker_timeout_s``; a worker that hangs or dies is killed and the
  stream reports a :class:`~realtime_ser.errors.RecognizerError`);
- closed streams return their worker to a small pool, which starts the next
  stream from scratch (the backend resets the decoder's state).

**Ctrl-C.** A terminal sends SIGINT to the whole foreground process group, and
workers are in it. A worker must not die of it mid-utterance: the parent
decides when to stop (it flushes the open utterances, then ends the workers).
So a worker is started with SIGINT blocked (the mask is inherited through the
spawn) and ignores it from its first instruction on.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..config import AsrConfig
from ..errors import ModelError, RecognizerError
from .base import RecognizerOptions, Transcript

log = logging.getLogger(__name__)

_CTX = mp.get_context("spawn")  # the parent has threads: never fork it


def _worker(conn: Connection, config: AsrConfig) -> None:
    """Child process: load the backend, then serve one stream at a time."""
    # The parent stops workers (with "quit", or by killing them); a Ctrl-C on the
    # terminal reaches every process of the group and must not end this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    from . import create_backend

    try:
        backend = create_backend(config, in_process=True)
    except Exception as exc:  # reported to the parent, which raises ModelError
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", backend.model if backend is not None else None))
    stream = backend.new_stream() if backend is not None else None
    pending_error: str | None = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg[0]
        try:
            if op == "accept":
                if pending_error is None and stream is not None:
                    stream.accept(np.frombuffer(msg[1], dtype=np.int16))
                continue
            if op == "start":
                pending_error = None
                if stream is not None:
                    stream.start()
            elif op == "reset":
                pending_error = None
                if stream is not None:
                    stream.reset()
            elif op == "configure":
                configure = getattr(stream, "configure", None)
                conn.send(("ok", configure(msg[1]) if configure is not None else None))
            elif op == "partial":
                conn.send(("ok", stream.partial() if stream is not None and pending_error is None else ""))
            elif op == "finish":
                if pending_error is not None:
                    conn.send(("error", pending_error))
                    pending_error = None
                else:
                    conn.send(("ok", stream.finish() if stream is not None else Transcript("", (), True)))
            elif op == "renew":  # a new stream: start from a clean decoder
                if stream is not None:
                    stream.close()
                stream = backend.new_stream() if backend is not None else None
                pending_error = None
            elif op == "quit":
                return
        except Exception as exc:  # RecognizerError or a backend bug: report, keep serving
            if op in ("partial", "finish"):
                conn.send(("error", str(exc)))
            else:
                pending_error = str(exc)


class _Worker:
    def __init__(self, config: AsrConfig, timeout: float) -> None:
        self.conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_worker, args=(child, config), daemon=True, name="ser-asr-worker")
        # Blocked while the child starts (it inherits the mask): a Ctrl-C during its start-up,
        # before it can ignore SIGINT, stays pending and is then discarded.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child.close()
        self.timeout = timeout
        kind, value = self.recv(max(timeout, 60.0))
        if kind != "ready":
            self.kill()
            raise ModelError(f"the {config.backend} recognizer could not load: {value}")
        self.model = value

    def send(self, msg: tuple[Any, ...]) -> None:
        try:
            self.conn.send(msg)
        except (OSError, ValueError) as exc:
            raise RecognizerError(f"the recognizer process is gone ({exc})") from None

    def recv(self, timeout: float | None = None) -> tuple[str, Any]:
        wait = self.timeout if timeout is None else timeout
        try:
            if not self.conn.poll(wait):
                self.kill()
                raise RecognizerError(f"the recognizer did not answer within {wait:g} s; its process was stopped")
            return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            self.kill()
            raise RecognizerError(f"the recognizer process died ({exc or 'no answer'})") from None

    def call(self, msg: tuple[Any, ...]) -> Any:
        self.send(msg)
        kind, value = self.recv()
        if kind == "error":
            raise RecognizerError(value)
        return value

    @property
    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=1.0)
        self.conn.close()

    def quit(self) -> None:
        try:
            self.conn.send(("quit",))
        except (OSError, ValueError):
            pass
        self.proc.join(timeout=1.0)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


class ProcessStream:
    """A :class:`~realtime_ser.asr.base.StreamRecognizer` whose decoder lives in a worker process."""

    def __init__(self, worker: _Worker, backend: ProcessBackend) -> None:
        self._worker: _Worker | None = worker
        self._backend = backend
        self._options: RecognizerOptions | None = None

    def _w(self, starting: bool = False) -> _Worker:
        if self._worker is None or not self._worker.alive:
            lost = self._worker is not None
            if self._worker is not None:
                self._worker.kill()
            self._worker = self._backend._spawn()
            if self._options is not None:  # a new worker: the stream's options again
                self._worker.call(("configure", self._options))
            if lost and not starting:
                # The open utterance's audio went with the dead process.
                raise RecognizerError("the recognizer process died; a new one takes over from the next utterance")
        return self._worker

    def configure(self, options: RecognizerOptions) -> list[str]:
        """Apply ``options`` in the worker (see the backend's ``configure``); its warnings."""
        result = self._w(starting=True).call(("configure", options))
        self._options = options
        if result is None:
            return [f"the {self._backend.name} recognizer takes no options (max_alternatives, phrase_list)"]
        return [str(w) for w in result]

    def start(self) -> None:
        self._w(starting=True).send(("start",))

    def accept(self, samples: np.ndarray) -> None:
        self._w().send(("accept", samples.astype(np.int16, copy=False).tobytes()))

    def partial(self) -> str:
        return str(self._w().call(("partial",)))

    def finish(self) -> Transcript:
        result = self._w().call(("finish",))
        assert isinstance(result, Transcript)
        return result

    def reset(self) -> None:
        if self._worker is not None and self._worker.alive:
            self._worker.send(("reset",))

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            self._backend._release(worker)


class ProcessBackend:
    """Runs another backend's streams in worker processes (one per live stream)."""

    pool_size = 8
    bounds_its_calls = True  # a worker that does not answer in asr.worker_timeout_s is killed

    def __init__(self, config: AsrConfig) -> None:
        self.name = config.backend
        self._config = config
        self._timeout = config.worker_timeout_s
        self._lock = threading.Lock()
        first = _Worker(config, self._timeout)  # fails fast if the model cannot load
        self.model = first.model
        self._pool: list[_Worker] = [first]
        self._refilling = False
        self._closed = False

    def _spawn(self) -> _Worker:
        return _Worker(self._config, self._timeout)

    def new_stream(self) -> ProcessStream:
        with self._lock:
            worker = self._pool.pop() if self._pool else None
            refill = not self._pool and not self._refilling
            self._refilling = self._refilling or refill
        if refill:
            # Starting a worker takes a second or two: keep one ready so the next
            # stream (a second channel, the next session) never waits for it.
            threading.Thread(target=self._refill, name="ser-asr-refill", daemon=True).start()
        if worker is None or not worker.alive:
            worker = self._spawn()
        else:
            worker.send(("renew",))
        return ProcessStream(worker, self)

    def _refill(self) -> None:
        try:
            worker = self._spawn()
        except Exception as exc:  # harmless (e.g. the process is exiting); new_stream() reports real faults
            log.debug("could not start a spare recognizer worker: %s", exc)
            return
        finally:
            with self._lock:
                self._refilling = False
        self._release(worker)

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive and len(self._pool) < self.pool_size and not self._closed:
                self._pool.append(worker)
                return
        worker.quit()

    def close(self, timeout: float = 2.0) -> bool:
        """End the idle workers (streams still open end theirs when they close): each is
        asked to quit, and killed if it has not within ``timeout`` seconds."""
        with self._lock:
            pool, self._pool = self._pool, []
            self._closed = True
        for worker in pool:
            try:
                worker.conn.send(("quit",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for worker in pool:
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            worker.kill()
        return True
