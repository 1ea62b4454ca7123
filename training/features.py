"""Per-utterance feature vectors for the trainer, computed by the runtime's own code.

Text: :class:`realtime_ser.features.text.TextEncoder` (contextual or static).
Audio: :class:`realtime_ser.features.audio.AudioFrontEnd` (Whisper's encoder states pooled,
the numpy functionals, or both) on the audio of the utterance as the live segmenter cuts it
(:func:`realtime_ser.features.segment.utterance_audio`), so a model sees the same numbers in
training, in ``python -m training evaluate`` and live. Both are cached on disk
(:class:`realtime_ser.features.cache.FeatureCache`), keyed by content and settings; augmented
copies of a clip are keyed by the augmentation settings, the seed and the copy number too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.config import PipelineConfig
from realtime_ser.features.acoustic import AcousticConfig, AcousticFeatures
from realtime_ser.features.audio import KINDS as AUDIO_KINDS
from realtime_ser.features.audio import AudioFrontEnd, check_extra_layers
from realtime_ser.features.cache import FeatureCache
from realtime_ser.features.segment import utterance_audio

from .augment import AugmentConfig
from .data import Manifest, Utterance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """Which front ends a model reads; written into its model card."""

    text_encoder: str = "contextual"
    """``contextual`` (mean-pooled encoder output) or ``static`` (mean of input word embeddings)."""
    text_encoder_dir: str = ""
    """A prepared text encoder directory ('' = ``text_encoder_name`` in the model cache)."""
    text_encoder_name: str = ""
    """A prepared encoder in the model cache by name, e.g. ``all-MiniLM-L6-v2-ser`` (the fine-tuned one
    ``realtime-ser models prepare`` builds); '' = the plain all-MiniLM-L6-v2."""
    text_finetune: bool = False
    """Fine-tune the encoder for each fold on that fold's training lines (and ``text_extra``'s), and
    read that fold's text features from it (:mod:`training.text_finetune`)."""
    text_extra: tuple[str, ...] = ()
    """Corpora whose labeled lines are added to the fine-tuning data only (``meld``, ``emorynlp``)."""
    text_finetune_where: str = ""
    """``column=value``: fine-tune only on the training lines whose manifest column has that value
    (e.g. ``kind=dialogue_ref``: the typed lines of real dialogues, not acted clips' fixed sentences)."""
    audio: str = "speech"
    """``speech`` (Whisper's encoder states, pooled), ``acoustic`` (realtime_ser's numpy
    functionals) or ``speech+acoustic`` (both)."""
    speech_level_dbfs: float | None = None
    """Scale each utterance's active part to this RMS level (dBFS, e.g. -26) before Whisper's encoder
    (:attr:`realtime_ser.features.speech.SpeechEncoderConfig.level_dbfs`; an exported model's card
    carries it and the runtime does the same); ``None``: the level as recorded."""
    speech_layers: int = 0
    """Run only the first this many layers of Whisper's encoder
    (:attr:`realtime_ser.features.speech.SpeechEncoderConfig.encoder_layers`; carried by an exported
    model's card like the level); 0 = all of them."""
    speech_extra_layers: tuple[int, ...] = ()
    """Also the pooled output of the encoder's first this many layers alone, concatenated after the main
    encoder's vector, e.g. ``(1,)`` (:mod:`realtime_ser.features.audio`; carried by an exported model's
    card). Each depth is a part of its own in the feature cache, shared with a run whose
    ``speech_layers`` is that depth."""
    speech_extra_window_s: int = 0
    """The window of the extra depths' encoders in seconds (1..30; 0: the main encoder's, 10 s; carried by
    an exported model's card). A shorter one costs less; 4 s lost 1-4 points (training/RESULTS.md)."""
    speaker_norm: float = 0.0
    """Speaker-adaptive audio vectors: each utterance's vector shifted by the running mean of its
    voice's earlier utterances, shrunk towards the training mean by this many pseudo-utterances
    (:class:`realtime_ser.emotion.speaker.SpeakerNorm`; an exported model's card carries it and the
    runtime does the same per speaker of a session). 0 = off."""

    def __post_init__(self) -> None:
        if self.text_encoder not in ("contextual", "static"):
            raise ValueError(f"text_encoder must be 'contextual' or 'static', got {self.text_encoder!r}")
        if self.audio not in AUDIO_KINDS:
            raise ValueError(f"audio must be one of {', '.join(AUDIO_KINDS)}, got {self.audio!r}")
        if self.speaker_norm < 0:
            raise ValueError(f"speaker_norm must be >= 0 (0 = off), got {self.speaker_norm!r}")
        object.__setattr__(self, "text_extra", tuple(self.text_extra))
        object.__setattr__(self, "speech_extra_layers", tuple(self.speech_extra_layers))
        check_extra_layers(self.speech_extra_layers, "speech" in self.audio, self.speech_layers)
        w = self.speech_extra_window_s
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 30:
            raise ValueError(f"speech_extra_window_s must be a whole number of seconds 1..30 (0 = the main "
                             f"encoder's window), got {w!r}")
        if w and not self.speech_extra_layers:
            raise ValueError("speech_extra_window_s is the window of speech_extra_layers' encoders; none are set")


@dataclass(frozen=True)
class AugmentSettings:
    """Augmented copies of every training clip (``[augment]`` in a training config).

    Each training turn is drawn, every epoch, from its clean features and its ``copies``
    augmented ones (computed once and cached); evaluation always reads the clean features.
    """

    copies: int = 0
    """Augmented copies per clip (0 = no augmentation)."""
    seed: int = 0
    config: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError(f"augment.copies must be >= 0, got {self.copies}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentSettings:
        d = dict(d)
        copies, seed = int(d.pop("copies", 0)), int(d.pop("seed", 0))
        known = {f.name for f in fields(AugmentConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown augment setting(s) {unknown}; known: {sorted(known | {'copies', 'seed'})}")
        for k in ("snr_db", "tempo", "pitch_semitones", "gain_db", "noise_kinds"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(copies, seed, AugmentConfig(**d))

    def to_dict(self) -> dict[str, Any]:
        return {"copies": self.copies, "seed": self.seed, **asdict(self.config)}


def _progress(iterable: Sequence[Any], desc: str) -> Any:
    try:
        from tqdm import tqdm

        # Bars only on a terminal: piped or logged output stays plain lines.
        return tqdm(iterable, desc=desc, leave=False, mininterval=2.0,
                    disable=len(iterable) < 50 or not sys.stderr.isatty())
    except ImportError:  # pragma: no cover
        return iterable


def vad_key(config: PipelineConfig | None = None) -> str:
    """Identifies the segmentation settings (part of the audio feature cache key)."""
    config = config or PipelineConfig()
    vad = asdict(config.vad)
    if not vad["auto_gain_dbfs"]:  # off: the key of the settings before the option existed
        del vad["auto_gain_dbfs"], vad["auto_gain_max_db"]
    blob = json.dumps({"vad": vad, "frame_ms": config.source.frame_ms}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class FeatureExtractor:
    """Feature arrays for the utterances of manifests; lazy-loads each front end."""

    def __init__(self, settings: FeatureSettings | None = None, cache: FeatureCache | None = None,
                 pipeline: PipelineConfig | None = None, threads: int = 0) -> None:
        self.settings = settings or FeatureSettings()
        self.cache = cache or FeatureCache()
        self.pipeline = pipeline or PipelineConfig()
        self.threads = threads
        self._front: AudioFrontEnd | None = None
        self._parts: dict[str, AudioFrontEnd] = {}
        self._text: Any = None

    # -- text ------------------------------------------------------------------------

    @property
    def text_encoder(self) -> Any:
        if self._text is None:
            from realtime_ser.features.text import TextEncoder, encoder_dir_for

            d = None
            if self.settings.text_encoder_dir:
                d = Path(self.settings.text_encoder_dir)
            elif self.settings.text_encoder_name:
                d = encoder_dir_for({"encoder": self.settings.text_encoder_name})
            self._text = TextEncoder.load(d, kind=self.settings.text_encoder, threads=2)
        return self._text

    def text(self, texts: Sequence[str]) -> np.ndarray:
        from realtime_ser.features.text import encode_cached

        return np.asarray(encode_cached(self.text_encoder, list(texts), self.cache), dtype=np.float32)

    # -- audio -----------------------------------------------------------------------

    @property
    def front_end(self) -> AudioFrontEnd:
        """The front end the settings name (what a model card records)."""
        if self._front is None:
            parts = {k: self._part(k) for k in self._kinds()}
            speech = parts["speech"].speech if "speech" in parts else None
            extra = [e for k, p in parts.items() if "@" in k and (e := p.speech) is not None]
            acoustic = parts["acoustic"].acoustic if "acoustic" in parts else None
            self._front = AudioFrontEnd(self.settings.audio, speech, acoustic, extra)
        return self._front

    def _kinds(self) -> list[str]:
        """The parts of the front end, each cached on its own, in the order of the vector's columns:
        ``speech``, ``speech@N`` for each extra depth, ``acoustic``."""
        kinds = []
        for kind in self.settings.audio.split("+"):
            kinds.append(kind)
            if kind == "speech":
                kinds.extend(f"speech@{n}" for n in self.settings.speech_extra_layers)
        return kinds

    def _part(self, kind: str) -> AudioFrontEnd:
        if kind not in self._parts:
            speech = None
            base, _, depth = kind.partition("@")
            if "speech" in base:  # with neither setting, the encoder's defaults
                from realtime_ser.features.speech import SpeechEncoderConfig

                speech = SpeechEncoderConfig(level_dbfs=self.settings.speech_level_dbfs,
                                             encoder_layers=int(depth) if depth else self.settings.speech_layers)
                if depth and self.settings.speech_extra_window_s:
                    speech = replace(speech, window_s=self.settings.speech_extra_window_s)
            self._parts[kind] = AudioFrontEnd.create(base, threads=self.threads, speech_config=speech)
        return self._parts[kind]

    def audio_key(self, kind: str | None = None) -> str:
        """Cache key of one part's features (``speech``, ``speech@N`` or ``acoustic``), or with no ``kind``
        that of the whole front end. An extra depth's part has the key of a ``speech`` part run at that
        depth, so the two share their cache."""
        front = self._part(kind) if kind is not None else self.front_end
        prefix = (kind or self.settings.audio).partition("@")[0].replace("+", "-")
        return f"{prefix}-{front.key()}-vad-{vad_key(self.pipeline)}"

    def audio_file(self, path: Path, transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                   variant: str = "") -> np.ndarray:
        """Features of the utterance audio in ``path`` (all segments joined, as one turn).

        ``transform`` (augmentation) maps the file's samples and sample rate to new samples
        before segmentation;
        ``variant`` must then name it, since it is part of the cache key.
        """
        return self.audio_files([path], [transform], variant)[0]

    def audio_files(self, paths: Sequence[Path],
                    transforms: Sequence[Callable[[np.ndarray, int], np.ndarray] | None] | None = None,
                    variant: str = "", batch: int = 16) -> np.ndarray:
        """Features of many files. Each part of the front end (``speech``, each extra depth, ``acoustic``)
        has its own cache, so ``speech+acoustic`` reuses what either computed; what is not cached is segmented
        and computed ``batch`` files at a time."""
        return np.concatenate([self._part_files(kind, paths, transforms, variant, batch)
                               for kind in self._kinds()], axis=1)

    def _part_files(self, kind: str, paths: Sequence[Path],
                    transforms: Sequence[Callable[[np.ndarray, int], np.ndarray] | None] | None,
                    variant: str, batch: int) -> np.ndarray:
        front = self._part(kind)
        key = self.audio_key(kind) + (f"-{variant}" if variant else "")
        transforms = list(transforms) if transforms is not None else [None] * len(paths)
        out = np.zeros((len(paths), front.dim), dtype=np.float32)
        todo: list[tuple[int, bytes]] = []
        for i, path in enumerate(paths):
            data = Path(path).read_bytes()
            cached = self.cache.load("audio", data, key)
            if cached is not None and cached.shape == (front.dim,):
                out[i] = cached
            else:
                todo.append((i, data))
        for start in _progress(range(0, len(todo), batch), f"{kind} features ({len(todo)} to compute)"):
            chunk = todo[start : start + batch]
            samples = []
            for i, _ in chunk:
                transform = transforms[i]
                if transform is None:
                    segments = utterance_audio(paths[i], self.pipeline)
                else:
                    segments = _segments_of_array(transform, Path(paths[i]), self.pipeline)
                samples.append(np.concatenate(segments) if segments else np.zeros(0, np.int16))
            vectors = front.extract(samples)
            for (i, data), v in zip(chunk, vectors, strict=True):
                self.cache.store("audio", data, key, v)
                out[i] = v
        return out

    def audio(self, manifest: Manifest, utterances: Sequence[Utterance]) -> np.ndarray:
        return self.audio_files(self._paths(manifest, utterances))

    def audio_copies(self, manifest: Manifest, utterances: Sequence[Utterance], augment: AugmentSettings,
                     clean: np.ndarray | None = None) -> np.ndarray:
        """``augment.copies`` augmented feature vectors of each labeled utterance: shape (copies, N, dim).

        Unlabeled context turns get their clean features (``clean``, computed when not given) in every
        copy: no loss reads them, and augmenting them would double the feature extraction of
        dialogues voiced by clips of other emotions. Each clip's copies depend only on the clip's
        content, the seed and the copy number (not on which other clips are in the run), so caches
        are shared between experiments.
        """

        labeled = [i for i, u in enumerate(utterances) if u.labeled]
        base = clean if clean is not None else self.audio(manifest, utterances)
        out = np.repeat(base[None], augment.copies, axis=0).astype(np.float32)
        if labeled:
            out[:, labeled] = self._augmented(manifest, [utterances[i] for i in labeled], augment)
        return out

    def _augmented(self, manifest: Manifest, utterances: Sequence[Utterance], augment: AugmentSettings
                   ) -> np.ndarray:
        from .augment import Augmenter

        paths = self._paths(manifest, utterances)
        seeds = [int.from_bytes(hashlib.sha256(Path(p).read_bytes()).digest()[:4], "little") for p in paths]
        out = np.zeros((augment.copies, len(paths), self.front_end.dim), dtype=np.float32)
        for c in range(augment.copies):
            def transform_for(seed: int, c: int = c) -> Callable[[np.ndarray, int], np.ndarray]:
                return Augmenter(augment.config, seed=(augment.seed, seed, c)).apply

            out[c] = self.audio_files(paths, [transform_for(s) for s in seeds],
                                      variant=f"aug-{augment.config.key()}-s{augment.seed}-c{c}")
        return out

    @staticmethod
    def _paths(manifest: Manifest, utterances: Sequence[Utterance]) -> list[Path]:
        paths = []
        for u in utterances:
            path = manifest.audio_path(u)
            if path is None:
                raise ValueError(f"{u.dialogue_id}#{u.utt_index} has no audio")
            paths.append(path)
        return paths

    def settings_card(self, modalities: Sequence[str] = ("audio", "text")) -> dict[str, Any]:
        """What a model card records about the features a model of ``modalities`` expects
        (only those front ends are loaded)."""
        card: dict[str, Any] = {}
        if "audio" in modalities:
            card["audio"] = {
                **self.front_end.card(),
                "segmentation": {"vad": asdict(self.pipeline.vad), "frame_ms": self.pipeline.source.frame_ms},
            }
        if "text" in modalities:
            enc = self.text_encoder
            card["text"] = {"encoder": enc.name, "kind": enc.kind, "dim": enc.dim, "key": enc.key()}
        return card


def main_speech_columns(settings: FeatureSettings, audio_dim: int) -> int:
    """How many leading values of an audio vector of size ``audio_dim`` are the main speech encoder's when
    shallower encoders' vectors follow it (``speech_extra_layers``); 0 (all of it) without them. Every
    depth of one encoder pools to the same size, and the numpy functionals come last."""
    if not settings.speech_extra_layers:
        return 0
    rest = audio_dim - (AcousticFeatures(AcousticConfig()).dim if "acoustic" in settings.audio else 0)
    return rest // (1 + len(settings.speech_extra_layers))


def _segments_of_array(transform: Callable[[np.ndarray, int], np.ndarray], path: Path,
                       pipeline: PipelineConfig) -> list[np.ndarray]:
    """Segment transformed audio: write it to a temporary WAV and cut it like a file."""
    import tempfile

    import soundfile as sf

    samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    out = transform(mono, sr)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        sf.write(tmp.name, np.clip(out, -1, 1), sr, subtype="PCM_16")
        return utterance_audio(tmp.name, pipeline)
