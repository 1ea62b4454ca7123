"""The emotion model's acoustic front end, as its model card names it; the same object in training and live.

Three kinds:

- ``speech``: Whisper's encoder states of the utterance, mean and standard deviation
  (:mod:`realtime_ser.features.speech`), 1024 numbers for Whisper base;
- ``acoustic``: the numpy functionals of :mod:`realtime_ser.features.acoustic` (75 numbers);
- ``speech+acoustic``: both, concatenated in that order.

A speech front end may also read the output of the encoder's first layers alone (``extra_layers``,
e.g. ``(1,)``: the first layer's states, then the encoder's final layer norm, pooled the same way),
concatenated after the main encoder's vector: Whisper's shallow layers keep more of how a voice
sounds, its deep ones more of what it says. Each is a shallower encoder of its own
(:func:`realtime_ser.features.speech.load` with ``encoder_layers``) that runs on every utterance;
only the main encoder may share its pass with the recognizer. Their window may be shorter than the
main encoder's (``extra_window_s``): a 4 s window costs a one-layer encoder about a third of a 10 s
one, but its vectors told emotions apart worse (``training/RESULTS.md``, "A shorter window for the
first layer"), so the packaged models keep the main encoder's window.

:meth:`AudioFrontEnd.extract` takes a batch of utterances and, optionally, encoder output the
recognizer already computed for some of them (one encoder pass serves both): those are pooled
as they are, the others are encoded together in one batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from ..errors import ModelError
from .acoustic import AcousticConfig, AcousticFeatures
from .speech import EncodedUtterance, SpeechEncoder, SpeechEncoderConfig

__all__ = ["KINDS", "AudioFrontEnd", "check_extra_layers", "extra_window"]

KINDS = ("speech", "acoustic", "speech+acoustic")


class AudioFrontEnd:
    """Utterance samples -> the fixed-length vector an emotion model reads; see the module docstring."""

    def __init__(self, kind: str, speech: SpeechEncoder | None = None,
                 acoustic: AcousticFeatures | None = None, extra: Sequence[SpeechEncoder] = ()) -> None:
        if kind not in KINDS:
            raise ValueError(f"the audio front end must be one of {', '.join(KINDS)}, got {kind!r}")
        if ("speech" in kind) != (speech is not None) or ("acoustic" in kind) != (acoustic is not None):
            raise ValueError(f"front end {kind!r} needs exactly its parts")
        if extra and speech is None:
            raise ValueError("extra encoder depths need the speech encoder")
        self.kind = kind
        self.speech = speech
        self.acoustic = acoustic
        self.extra = list(extra)
        """Shallower encoders whose pooled output follows the main encoder's (``extra_layers``)."""

    @classmethod
    def create(cls, kind: str, encoder_dir: str = "", threads: int = 0,
               speech_config: SpeechEncoderConfig | None = None,
               extra_layers: Sequence[int] = (), extra_window_s: int = 0) -> AudioFrontEnd:
        """Build the front end ``kind``; loads the speech encoder (shared in the process) when it needs one,
        and a shallower one per ``extra_layers`` (:func:`check_extra_layers`), each with windows of
        ``extra_window_s`` seconds (0: the main encoder's)."""
        from . import speech

        if kind not in KINDS:
            raise ValueError(f"the audio front end must be one of {', '.join(KINDS)}, got {kind!r}")
        config = speech_config or SpeechEncoderConfig()
        check_extra_layers(extra_layers, "speech" in kind, config.encoder_layers)
        enc = speech.load(encoder_dir, threads=threads, config=config) if "speech" in kind else None
        extra_config = replace(config, window_s=extra_window_s) if extra_window_s else config
        extra = [speech.load(encoder_dir, threads=threads, config=replace(extra_config, encoder_layers=n))
                 for n in extra_layers]
        ac = AcousticFeatures(AcousticConfig()) if "acoustic" in kind else None
        return cls(kind, enc, ac, extra)

    @classmethod
    def for_card(cls, audio: dict[str, Any], encoder_dir: str = "", threads: int = 0,
                 where: str = "the model") -> AudioFrontEnd:
        """The front end a model card's ``features.audio`` names, checked against what this runtime computes."""
        kind = audio.get("kind", "acoustic")
        if kind not in KINDS:
            raise ModelError(f"{where}: its audio front end {kind!r} is unknown to this version; known: {KINDS}")
        speech_config = None
        extra_layers: list[int] = []
        extra_window_s = 0
        if "speech" in kind:
            try:
                speech_config = SpeechEncoderConfig(**audio["speech"]["config"])
                extra = [SpeechEncoderConfig(**e["config"]) for e in audio["speech"].get("extra", [])]
                extra_layers = [e.encoder_layers for e in extra]
                check_extra_layers(extra_layers, True, speech_config.encoder_layers)
                extra_window_s = extra_window(extra, speech_config)
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError(f"{where}: features.audio.speech.config or .extra is missing or invalid ({exc})"
                                 ) from None
        front = cls.create(kind, encoder_dir, threads, speech_config, extra_layers, extra_window_s)
        if front.key() != audio.get("key"):
            raise ModelError(f"{where}: it expects audio features {audio.get('key')!r} ({kind}) but this runtime "
                             f"computes {front.key()!r}: the speech encoder's weights or the feature settings differ; "
                             "use the Whisper model it was trained with or retrain/export the model")
        return front

    @property
    def dim(self) -> int:
        return ((self.speech.dim if self.speech else 0) + sum(e.dim for e in self.extra)
                + (self.acoustic.dim if self.acoustic else 0))

    def key(self) -> str:
        """Identifies the vectors: front-end kind, settings and weights (a front end without extra depths
        keeps the key it had before they existed)."""
        parts = [self.kind]
        if self.speech is not None:
            parts.append(self.speech.key())
        parts.extend(f"extra:{e.key()}" for e in self.extra)
        if self.acoustic is not None:
            parts.append(self.acoustic.config.key())
        if self.kind == "acoustic":  # the key older models carry: the functionals' own
            return parts[1]
        return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]

    def card(self) -> dict[str, Any]:
        """What a model card records about this front end."""
        card: dict[str, Any] = {"kind": self.kind, "key": self.key(), "dim": self.dim}
        if self.speech is not None:
            card["speech"] = self.speech.card()
            if self.extra:
                card["speech"]["extra"] = [e.card() for e in self.extra]
        if self.acoustic is not None:
            card["acoustic"] = {"front_end": "realtime_ser.features.acoustic", "key": self.acoustic.config.key(),
                                "dim": self.acoustic.dim, "config": asdict(self.acoustic.config)}
        return card

    def shares(self, encoded: EncodedUtterance | None) -> bool:
        """Whether encoder output computed elsewhere is what this front end would compute itself."""
        return (encoded is not None and self.speech is not None
                and encoded.key == self.speech.key())

    def encode(self, utterances: Sequence[np.ndarray]) -> list[EncodedUtterance]:
        """The main encoder's pass over utterances, with the extra depths' pooled vectors attached
        (:attr:`EncodedUtterance.extra`): everything :meth:`extract` would run an encoder for."""
        if self.speech is None:
            raise ValueError(f"front end {self.kind!r} has no speech encoder")
        encoded = self.speech.encode(utterances)
        for enc in self.extra:
            for e, v in zip(encoded, enc.embed(utterances), strict=True):
                e.extra[enc.key()] = v
        return encoded

    def extract(self, utterances: Sequence[np.ndarray],
                encoded: Sequence[EncodedUtterance | None] | None = None) -> np.ndarray:
        """Vectors (N, dim) of utterances (int16 or float at 16 kHz); ``encoded[i]``, when it is this
        front end's encoder output for utterance ``i``, saves encoding it again."""
        n = len(utterances)
        out = np.zeros((n, self.dim), dtype=np.float32)
        col = 0
        if self.speech is not None:
            given = list(encoded) if encoded is not None else [None] * n
            todo = [i for i in range(n) if not self.shares(given[i])]
            fresh = dict(zip(todo, self.speech.encode([utterances[i] for i in todo]) if todo else [], strict=True))
            done: list[EncodedUtterance] = []
            for i in range(n):
                e = fresh[i] if i in fresh else given[i]
                assert e is not None
                done.append(e)
                out[i, : self.speech.dim] = SpeechEncoder.pool(e.states)
            col = self.speech.dim
            for enc in self.extra:  # a pass ahead may have computed them (encode)
                key = enc.key()
                missing = [i for i, e in enumerate(done) if key not in e.extra]
                pooled = enc.embed([utterances[i] for i in missing])  # no pass when none is missing
                vectors = dict(zip(missing, pooled, strict=True))
                for i, e in enumerate(done):
                    out[i, col : col + enc.dim] = vectors[i] if i in vectors else e.extra[key]
                col += enc.dim
        if self.acoustic is not None:
            for i, samples in enumerate(utterances):
                out[i, col:] = self.acoustic.extract(samples)
        return out


def extra_window(extra: Sequence[SpeechEncoderConfig], main: SpeechEncoderConfig) -> int:
    """The window in seconds that a card's extra encoder depths run with, as :meth:`AudioFrontEnd.create`
    takes it (0: the main encoder's); refuses depths whose windows differ."""
    windows = {e.window_s for e in extra}
    if len(windows) > 1:
        raise ValueError(f"the extra depths' windows differ ({sorted(windows)} s)")
    w = windows.pop() if windows else main.window_s
    return 0 if w == main.window_s else w


def check_extra_layers(extra_layers: Sequence[int], has_speech: bool, main_layers: int) -> None:
    """Refuse extra encoder depths that cannot be: without the speech encoder, not a whole number of layers,
    the main encoder's own depth or repeated. The model's own layer count is checked when it loads."""
    from .speech import MAX_ENCODER_LAYERS

    if not extra_layers:
        return
    if not has_speech:
        raise ValueError("extra encoder depths need the speech front end (audio = 'speech' or 'speech+acoustic')")
    for n in extra_layers:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ENCODER_LAYERS:
            raise ValueError(f"each extra encoder depth must be a whole number of layers 1..{MAX_ENCODER_LAYERS}, "
                             f"got {n!r}")
    if main_layers in extra_layers or len(set(extra_layers)) != len(extra_layers):
        raise ValueError(f"extra encoder depths {list(extra_layers)} repeat a depth (the main encoder runs "
                         f"{main_layers or 'all'} layers)")
