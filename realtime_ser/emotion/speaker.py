"""Speaker-adaptive audio vectors: each speaker's earlier turns say what their voice sounds like.

A voice the model never heard is shifted as a whole from the voices it was trained on (pitch,
timbre, microphone), and that shift is read as emotion. Within a session, each speaker's
earlier turns estimate their own offset: a turn's audio vector is shifted by the running mean
of the *earlier* turns of the same speaker, shrunk towards the training mean by ``shrink``
pseudo-turns, so the first turn is unchanged and the correction grows with what was heard::

    shift = (sum of the speaker's earlier vectors + shrink * mean) / (n + shrink) - mean
    vector = raw - shift

The trainer (``training.train.speaker_normalized``), the evaluator and the live emotion stage
all use this class, so a model sees the same vectors in each. A model trained this way says so
in its card (``features.audio.speaker_norm``: ``shrink`` and the training ``mean``); a model
without it gets raw vectors, as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["SpeakerNorm"]


class SpeakerNorm:
    """The running per-speaker sums of one session (or one dialogue)."""

    def __init__(self, mean: np.ndarray, shrink: float) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.shrink = float(shrink)
        self._sums: dict[str, tuple[np.ndarray, int]] = {}

    @classmethod
    def from_card(cls, audio: dict[str, Any] | None, dim: int, where: str = "card.json") -> SpeakerNorm | None:
        """From a card's ``features.audio``; None when the model was trained on raw vectors."""
        spec = (audio or {}).get("speaker_norm")
        if spec is None:
            return None
        try:
            shrink = float(spec["shrink"])
            mean = np.asarray(spec["mean"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where}: features.audio.speaker_norm needs 'shrink' (a number) and 'mean' "
                             f"(a list of {dim} numbers)") from None
        if not (shrink > 0 and math.isfinite(shrink)) or mean.shape != (dim,) or not np.isfinite(mean).all():
            raise ModelError(f"{where}: features.audio.speaker_norm: shrink must be > 0 and mean {dim} finite "
                             f"numbers; got shrink {spec.get('shrink')!r} and {mean.size} numbers")
        return cls(mean, shrink)

    def card(self) -> dict[str, Any]:
        """What a model card records (``features.audio.speaker_norm``)."""
        return {"shrink": self.shrink, "mean": [float(x) for x in self.mean.astype(np.float32)]}

    def fresh(self) -> SpeakerNorm:
        """The same settings, nobody heard yet (a new session)."""
        return SpeakerNorm(self.mean, self.shrink)

    def shift(self, speaker: str) -> np.ndarray:
        """What to subtract from ``speaker``'s next vector (zeros for their first turn)."""
        total, n = self._sums.get(speaker, (None, 0))
        if total is None:
            return np.zeros(self.mean.shape, dtype=np.float32)
        return ((total + self.shrink * self.mean) / (n + self.shrink) - self.mean).astype(np.float32)

    def add(self, speaker: str, raw: np.ndarray) -> None:
        """A turn of ``speaker`` was heard: its raw (unshifted) vector joins their running mean."""
        total, n = self._sums.get(speaker, (np.zeros(self.mean.shape), 0))
        self._sums[speaker] = (total + np.asarray(raw, dtype=np.float64), n + 1)

    def step(self, speaker: str, raw: np.ndarray) -> np.ndarray:
        """The shift of ``speaker``'s next turn (:meth:`shift`); its raw vector then joins their mean."""
        shift = self.shift(speaker)
        self.add(speaker, raw)
        return shift
