"""The emotion stage: per-session dialogue context, and one shared worker that scores turns.

Heavy shared weights are called from one place: every session of a process sends its
finished turns to the same :class:`EmotionService` (one per model), whose single worker
thread takes *everything that is waiting*, computes the acoustic features, embeds all
the transcripts in one text-encoder call and runs the dialogue model once on the padded
windows of all those sessions. A session waits only for its own result.

The speech encoder, when the recognizer does not share its own pass, is the costly part
(about 140 ms per utterance on 2 cores). It need not wait for the end of the utterance:
once a pause has lasted the end padding, the utterance's audio is what it will be if the
pause is its end, and :meth:`EmotionService.encode_ahead` starts the pass then, inside the
VAD hangover, on a second thread of the service (so that a turn that has ended never waits
behind another session's encoder pass); a speaker who goes on voids it.

Per-session state (:class:`DialogueContext`) stays with the session: the feature vectors
of its past turns, all speakers in time order, bounded to the model's window and reset
after a long silence.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EmotionConfig
from ..errors import ModelError
from ..features.audio import AudioFrontEnd
from ..features.speech import EncodedUtterance
from .model import SHIFT, EmotionModel

log = logging.getLogger(__name__)

PACKAGED = Path(__file__).resolve().parent.parent / "data" / "models"
"""The models that ship with the package: ``default`` (audio + text) and ``audio`` (audio only)."""


def packaged_model(name: str) -> Path:
    return PACKAGED / name


@dataclass
class Turn:
    speaker: str
    start: float
    end: float
    vectors: dict[str, np.ndarray]
    label: str = ""
    """The label last published for this turn (the live one, or its latest revision)."""
    channel: int | None = None
    utterance_id: str = ""


class DialogueContext:
    """The past turns of one session that the model may look at."""

    def __init__(self, max_turns: int, reset_after_s: float) -> None:
        self.max_turns = max(1, max_turns)
        self.reset_after_s = reset_after_s
        self.turns: collections.deque[Turn] = collections.deque(maxlen=self.max_turns - 1 if max_turns > 1 else 1)
        self.resets = 0
        if max_turns <= 1:
            self.turns = collections.deque(maxlen=0)

    def window(self, start: float) -> list[Turn]:
        """The turns that precede a turn starting at ``start`` (after applying the silence reset)."""
        if self.turns and self.reset_after_s > 0 and start - self.turns[-1].end > self.reset_after_s:
            self.turns.clear()
            self.resets += 1
        return list(self.turns)

    def add(self, turn: Turn) -> None:
        self.turns.append(turn)

    def reset(self) -> None:
        self.turns.clear()


@dataclass
class Request:
    samples: np.ndarray
    text: str
    context: list[Turn]
    speech: EncodedUtterance | None = None
    """The speech encoder's output for these samples when the recognizer already computed it."""
    audio_shift: np.ndarray | None = None
    """The speaker's offset (:class:`~.speaker.SpeakerNorm`): the model reads the audio vector less it."""
    submitted: float = field(default_factory=time.perf_counter)
    future: Future[dict[str, Any]] = field(default_factory=Future)


@dataclass
class EncodeAhead:
    """A speech-encoder pass of an utterance that may still go on (see :meth:`EmotionService.encode_ahead`)."""

    samples: np.ndarray
    future: Future[EncodedUtterance] = field(default_factory=Future)


class EmotionService:
    """One model, one worker thread, shared by every session that uses the model."""

    def __init__(self, model_dir: Path | str, threads: int = 1, max_batch: int = 64,
                 text_encoder_dir: str = "", speech_encoder_dir: str = "", encoder_threads: int = 0,
                 encoder_batch: int = 4) -> None:
        self.model = EmotionModel.load(model_dir, threads=threads)
        card = self.model.card
        self.audio: AudioFrontEnd | None = None
        self.encoder: Any = None
        if "audio" in card.modalities:
            self.audio = AudioFrontEnd.for_card(card.features["audio"], speech_encoder_dir, encoder_threads,
                                                where=f"emotion model {model_dir}")
        if "text" in card.modalities:
            from ..features.text import TextEncoder, encoder_dir_for

            text = card.features["text"]
            directory = Path(text_encoder_dir) if text_encoder_dir else encoder_dir_for(text)
            self.encoder = TextEncoder.load(directory, kind=text.get("kind", "contextual"), threads=threads)
        self.model.check_features(self.audio.key() if self.audio is not None else None,
                                  self.encoder.key() if self.encoder is not None else None)
        self.max_batch = max_batch
        # At most this many utterances the speech encoder runs on per batch: its cost grows with the batch on
        # few cores (16 at once took longer than one by one), so a burst is answered in chunks, earliest first.
        self.encoder_batch = max(1, encoder_batch)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._ahead: queue.Queue[EncodeAhead | None] = queue.Queue()
        self._stop = threading.Event()
        self.batches = 0
        self.requests = 0
        self.encoded_ahead = 0
        """Encoder passes run ahead of an utterance's end (cancelled ones that never ran not counted)."""
        self.encoded_after = 0
        """Turns whose encoder pass ran after their end (none came with them)."""
        self._threads = [threading.Thread(target=self._loop, name="ser-emotion", daemon=True)]
        if self._encodes_speech:
            # Passes ahead run on a thread of their own: a turn that has ended waits only for its own
            # scoring (text, model: a few ms), never behind another utterance's encoder pass.
            self._threads.append(threading.Thread(target=self._ahead_loop, name="ser-encoder", daemon=True))
        for t in self._threads:
            t.start()

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.card.modalities

    def submit(self, samples: np.ndarray, text: str, context: Sequence[Turn],
               speech: EncodedUtterance | None = None, audio_shift: np.ndarray | None = None
               ) -> Future[dict[str, Any]]:
        """Score one turn after ``context``; the result's ``vectors`` are what the model read: the raw
        audio vector and, given one, the speaker shift ``audio_shift`` (under :data:`~.model.SHIFT`)."""
        req = Request(samples, text, list(context), speech, audio_shift)
        if self._stop.is_set():
            req.future.set_exception(ModelError("the emotion service is closed"))
            return req.future
        self._queue.put(req)
        return req.future

    def encode_ahead(self, samples: np.ndarray) -> Future[EncodedUtterance] | None:
        """Start the speech encoder on an utterance that may be over (a pause began); None when this
        model reads no speech-encoder features.

        The passes ahead of all sessions are batched on the encoder's own thread (at most
        ``encoder_batch`` at a time, earliest first). The result, given to :meth:`submit` as
        ``speech`` once the utterance really ended with these very samples, saves the encoder pass
        after the end. Cancel the future when the speaker goes on: a pass that has not started yet
        is then skipped.
        """
        if not self._encodes_speech:
            return None
        job = EncodeAhead(samples)
        if self._stop.is_set():
            job.future.set_exception(ModelError("the emotion service is closed"))
            return job.future
        self._ahead.put(job)
        return job.future

    @property
    def _encodes_speech(self) -> bool:
        return self.audio is not None and self.audio.speech is not None

    @property
    def speech_key(self) -> str:
        """The key of the speech-encoder output this model reads ('' = none)."""
        return self.audio.speech.key() if self.audio is not None and self.audio.speech is not None else ""

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._ahead.put(None)
        for t in self._threads:
            t.join(timeout=5)

    # -- workers -------------------------------------------------------------------

    def _batches(self, q: queue.Queue[Any], full: Callable[[list[Any]], bool]) -> Iterator[list[Any]]:
        """Batches of what waits in ``q``: the first item, then whatever else is already there until
        ``full(batch)``; ends when the service closes, answering what is still queued."""
        while not self._stop.is_set():
            try:
                first = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if first is None:
                break
            batch = [first]
            while not full(batch):
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stop.set()
                    break
                batch.append(item)
            yield batch
        _refuse_waiting(q)

    def _loop(self) -> None:
        def full(batch: list[Request]) -> bool:
            return len(batch) >= self.max_batch or sum(map(self._encodes, batch)) >= self.encoder_batch

        for batch in self._batches(self._queue, full):
            try:
                self.encoded_after += sum(map(self._encodes, batch))
                self._score(batch, time.perf_counter())
            except Exception as exc:  # one bad batch must not kill the stage for every session
                log.exception("emotion scoring failed")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(ModelError(f"emotion scoring failed: {exc}"))

    def _ahead_loop(self) -> None:
        assert self.audio is not None and self.audio.speech is not None
        front = self.audio
        for batch in self._batches(self._ahead, lambda b: len(b) >= self.encoder_batch):
            jobs = [j for j in batch if j.future.set_running_or_notify_cancel()]  # skips the cancelled
            if not jobs:
                continue
            try:
                encoded = front.encode([j.samples for j in jobs])  # the extra depths too
            except Exception as exc:  # the turns then encode after their end, which reports the error
                log.warning("the speech encoder failed on a pass ahead: %s", exc)
                for j in jobs:
                    j.future.set_exception(ModelError(f"the speech encoder failed: {exc}"))
                continue
            self.encoded_ahead += len(jobs)
            for j, e in zip(jobs, encoded, strict=True):
                j.future.set_result(e)

    def _encodes(self, r: Request) -> bool:
        """Whether scoring ``r`` runs the speech encoder (no recognizer's or earlier pass's output came with it)."""
        return self._encodes_speech and r.speech is None

    def _score(self, batch: list[Request], t0: float) -> None:
        vectors: list[dict[str, np.ndarray]] = [{} for _ in batch]
        timing = {"features": 0.0, "text": 0.0}
        if self.audio is not None:
            audio = self.audio.extract([r.samples for r in batch], [r.speech for r in batch])
            for v, a, r in zip(vectors, audio, batch, strict=True):
                v["audio"] = a
                if r.audio_shift is not None:
                    v[SHIFT] = np.asarray(r.audio_shift, dtype=np.float32)
        t1 = time.perf_counter()
        timing["features"] = t1 - t0
        if self.encoder is not None:
            emb = self.encoder.encode([r.text for r in batch])
            for v, e in zip(vectors, emb, strict=True):
                v["text"] = np.asarray(e, dtype=np.float32)
        t2 = time.perf_counter()
        timing["text"] = t2 - t1
        w = max(len(r.context) for r in batch) + 1
        dims = self.model.card.input_dims
        inputs = {k: np.zeros((len(batch), w, d), dtype=np.float32) for k, d in dims.items()}
        mask = np.zeros((len(batch), w), dtype=bool)
        last = np.zeros(len(batch), dtype=np.int64)
        for i, (r, v) in enumerate(zip(batch, vectors, strict=True)):
            turns = [t.vectors for t in r.context] + [v]
            for j, tv in enumerate(turns):
                for k in dims:
                    if k != SHIFT or k in tv:  # a turn with no shift is as it is
                        inputs[k][i, j] = tv[k]
            mask[i, : len(turns)] = True
            last[i] = len(turns) - 1
        out = self.model.score(inputs, mask)
        t3 = time.perf_counter()
        self.batches += 1
        self.requests += len(batch)
        for i, (r, v) in enumerate(zip(batch, vectors, strict=True)):
            emotion = emotion_fields(self.model, out, i, int(last[i]), context_turns=len(r.context))
            r.future.set_result({
                "emotion": emotion,
                "vectors": v,
                "latency_ms": {
                    "emotion_wait": (t0 - r.submitted) * 1000,
                    "features": timing["features"] * 1000,
                    "text": timing["text"] * 1000,
                    "model": (t3 - t2) * 1000,
                },
                "batch": len(batch),
            })


def _refuse_waiting(q: queue.Queue[Any]) -> None:
    """Anything still queued at close gets an answer, so no session waits for nothing."""
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            break
        if item is not None and not item.future.done():
            item.future.set_exception(ModelError("the emotion service is closed"))


def emotion_fields(model: EmotionModel, out: dict[str, np.ndarray], i: int, n: int,
                   context_turns: int) -> dict[str, Any]:
    """The event's ``emotion`` object for turn ``n`` of batch row ``i`` of a model's outputs."""
    labels = model.labels
    mods = model.card.modalities
    probs = out["probs"][i, n]
    emotion: dict[str, Any] = {
        "label": labels[int(probs.argmax())],
        "scores": _scores(labels, probs),
        "context_turns": context_turns,
        "model": {"name": model.name, "version": model.version},
    }
    modal = {m: _scores(labels, out[m][i, n]) for m in mods if m in out and len(mods) > 1}
    if modal:
        emotion["modalities"] = modal
    elif len(mods) == 1:
        emotion["modalities"] = {mods[0]: emotion["scores"]}
    if "audio_reliability" in out:
        emotion["audio_weight"] = round(float(np.clip(out["audio_reliability"][i, n], 0.0, 1.0)), 4)
    return emotion


def _scores(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    """Scores rounded to 6 decimals, renormalized so they still sum to 1 within 1e-6."""
    p = np.asarray(probs, dtype=np.float64)
    p = np.clip(p, 0.0, 1.0)
    p = p / p.sum()
    rounded = np.round(p, 6)
    rounded[int(rounded.argmax())] += 1.0 - rounded.sum()
    return {lab: float(min(1.0, max(0.0, x))) for lab, x in zip(labels, rounded, strict=True)}


_services: dict[tuple[str, int, str, str], tuple[EmotionService, int]] = {}
_lock = threading.Lock()


def resolve_model_dir(config: EmotionConfig, audio_only: bool) -> Path:
    if config.model:
        return Path(config.model).expanduser()
    return packaged_model("audio" if audio_only else "default")


def acquire(config: EmotionConfig, audio_only: bool) -> EmotionService:
    """The shared service for this model (loaded on first use); pair with :func:`release`."""
    path = resolve_model_dir(config, audio_only)
    key = (str(path.resolve()), config.threads, config.text_encoder, config.speech_encoder)
    with _lock:
        if key in _services:
            service, n = _services[key]
            _services[key] = (service, n + 1)
            return service
        service = EmotionService(path, threads=config.threads, text_encoder_dir=config.text_encoder,
                                 speech_encoder_dir=config.speech_encoder, encoder_threads=config.encoder_threads)
        if audio_only and "text" in service.modalities:
            service.close()
            raise ModelError(f"emotion model {path} needs transcripts (text), but recognition is off (--asr none); "
                             "use an audio-only model")
        _services[key] = (service, 1)
        return service


def release(service: EmotionService) -> None:
    """Drop one user of a shared service. The service stays loaded for the next session of the process."""
    with _lock:
        for key, (s, n) in list(_services.items()):
            if s is service:
                _services[key] = (s, max(0, n - 1))
