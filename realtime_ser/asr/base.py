"""The recognizer protocol every speech recognition backend implements.

A backend is a *factory* for per-stream recognizers: the heavy model is loaded
once by :class:`RecognizerBackend` and every channel/session gets its own
:class:`StreamRecognizer` with its own decoding state, so nothing leaks between
streams. Recognizers are plain synchronous objects: no threads, no clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..features.speech import EncodedUtterance


@dataclass(frozen=True, slots=True)
class Word:
    """A recognized word. Times are seconds from the start of the audio fed
    to the recognizer since its last :meth:`StreamRecognizer.start`;
    ``conf`` is in [0, 1]."""

    word: str
    start: float
    end: float
    conf: float


@dataclass(frozen=True, slots=True)
class Alternative:
    """One of the n best transcripts of an utterance (with ``RecognizerOptions.max_alternatives``).

    ``confidence`` is the recognizer's own score of it: higher is better, comparable only
    between alternatives of one utterance (Vosk: a lattice score such as 215.6; pocketsphinx:
    a posterior in [0, 1]). ``words`` may be empty where the recognizer gives no alignment
    for this alternative."""

    text: str
    confidence: float
    words: tuple[Word, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Transcript:
    """A (partial or final) transcript of one utterance."""

    text: str
    words: tuple[Word, ...] = field(default_factory=tuple)
    final: bool = False
    alternatives: tuple[Alternative, ...] = field(default_factory=tuple)
    """The n best transcripts, best first (empty unless alternatives were asked for)."""
    speech: EncodedUtterance | None = None
    """Whisper's encoder output for this utterance's audio, when the recognizer computed it on the
    speech encoder's default settings (:mod:`realtime_ser.features.speech`): the emotion model
    uses it instead of encoding the audio again (it checks ``speech.key`` first)."""


@dataclass(frozen=True, slots=True)
class RecognizerOptions:
    """What a client may ask of the recognizer of its stream (the vosk-server protocol's
    ``max_alternatives`` and ``phrase_list``). The default asks for nothing.

    A stream that has a ``configure(options) -> list[str]`` method applies them and returns
    one line per request it cannot honour (fully); streams without one honour none."""

    max_alternatives: int = 0
    """Also return up to this many best transcripts (``Transcript.alternatives``); 0 = none."""
    phrases: tuple[str, ...] = ()
    """Recognize only these phrases (a grammar), where the recognizer can; empty = anything."""

    @property
    def default(self) -> bool:
        return self.max_alternatives == 0 and not self.phrases


def mono_int16(samples: np.ndarray, who: str) -> np.ndarray:
    """``samples`` as a 1-D int16 array (a single column is accepted); TypeError or
    ValueError naming ``who`` (e.g. ``"VoskStream.accept"``) for anything else."""
    data = np.asarray(samples)
    if data.dtype != np.int16:
        raise TypeError(f"{who} needs int16 samples, got {data.dtype}")
    if data.ndim == 2 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != 1:
        raise ValueError(f"{who} needs mono samples, got shape {data.shape}")
    return data


class StreamRecognizer(Protocol):
    """Decoding state of one audio stream (one channel of one session)."""

    def start(self) -> None:
        """Begin a new utterance."""

    def accept(self, samples: np.ndarray) -> None:
        """Feed 16 kHz mono int16 samples of the open utterance."""

    def partial(self) -> str:
        """The current best hypothesis of the open utterance ('' if none)."""

    def finish(self) -> Transcript:
        """Close the utterance and return its final transcript."""

    def reset(self) -> None:
        """Drop any open utterance without producing a result."""

    def close(self) -> None:
        """The stream is done; the backend may reuse its resources."""


class RecognizerBackend(Protocol):
    """A loaded recognition model that makes per-stream recognizers."""

    name: str
    model: str
    bounds_its_calls: bool
    """True where no call of a stream can block longer than ``asr.worker_timeout_s`` (the
    backend times its own calls out). Otherwise the pipeline watches the calls and ends a
    session whose recognizer stops returning."""

    def new_stream(self) -> StreamRecognizer:
        """A fresh recognizer with its own state, sharing the loaded model."""
