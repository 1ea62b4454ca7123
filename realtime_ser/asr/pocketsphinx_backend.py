"""pocketsphinx: streaming English recognition with the model bundled in the wheel.

Frames are decoded as they arrive (forward search), so at the end of speech
only the lattice best-path pass remains: tens of milliseconds. Measured on a
sample of RAVDESS/TESS clips (2 cores):

- the ``fwdflat`` second pass costs ~250 ms per utterance at the end of speech
  and did not lower the word error rate (0.422 with it, 0.417 without);
- ``maxhmmpf=3000`` halves decoding time (real-time factor 0.29 against 0.57)
  and end-of-utterance time (20 ms against 43 ms) for +0.01 word error rate
  (0.562 against 0.552 on another sample). For a live tool that is the better
  trade; ``asr.pocketsphinx_maxhmmpf = -1`` restores the full search.

Options (:meth:`PocketsphinxStream.configure`, the vosk-server protocol's
``max_alternatives`` and ``phrase_list``): the decoder's n-best list (duplicates,
which differ only in alignment or pronunciation, are merged; word times for the
best one only) and a JSGF grammar of the phrases' words, in any order and
number (as Vosk treats a phrase list: "the order doesn't have to be strict").
Words missing from the pronunciation dictionary are left out of the grammar,
and the stream says which.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..config import AsrConfig
from ..errors import ModelError, RecognizerError
from .base import Alternative, RecognizerOptions, Transcript, Word

log = logging.getLogger(__name__)

_FRAME_RATE = 100  # pocketsphinx's default -frate: frames per second
_CHUNK_BYTES = 480 * 2  # 30 ms of 16 kHz PCM16 per decoder call
_FILLERS = {"<s>", "</s>", "<sil>"}


def _clean_word(word: str) -> str:
    # Alternate pronunciations are written "either(2)".
    if word.endswith(")") and "(" in word:
        word = word[: word.rindex("(")]
    return word


class PocketsphinxStream:
    """Decoding state of one stream; owns its own pocketsphinx ``Decoder``."""

    def __init__(self, decoder: object, backend: PocketsphinxBackend | None = None) -> None:
        self._decoder = decoder
        self._backend = backend
        self._open = False
        self._fed = 0
        self._alternatives = 0
        self._configured = False

    def configure(self, options: RecognizerOptions) -> list[str]:
        """Use the n-best list and a grammar of ``options.phrases``; what cannot be done, one
        line each. The decoder is not handed to another stream afterwards."""
        warnings: list[str] = []
        self.reset()
        self._configured = True
        self._alternatives = options.max_alternatives
        if options.phrases:
            grammar, missing = _jsgf(options.phrases, self._decoder.lookup_word)  # type: ignore[attr-defined]
            if missing:
                warnings.append(f"phrase_list: {len(missing)} word(s) not in the pocketsphinx dictionary were left "
                                f"out: {', '.join(missing[:20])}")
            if grammar is None:
                warnings.append("phrase_list is ignored: none of its words is in the pocketsphinx dictionary")
            else:
                try:
                    self._decoder.add_jsgf_string("phrases", grammar)  # type: ignore[attr-defined]
                    self._decoder.activate_search("phrases")  # type: ignore[attr-defined]
                except Exception as exc:  # pocketsphinx raises ValueError/RuntimeError
                    warnings.append(f"phrase_list is ignored: pocketsphinx could not use it ({exc})")
        return warnings

    def start(self) -> None:
        if self._open:
            self.reset()
        try:
            self._decoder.start_utt()  # type: ignore[attr-defined]
        except Exception as exc:  # pocketsphinx raises RuntimeError
            raise RecognizerError(f"pocketsphinx could not start an utterance: {exc}") from exc
        self._open = True
        self._fed = 0
        self._carry = b""

    def accept(self, samples: np.ndarray) -> None:
        if not self._open:
            self.start()
        # Results depend on how audio is chunked (the live cepstral mean is updated
        # per call), so the decoder always gets fixed 30 ms chunks, whatever the
        # caller's block size: fast and real-time runs give the same transcripts.
        data = self._carry + samples.astype("<i2", copy=False).tobytes()
        usable = len(data) - len(data) % _CHUNK_BYTES
        self._carry = data[usable:]
        try:
            for i in range(0, usable, _CHUNK_BYTES):
                self._decoder.process_raw(data[i : i + _CHUNK_BYTES], False, False)  # type: ignore[attr-defined]
        except Exception as exc:
            raise RecognizerError(f"pocketsphinx failed to decode audio: {exc}") from exc
        self._fed += len(samples)

    def partial(self) -> str:
        if not self._open:
            return ""
        hyp = self._decoder.hyp()  # type: ignore[attr-defined]
        return hyp.hypstr.strip() if hyp is not None else ""

    def finish(self) -> Transcript:
        if not self._open:
            return Transcript(text="", words=(), final=True)
        try:
            if self._carry:
                self._decoder.process_raw(self._carry, False, False)  # type: ignore[attr-defined]
                self._carry = b""
            self._decoder.end_utt()  # type: ignore[attr-defined]
        except Exception as exc:
            self._open = False
            raise RecognizerError(f"pocketsphinx failed to finalize an utterance: {exc}") from exc
        self._open = False
        hyp = self._decoder.hyp()  # type: ignore[attr-defined]
        if hyp is None:
            return Transcript(text="", words=(), final=True)
        words: list[Word] = []
        for seg in self._decoder.seg():  # type: ignore[attr-defined]
            token = seg.word
            if token in _FILLERS or token.startswith("["):  # [NOISE], [SPEECH] ...
                continue
            conf = float(seg.prob) if math.isfinite(seg.prob) else 0.0
            words.append(
                Word(
                    word=_clean_word(token),
                    start=seg.start_frame / _FRAME_RATE,
                    end=(seg.end_frame + 1) / _FRAME_RATE,
                    conf=min(1.0, max(0.0, conf)),
                )
            )
        text = " ".join(w.word for w in words)
        alternatives: tuple[Alternative, ...] = ()
        if self._alternatives:
            alternatives = self._nbest(text, tuple(words), float(hyp.prob))
        return Transcript(text=text, words=tuple(words), final=True, alternatives=alternatives)

    def _nbest(self, best: str, words: tuple[Word, ...], best_prob: float) -> tuple[Alternative, ...]:
        """The best transcript first (with its words), then the n-best list's other texts, each
        with the list's score (the best's too, where the list has it)."""
        scores: dict[str, float] = {}
        try:
            for i, hyp in enumerate(self._decoder.nbest()):  # type: ignore[attr-defined]
                if len(scores) >= self._alternatives + 1 or i >= 20 * self._alternatives:
                    break
                text = " ".join(_clean_word(t) for t in str(hyp.hypstr).split()
                                if t not in _FILLERS and not t.startswith("["))
                scores.setdefault(text, round(float(hyp.score), 6))
        except Exception:  # the n-best list is a bonus: the best transcript stands without it
            log.debug("pocketsphinx n-best failed", exc_info=True)
        first = scores.pop(best, max(scores.values(), default=round(best_prob, 6)))
        out = [Alternative(best, first, words)]
        out += [Alternative(text, score) for text, score in scores.items()]
        return tuple(out[: self._alternatives])

    def reset(self) -> None:
        if self._open:
            try:
                self._decoder.end_utt()  # type: ignore[attr-defined]
            except Exception:  # the state is thrown away anyway
                log.debug("pocketsphinx end_utt failed during reset", exc_info=True)
        self._open = False
        self._fed = 0

    def close(self) -> None:
        self.reset()
        if self._backend is not None and not self._configured:
            self._backend._release(self._decoder)
        self._backend = None


_TOKEN = re.compile(r"^[a-z0-9]+$")


def _jsgf(phrases: tuple[str, ...], lookup: object) -> tuple[str | None, list[str]]:
    """A JSGF grammar accepting the phrases' words in any order and number, and the words left
    out (not in the dictionary). Bracketed tokens (Vosk's ``[unk]``) are skipped: there is no
    garbage model."""
    missing: list[str] = []
    tokens: list[str] = []
    for phrase in phrases:
        for word in phrase.lower().split():
            if word.startswith("[") or word.startswith("<"):
                continue
            if lookup(word) is None:  # type: ignore[operator]
                if word not in missing:
                    missing.append(word)
                continue
            token = word if _TOKEN.match(word) else '"' + word.replace('"', "") + '"'
            if token not in tokens:
                tokens.append(token)
    if not tokens:
        return None, missing
    return f"#JSGF V1.0;\ngrammar phrases;\npublic <phrases> = ( {' | '.join(tokens)} )+ ;\n", missing


class PocketsphinxBackend:
    """Loads pocketsphinx's configuration once; every stream gets its own decoder.

    pocketsphinx decoders cannot share acoustic models across instances from
    Python, so each stream loads its own copy (about 20 MB, 0.3-0.8 s); decoders
    of closed streams are kept (up to ``pool_size``) for the next stream.
    """

    pool_size = 8

    name = "pocketsphinx"
    bounds_its_calls = False  # in this process; the pipeline's watchdog ends a session it hangs

    def __init__(self, config: AsrConfig) -> None:
        try:
            import pocketsphinx
        except ImportError as exc:  # pragma: no cover - a required dependency
            raise ModelError(f"the pocketsphinx backend needs the 'pocketsphinx' package: {exc}") from exc
        self._ps = pocketsphinx
        kwargs: dict[str, object] = {"samprate": 16000, "fwdflat": False, "bestpath": True, "loglevel": "FATAL",
                                     "maxhmmpf": config.pocketsphinx_maxhmmpf}
        model_dir = Path(config.pocketsphinx_model) if config.pocketsphinx_model else None
        if model_dir is not None:
            if not model_dir.is_dir():
                raise ModelError(f"pocketsphinx model directory not found: {model_dir}")
            kwargs["hmm"] = str(model_dir)
        for key, value in (("dict", config.pocketsphinx_dict), ("lm", config.pocketsphinx_lm)):
            if value:
                if not os.path.isfile(value):
                    raise ModelError(f"pocketsphinx {key} file not found: {value}")
                kwargs[key] = value
        self._kwargs = kwargs
        self.model = model_dir.name if model_dir is not None else "en-us (bundled)"
        self._lock = threading.Lock()
        # Load one decoder now so a broken model fails at start-up, not mid-stream.
        self._pool: list[object] = [self._new_decoder()]

    def _new_decoder(self) -> object:
        try:
            return self._ps.Decoder(**self._kwargs)
        except Exception as exc:
            raise ModelError(f"pocketsphinx could not load its model ({self.model}): {exc}") from exc

    def new_stream(self) -> PocketsphinxStream:
        with self._lock:
            decoder = self._pool.pop() if self._pool else None
        if decoder is None:
            decoder = self._new_decoder()
        else:
            # The feature front end (cepstral mean and more) adapts to what a decoder
            # has heard; a pooled decoder starts each stream from scratch, so nothing
            # of one stream's audio shapes another's results (checked: a reused decoder
            # then gives exactly a fresh one's transcripts; resetting the mean alone
            # does not).
            decoder.reinit_feat()  # type: ignore[attr-defined]
        return PocketsphinxStream(decoder, self)

    def _release(self, decoder: object) -> None:
        with self._lock:
            if len(self._pool) < self.pool_size:
                self._pool.append(decoder)
