"""Per-utterance feature vectors for the trainer, computed by the runtime's own code.

Text: :class:`realtime_ser.features.text.TextEncoder` (contextual or static).
Audio: :class:`realtime_ser.features.acoustic.AcousticFeatures` on the audio of the
utterance as the live segmenter cuts it (:func:`realtime_ser.features.segment.utterance_audio`),
so a model sees the same numbers in training, in ``python -m training evaluate`` and live.
Both are cached on disk (:class:`realtime_ser.features.cache.FeatureCache`), keyed by
content and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.config import PipelineConfig
from realtime_ser.features.acoustic import AcousticConfig, AcousticFeatures
from realtime_ser.features.cache import FeatureCache
from realtime_ser.features.segment import utterance_audio

from .data import Manifest, Utterance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """Which front ends a model reads; written into its model card."""

    text_encoder: str = "contextual"
    """``contextual`` (mean-pooled encoder output) or ``static`` (mean of input word embeddings)."""
    text_encoder_dir: str = ""
    """A prepared text encoder directory ('' = the default in the model cache)."""
    audio: str = "acoustic"
    """``acoustic``: realtime_ser's numpy functionals."""

    def __post_init__(self) -> None:
        if self.text_encoder not in ("contextual", "static"):
            raise ValueError(f"text_encoder must be 'contextual' or 'static', got {self.text_encoder!r}")
        if self.audio != "acoustic":
            raise ValueError(f"audio must be 'acoustic', got {self.audio!r}")


def _progress(iterable: Sequence[Any], desc: str) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, leave=False, mininterval=2.0, disable=len(iterable) < 50)
    except ImportError:  # pragma: no cover
        return iterable


def vad_key(config: PipelineConfig | None = None) -> str:
    """Identifies the segmentation settings (part of the audio feature cache key)."""
    config = config or PipelineConfig()
    blob = json.dumps({"vad": asdict(config.vad), "frame_ms": config.source.frame_ms}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class FeatureExtractor:
    """Feature arrays for the utterances of manifests; lazy-loads each front end."""

    def __init__(self, settings: FeatureSettings | None = None, cache: FeatureCache | None = None,
                 pipeline: PipelineConfig | None = None) -> None:
        self.settings = settings or FeatureSettings()
        self.cache = cache or FeatureCache()
        self.pipeline = pipeline or PipelineConfig()
        self.acoustic_config = AcousticConfig()
        self._acoustic: AcousticFeatures | None = None
        self._text: Any = None

    # -- text ------------------------------------------------------------------------

    @property
    def text_encoder(self) -> Any:
        if self._text is None:
            from realtime_ser.features.text import TextEncoder

            d = Path(self.settings.text_encoder_dir) if self.settings.text_encoder_dir else None
            self._text = TextEncoder.load(d, kind=self.settings.text_encoder, threads=2)
        return self._text

    def text(self, texts: Sequence[str]) -> np.ndarray:
        from realtime_ser.features.text import encode_cached

        return np.asarray(encode_cached(self.text_encoder, list(texts), self.cache), dtype=np.float32)

    # -- audio -----------------------------------------------------------------------

    @property
    def acoustic(self) -> AcousticFeatures:
        if self._acoustic is None:
            self._acoustic = AcousticFeatures(self.acoustic_config)
        return self._acoustic

    def audio_key(self) -> str:
        return f"acoustic-{self.acoustic_config.key()}-vad-{vad_key(self.pipeline)}"

    def audio_file(self, path: Path, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                   variant: str = "") -> np.ndarray:
        """Features of the utterance audio in ``path`` (all segments joined, as one turn).

        ``transform`` (augmentation) acts on the file's samples before segmentation;
        ``variant`` must then name it, since it is part of the cache key.
        """
        data = path.read_bytes()
        key = self.audio_key() + (f"-{variant}" if variant else "")

        def compute() -> np.ndarray:
            if transform is None:
                segments = utterance_audio(path, self.pipeline)
            else:
                segments = _segments_of_array(transform, path, self.pipeline)
            samples = np.concatenate(segments) if segments else np.zeros(0, np.int16)
            return self.acoustic.extract(samples)

        return self.cache.get_or_compute("audio", data, key, compute)

    def audio(self, manifest: Manifest, utterances: Sequence[Utterance]) -> np.ndarray:
        out = np.zeros((len(utterances), self.acoustic.dim), dtype=np.float32)
        for i, u in enumerate(_progress(utterances, "audio features")):
            path = manifest.audio_path(u)
            if path is None:
                raise ValueError(f"{u.dialogue_id}#{u.utt_index} has no audio")
            out[i] = self.audio_file(path)
        return out

    def settings_card(self) -> dict[str, Any]:
        """What a model card records about the features a model expects."""
        card: dict[str, Any] = {
            "audio": {
                "front_end": "realtime_ser.features.acoustic",
                "key": self.acoustic_config.key(),
                "dim": self.acoustic.dim,
                "config": asdict(self.acoustic_config),
                "segmentation": {"vad": asdict(self.pipeline.vad), "frame_ms": self.pipeline.source.frame_ms},
            },
        }
        try:
            enc = self.text_encoder
            card["text"] = {"encoder": enc.name, "kind": enc.kind, "dim": enc.dim, "key": enc.key()}
        except Exception as exc:  # the card of an audio-only model needs no encoder
            log.debug("no text encoder: %s", exc)
        return card


def _segments_of_array(transform: Callable[[np.ndarray], np.ndarray], path: Path,
                       pipeline: PipelineConfig) -> list[np.ndarray]:
    """Segment transformed audio: write it to a temporary WAV and cut it like a file."""
    import tempfile

    import soundfile as sf

    samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    out = transform(mono)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        sf.write(tmp.name, np.clip(out, -1, 1), sr, subtype="PCM_16")
        return utterance_audio(tmp.name, pipeline)
