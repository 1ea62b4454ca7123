"""Speech recognition on Vosk (Kaldi nnet3) models.

The ``vosk`` package is optional (``pip install 'realtime-ser[vosk]'``) and is
imported only when a :class:`VoskBackend` is made. The model is loaded once;
every :meth:`VoskBackend.new_stream` gets its own ``KaldiRecognizer`` (its own
feature pipeline and decoder) that shares the loaded model.

How Vosk behaves, and what this module does about it (checked with vosk
0.3.45 and ``vosk-model-small-ko``):

* **Time base.** Vosk's word times count from the first sample fed to the
  recognizer, across utterances: neither ``FinalResult()`` nor ``Reset()``
  restarts them. After ``FinalResult()`` the next audio starts a fresh
  feature pipeline and decoder whose times begin at (samples fed so far) /
  16000 exactly, so each stream counts the samples it fed and subtracts the
  count at :meth:`VoskStream.start`. Vosk adds that base in single
  precision, so a stream replaces its recognizer after an hour of audio.
* **Reset() is not a clean drop.** ``Reset()`` in the middle of an utterance
  keeps the feature pipeline (frames of the dropped audio not yet decoded
  leak into the next utterance, and the time base goes on in frames rather
  than samples). So this module never calls it: an open utterance is dropped
  by closing it with ``FinalResult()`` and discarding the result, the same
  clean restart :meth:`VoskStream.finish` gives.
* **Keep recognizers.** With lookahead models (``graph/HCLr.fst`` +
  ``Gr.fst``, the small models) each recognizer composes its decoding graph
  on the fly and caches it, so it decodes much faster once warm (about 10x
  on audio it has seen similar paths for). A stream keeps its recognizer for
  all of its utterances, resets included, and :meth:`VoskStream.close` hands
  it back to the backend for the next :meth:`VoskBackend.new_stream`.
* **Filler tokens.** Words written in brackets (``[unk]``, ``<UNK>``,
  ``<SPOKEN_NOISE>``; the Korean small model also has Wikipedia footnote
  marks ``[0]`` .. ``[33]`` in its vocabulary) are not speech and are left
  out of partials and transcripts, as the pocketsphinx backend does.
* **Vosk's own endpoints.** ``AcceptWaveform`` returns true when Vosk's
  endpointer sees a pause (about 0.5-1 s of trailing silence with the usual
  model configs); the words so far are then only available from
  ``Result()``, and decoding goes on as a new segment. Our VAD decides where
  utterances end, so those segments are collected and :meth:`VoskStream.finish`
  returns the whole utterance.
* **Options** (:meth:`VoskStream.configure`, the vosk-server protocol's
  ``max_alternatives`` and ``phrase_list``): Vosk's own n-best
  (``SetMaxAlternatives``; its alternatives carry no word confidences, so the
  words of such a stream have ``conf`` 1) and grammars (a recognizer made with
  the phrase list; only models with a runtime graph, ``graph/HCLr.fst`` +
  ``graph/Gr.fst``, can: others say so). Words of the phrases that are not in
  the model's vocabulary are dropped by Vosk. A configured recognizer is never
  handed to another stream.
* **Not bit-for-bit repeatable.** Kaldi dithers the waveform (``dither=1.0``
  unless the model's ``conf/mfcc.conf`` says otherwise) with random numbers
  from the C library's global ``rand()``, so the same audio can decode
  slightly differently from run to run, and streams decoding at the same time
  draw from one sequence. This is noise at the level of one sample step; it
  is not state shared between streams.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import AsrConfig
from ..errors import ModelError, RecognizerError
from .base import Alternative, RecognizerOptions, Transcript, Word, mono_int16

__all__ = ["SAMPLE_RATE", "VoskBackend", "VoskStream"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""The rate of the samples a :class:`VoskStream` accepts (16 kHz mono int16)."""

_HINT = "pass --vosk-model DIR (an unpacked Vosk model) or run `realtime-ser models download NAME`"

_MAX_TIME_BASE = SAMPLE_RATE * 3600
"""Samples a recognizer may have been fed before :meth:`VoskStream.start` replaces it."""


def _import_vosk() -> ModuleType:
    try:
        import vosk
    except (ImportError, OSError) as exc:
        raise ModelError(
            "the vosk backend needs the 'vosk' package: pip install 'realtime-ser[vosk]'"
        ) from exc
    return vosk


def _is_filler(token: str) -> bool:
    """Bracketed vocabulary entries: unknown-word and noise marks, footnote numbers."""
    return len(token) >= 2 and (token[0], token[-1]) in (("[", "]"), ("<", ">"))


def _looks_like_model(path: Path) -> bool:
    """True when ``path`` has the files of a Vosk model directory."""
    return (path / "am" / "final.mdl").is_file() and (
        (path / "conf" / "model.conf").is_file() or (path / "graph").is_dir()
    )


def _model_dir(setting: str) -> Path:
    """Check the ``asr.vosk_model`` setting; return the model directory."""
    if not setting:
        raise ModelError(f"the vosk backend needs a model directory and none is set; {_HINT}")
    path = Path(setting).expanduser()
    if not path.exists():
        raise ModelError(f"the Vosk model directory {path} does not exist; {_HINT}")
    if not path.is_dir():
        raise ModelError(f"the Vosk model path {path} is not a directory; {_HINT}")
    if not _looks_like_model(path):
        try:
            nested = [d for d in sorted(path.iterdir()) if d.is_dir() and _looks_like_model(d)]
        except OSError:
            nested = []
        guess = f" (did you mean {nested[0]}?)" if len(nested) == 1 else ""
        raise ModelError(
            f"{path} is not a Vosk model directory: it needs am/final.mdl and conf/model.conf "
            f"or graph/{guess}; {_HINT}"
        )
    return path


class VoskBackend:
    """A loaded Vosk model; :meth:`new_stream` makes per-stream recognizers.

    Raises :class:`~realtime_ser.errors.ModelError` when ``vosk`` is not
    installed or ``config.vosk_model`` is not a loadable Vosk model directory.
    Recognizers of closed streams are kept (up to ``pool_size``) for the next
    stream: a used recognizer decodes faster than a new one.
    """

    name = "vosk"
    bounds_its_calls = False  # in this process; the pipeline's watchdog ends a session it hangs
    pool_size = 8

    def __init__(self, config: AsrConfig) -> None:
        vosk = _import_vosk()
        path = _model_dir(config.vosk_model)
        vosk.SetLogLevel(-1)
        try:
            model = vosk.Model(str(path))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise ModelError(f"cannot load the Vosk model in {path} ({exc}); {_HINT}") from exc
        self._vosk = vosk
        self._model = model
        self.path: Path = path
        self.model: str = path.resolve().name
        self.grammars = (path / "graph" / "HCLr.fst").is_file() and (path / "graph" / "Gr.fst").is_file()
        """The model has a runtime graph, so a stream may be restricted to a phrase list."""
        self._lock = threading.Lock()
        self._pool: list[tuple[Any, int]] = []

    def new_stream(self) -> VoskStream:
        """A recognizer with its own decoding state, sharing the loaded model."""
        with self._lock:
            reused = self._pool.pop() if self._pool else None
        return VoskStream(self._vosk, self._model, self, reused)

    def _release(self, recognizer: Any, fed: int) -> None:
        with self._lock:
            if len(self._pool) < self.pool_size:
                self._pool.append((recognizer, fed))


class VoskStream:
    """The decoding state of one audio stream on a shared Vosk model.

    Not thread-safe: one stream is used by one thread at a time (different
    streams may decode in different threads).
    """

    def __init__(
        self,
        vosk: ModuleType,
        model: Any,
        backend: VoskBackend | None = None,
        reused: tuple[Any, int] | None = None,
    ) -> None:
        self._vosk = vosk
        self._model = model
        self._backend = backend
        self._recognizer: Any = None
        self._fed = 0
        """Samples fed to ``_recognizer`` since it was made: its time base."""
        self._base = 0
        """``_fed`` at the start of the open utterance."""
        self._running = False
        """Audio went to the recognizer since its last ``FinalResult()``."""
        self._segments: list[dict[str, Any]] = []
        """Results Vosk closed at its own endpoints within the open utterance."""
        self._options = RecognizerOptions()
        self._configured = False
        if reused is not None:
            self._recognizer, self._fed = reused
            self._base = self._fed
        else:
            self._renew()

    # -- protocol -----------------------------------------------------------

    def start(self) -> None:
        """Begin a new utterance (dropping any open one); word times restart at 0."""
        self._drop()
        if self._recognizer is None or self._fed >= _MAX_TIME_BASE:
            self._renew()
        self._begin()

    def accept(self, samples: np.ndarray) -> None:
        """Feed 16 kHz mono int16 samples of the open utterance."""
        data = mono_int16(samples, "VoskStream.accept")
        if data.size == 0:
            return
        if self._recognizer is None:
            self.start()
        endpoint = self._call("AcceptWaveform", np.ascontiguousarray(data).tobytes())
        self._fed += int(data.size)
        self._running = True
        if endpoint:
            self._segments.append(self._result("Result"))

    def partial(self) -> str:
        """The text so far: segments Vosk already closed plus its current hypothesis."""
        texts = [_words_text(s) for s in self._segments]
        if self._running and self._recognizer is not None:
            hypothesis = str(self._result("PartialResult").get("partial", ""))
            texts.append(" ".join(t for t in hypothesis.split() if not _is_filler(t)))
        return " ".join(t for t in texts if t)

    def finish(self) -> Transcript:
        """Close the utterance and return its final transcript (all of its segments)."""
        segments = list(self._segments)
        if self._running and self._recognizer is not None:
            final = self._result("FinalResult")
            self._running = False
            segments.append(final)
        transcript = self._transcript(segments)
        self._begin()
        return transcript

    def reset(self) -> None:
        """Drop the open utterance without producing a result."""
        self._drop()
        self._begin()

    def configure(self, options: RecognizerOptions) -> list[str]:
        """Use Vosk's n-best and grammar for the next utterances; what cannot be done, one line
        each. The stream gets a recognizer of its own (never pooled afterwards)."""
        warnings = []
        if options.phrases and not (self._backend is not None and self._backend.grammars):
            warnings.append("phrase_list is ignored: this Vosk model has a static graph (a model with "
                            "graph/HCLr.fst and graph/Gr.fst, e.g. the small models, can use a phrase list)")
            options = RecognizerOptions(options.max_alternatives)
        self._drop()
        self._options = options
        self._configured = True  # this recognizer is not handed to other streams
        self._renew()
        self._begin()
        return warnings

    def close(self) -> None:
        """Drop any open utterance and hand the recognizer back to the backend."""
        try:
            self._drop()
        except RecognizerError:  # the recognizer is gone; nothing to hand back
            log.debug("vosk failed while closing a stream", exc_info=True)
        if (self._backend is not None and self._recognizer is not None and self._fed < _MAX_TIME_BASE
                and not self._configured):
            self._backend._release(self._recognizer, self._fed)
        self._recognizer = None
        self._backend = None
        self._begin()

    # -- internals ----------------------------------------------------------

    def _begin(self) -> None:
        self._base = self._fed
        self._segments = []

    def _drop(self) -> None:
        """Close the recognizer's open utterance, discarding what it decoded."""
        if self._running and self._recognizer is not None:
            self._call("FinalResult")
        self._running = False

    def _renew(self) -> None:
        """Replace the recognizer: nothing of the audio fed so far survives."""
        self._recognizer = None
        self._fed = 0
        self._running = False
        options = self._options
        try:
            if options.phrases:
                grammar = json.dumps(list(options.phrases) + ["[unk]"], ensure_ascii=False)
                recognizer = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE, grammar)
            else:
                recognizer = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE)
            recognizer.SetWords(True)
            recognizer.SetPartialWords(False)
            if options.max_alternatives:
                recognizer.SetMaxAlternatives(options.max_alternatives)
        except Exception as exc:
            raise RecognizerError(f"vosk could not create a recognizer: {exc}") from exc
        self._recognizer = recognizer

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._recognizer, method)(*args)
        except Exception as exc:
            # The decoder is in an unknown state: the next utterance gets a new one.
            self._recognizer = None
            self._running = False
            raise RecognizerError(f"vosk failed while decoding ({method}): {exc}") from exc

    def _result(self, method: str) -> dict[str, Any]:
        raw = self._call(method)
        try:
            result = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise RecognizerError(f"vosk returned an unreadable {method}: {raw!r:.200}") from exc
        if not isinstance(result, dict):
            raise RecognizerError(f"vosk returned an unexpected {method}: {raw!r:.200}")
        return result

    def _words(self, items: Any) -> list[Word]:
        offset = self._base / SAMPLE_RATE
        duration = (self._fed - self._base) / SAMPLE_RATE
        words: list[Word] = []
        for item in items or ():
            try:
                token = str(item["word"])
                if _is_filler(token):
                    continue
                start = min(max(round(float(item["start"]) - offset, 3), 0.0), duration)
                end = min(max(round(float(item["end"]) - offset, 3), start), duration)
                conf = min(max(float(item.get("conf", 1.0)), 0.0), 1.0)
            except (KeyError, TypeError, ValueError) as exc:
                raise RecognizerError(f"vosk returned an unexpected word: {item!r:.200}") from exc
            words.append(Word(token, start, end, conf))
        return words

    def _transcript(self, segments: list[dict[str, Any]]) -> Transcript:
        words: list[Word] = []
        for segment in segments:
            words += self._words(_best(segment).get("result"))
        alternatives: tuple[Alternative, ...] = ()
        if self._options.max_alternatives:
            alternatives = self._alternatives(segments)
        return Transcript(text=" ".join(w.word for w in words), words=tuple(words), final=True,
                          alternatives=alternatives)

    def _alternatives(self, segments: list[dict[str, Any]]) -> tuple[Alternative, ...]:
        """The utterance's n best: the k-th joins each segment's k-th alternative (or its last,
        when a segment has fewer); its confidence is the sum of theirs."""
        lists = [[a for a in segment.get("alternatives") or () if isinstance(a, dict)] or [_best(segment)]
                 for segment in segments]
        n = min(self._options.max_alternatives, max((len(x) for x in lists), default=0))
        out = []
        for k in range(n):
            words: list[Word] = []
            confidence = 0.0
            for alts in lists:
                alt = alts[min(k, len(alts) - 1)]
                words += self._words(alt.get("result"))
                try:
                    confidence += float(alt.get("confidence", 0.0))
                except (TypeError, ValueError):
                    pass
            if not words and any(str(a[min(k, len(a) - 1)].get("text", "")).strip() for a in lists):
                text = " ".join(_words_text(a[min(k, len(a) - 1)]) for a in lists).strip()
            else:
                text = " ".join(w.word for w in words)
            out.append(Alternative(text, round(confidence, 3), tuple(words)))
        return tuple(out)


def _best(result: dict[str, Any]) -> dict[str, Any]:
    """A Vosk result without alternatives as it is; with them, the first (best) one."""
    alternatives = result.get("alternatives")
    if isinstance(alternatives, list) and alternatives and isinstance(alternatives[0], dict):
        return alternatives[0]
    return result


def _words_text(result: dict[str, Any]) -> str:
    """The text of a closed Vosk result, without filler tokens."""
    result = _best(result)
    items = result.get("result")
    if isinstance(items, list):
        tokens = [str(item.get("word", "")) for item in items if isinstance(item, dict)]
    else:
        tokens = str(result.get("text", "")).split()
    return " ".join(t for t in tokens if t and not _is_filler(t))
