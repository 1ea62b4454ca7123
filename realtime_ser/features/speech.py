"""Whisper's speech encoder: one pass per utterance that serves both the recognizer and the emotion model.

Whisper's encoder output, pooled over the frames that hold an utterance, is a speech
representation learned from 680 000 hours of many voices; on acted clips of actors the
emotion model never heard it separates emotions far better than hand-made functionals.
When Whisper is also the recognizer, its decoder reads the very same encoder output, so
the encoder runs once per utterance for both (:mod:`realtime_ser.asr.whisper_backend`
takes its encoder output from here).

How an utterance is encoded (the same in training, in offline evaluation and live):

- **A fixed window.** The utterance's 16 kHz samples are zero-padded to
  :attr:`SpeechEncoderConfig.window_s` seconds (10 by default) and turned into Whisper's
  log-Mel spectrogram (80 bands, 25 ms windows every 10 ms, the spectrogram floored 8 decades
  below its maximum and scaled as Whisper does). CTranslate2 accepts windows shorter than the
  30 s Whisper was trained on: the encoder costs about a fifth, and decoding from it keeps the
  word error rate (measured in ``bench/results``). An utterance longer than the window is cut
  into consecutive windows.
- **The level (optional).** With :attr:`SpeechEncoderConfig.level_dbfs` set, the utterance is
  first scaled so that its active part (the 20 ms frames within 30 dB of its loudest) has that
  RMS level, peaks held below full scale (:func:`scale_to_level`): Whisper's log-Mel keeps the
  absolute level, so without it a recording far quieter than the training data reads as another
  voice. The packaged models use -26 dBFS, and so does the Whisper recognizer
  (``asr.whisper_level_dbfs``), so the one pass still serves both. Off (``None``) in models
  trained before it; their features are unchanged.
- **The utterance's frames.** The encoder gives one 512-dimensional state every 20 ms; only the
  states of frames that hold audio of the utterance are kept (not the padding).
- **Pooling.** Mean and standard deviation over those states: 1024 numbers for Whisper base.
- **Depth (optional).** With :attr:`SpeechEncoderConfig.encoder_layers` set, only the encoder's
  first layers run (then its final layer norm): emotion is carried more by the middle of the
  encoder than by its last layers, which serve the decoder. The model is the prepared one with
  its later layers left out when it is loaded (:func:`truncated_model_files`, in memory; nothing
  is written), and it costs that share of the encoder. Its output is not what Whisper's decoder
  reads, so such an encoder never shares its pass with the recognizer (its :meth:`SpeechEncoder.key`
  differs). 0 (all layers) in models trained before it; their features are unchanged. A front end
  may read a shallower encoder's vector beside the main one (``extra_layers`` of
  :class:`realtime_ser.features.audio.AudioFrontEnd`): each is such a model of its own.

Batches: :meth:`SpeechEncoder.encode` takes any number of utterances and runs their windows
through the encoder together. The CTranslate2 model is thread-safe; one model object per
directory and compute type is loaded in a process (:func:`load`), and every caller (the
recognizer, the emotion worker) uses that one.

Runtime needs: ``ctranslate2`` and a CTranslate2 Whisper model directory (by default the one
``realtime-ser models prepare whisper-base`` assembles); no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..config import WHISPER_LEVEL_LIMITS
from ..errors import ModelError

__all__ = [
    "SAMPLE_RATE",
    "EncodedUtterance",
    "SpeechEncoder",
    "SpeechEncoderConfig",
    "load",
    "log_mel",
    "scale_to_level",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
FRAME_SAMPLES = 2 * HOP
"""Audio samples per encoder state (the encoder's first convolution has stride 2): 20 ms."""


@dataclass(frozen=True)
class SpeechEncoderConfig:
    """How utterances are encoded and pooled; ``key()`` identifies the resulting vectors.

    Bump ``version`` whenever the code changes what the vectors mean, so caches and model
    cards keyed on :meth:`key` are not reused with different features.
    """

    window_s: int = 10
    """Encoder window in seconds (longer utterances span several windows)."""
    pooling: str = "mean_std"
    """``mean_std``: mean and standard deviation of the utterance's encoder states."""
    compute_type: str = "int8"
    """CTranslate2 compute type of the encoder (int8 on CPUs: about 2x faster than float32)."""
    version: str = "1"
    level_dbfs: float | None = None
    """Scale each utterance's active part to this RMS level (dB below full scale) before encoding
    (:func:`scale_to_level`); ``None``: the level as recorded."""
    encoder_layers: int = 0
    """Run only the encoder's first this many layers (then its final layer norm); 0 = all of them."""

    def __post_init__(self) -> None:
        if not 1 <= self.window_s <= 30:
            raise ValueError(f"window_s must be 1..30 seconds (Whisper's encoder holds 30 s), got {self.window_s}")
        if self.pooling != "mean_std":
            raise ValueError(f"pooling must be 'mean_std', got {self.pooling!r}")
        if self.level_dbfs is not None:
            if not LEVEL_LIMITS[0] <= self.level_dbfs <= LEVEL_LIMITS[1]:
                raise ValueError(f"level_dbfs must be {LEVEL_LIMITS[0]}..{LEVEL_LIMITS[1]} dB (full scale = 0), "
                                 f"or none; got {self.level_dbfs!r}")
            object.__setattr__(self, "level_dbfs", float(self.level_dbfs))
        if isinstance(self.encoder_layers, bool) or not isinstance(self.encoder_layers, int) \
                or not 0 <= self.encoder_layers <= MAX_ENCODER_LAYERS:
            raise ValueError(f"encoder_layers must be a whole number 0..{MAX_ENCODER_LAYERS} (0 = all of the "
                             f"encoder's layers), got {self.encoder_layers!r}")

    def key(self, model_sha256: str) -> str:
        """Short stable hash of these settings and the weights they run on (an unset level and the whole
        encoder are left out, so the models trained before them keep their key)."""
        settings = {k: v for k, v in asdict(self).items()
                    if not (k == "level_dbfs" and v is None) and not (k == "encoder_layers" and v == 0)}
        blob = json.dumps({**settings, "model": model_sha256}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


LEVEL_LIMITS = WHISPER_LEVEL_LIMITS
MAX_ENCODER_LAYERS = 64
ACTIVE_RANGE_DB = 30.0
"""Frames within this many dB of an utterance's loudest frame count as its active part."""
MAX_PEAK = 0.99


def scale_to_level(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Float audio ``x`` scaled so that its active 20 ms frames (within :data:`ACTIVE_RANGE_DB` of the
    loudest) have an RMS of ``level_dbfs``; scaled down further where a peak would pass
    :data:`MAX_PEAK`. Silence (or no audio at all) comes back unchanged."""
    if x.size == 0:
        return x
    n = len(x) // FRAME_SAMPLES
    frames = (x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES) if n else x[None]).astype(np.float64)
    power = np.mean(frames * frames, axis=1)
    if power.max() <= 0:
        return x
    active = power >= power.max() * 10 ** (-ACTIVE_RANGE_DB / 10)
    gain = 10 ** (level_dbfs / 20) / np.sqrt(power[active].mean())
    peak = float(np.abs(x).max())
    gain = min(gain, MAX_PEAK / peak)
    return (x * gain).astype(np.float32)


# -- log-Mel spectrogram -----------------------------------------------------------------------


@cache
def _mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-style triangular Mel filters (n_mels, N_FFT//2+1), area-normalised, up to 8 kHz:
    the filter bank Whisper was trained with."""
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    # Slaney's Mel scale: linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    top = min_log_mel + np.log(SAMPLE_RATE / 2 / min_log_hz) / logstep
    hz = mel_to_hz(np.linspace(0.0, top, n_mels + 2))
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1] - hz[:-2])[:, None]
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:] - hz[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.astype(np.float32)


@cache
def _hann() -> np.ndarray:
    return np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as torch.hann_window


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's log-Mel spectrogram (80, len(audio) // 160) of float32 16 kHz audio.

    Reflect-padded centred STFT, power spectrum through the Mel filters, log10 floored 8
    decades below the maximum, then ``(x + 4) / 4``.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.size <= N_FFT // 2:
        x = np.pad(x, (0, N_FFT // 2 + 1 - x.size))
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, (n, N_FFT), (padded.strides[0] * HOP, padded.strides[0]),
                                             writeable=False)
    spec = np.fft.rfft(frames * _hann(), axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)[:-1]  # the last frame is dropped, as Whisper does
    mel = _mel_filters() @ power.T
    logspec = np.log10(np.maximum(mel, 1e-10))
    logspec = np.maximum(logspec, logspec.max() - 8.0)
    return ((logspec + 4.0) / 4.0).astype(np.float32)


def _float_audio(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        x = x.reshape(-1)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / 32768.0
    return np.clip(np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


# -- the encoder --------------------------------------------------------------------------------


@dataclass
class EncodedUtterance:
    """The encoder's view of one utterance."""

    states: np.ndarray
    """(frames, d_model) float32: the encoder states of the frames that hold the utterance,
    all its windows in order."""
    windows: Any = None
    """The raw encoder output of the utterance's windows (a CTranslate2 StorageView of shape
    (n_windows, window_s * 50, d_model)) when it was asked for: what Whisper's decoder reads."""
    seconds: float = 0.0
    """Duration of the utterance."""
    key: str = ""
    """:meth:`SpeechEncoder.key` of the encoder settings and weights that produced it: a consumer
    uses encoder output computed elsewhere only when this equals its own key."""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """Pooled vectors of shallower encoders of the same utterance, by their :meth:`SpeechEncoder.key`
    (:meth:`realtime_ser.features.audio.AudioFrontEnd.encode`: a pass ahead computes a front end's
    extra depths too)."""


class SpeechEncoder:
    """Whisper's encoder on a CTranslate2 model; see the module docstring."""

    def __init__(self, model: Any, model_dir: Path, model_sha256: str, config: SpeechEncoderConfig,
                 name: str) -> None:
        self.model = model
        """The loaded ``ctranslate2.models.Whisper`` (its decoder serves the recognizer)."""
        self.model_dir = model_dir
        self.model_sha256 = model_sha256
        self.config = config
        self.name = name
        self.d_model = 0
        self.calls = 0

    @property
    def window_samples(self) -> int:
        return self.config.window_s * SAMPLE_RATE

    @property
    def window_frames(self) -> int:
        return self.window_samples // FRAME_SAMPLES

    @property
    def dim(self) -> int:
        """Size of a pooled vector."""
        return 2 * self.d_model

    def key(self) -> str:
        return self.config.key(self.model_sha256)

    def card(self) -> dict[str, Any]:
        """What a model card records about the acoustic front end a model expects."""
        return {"front_end": "realtime_ser.features.speech", "encoder": self.name,
                "encoder_sha256": self.model_sha256, "key": self.key(), "dim": self.dim,
                "config": asdict(self.config)}

    def windows(self, samples: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """The log-Mel spectrogram of each window of one utterance, and the encoder frames that hold audio."""
        x = _float_audio(samples)
        if self.config.level_dbfs is not None:
            x = scale_to_level(x, self.config.level_dbfs)
        w = self.window_samples
        n_windows = max(1, -(-len(x) // w))
        mels, frames = [], []
        for i in range(n_windows):
            chunk = x[i * w : (i + 1) * w]
            window = np.zeros(w, dtype=np.float32)
            window[: len(chunk)] = chunk
            mels.append(log_mel(window))
            frames.append(max(1, min(self.window_frames, -(-len(chunk) // FRAME_SAMPLES))))
        return mels, frames

    def encode(self, utterances: Sequence[np.ndarray], keep_windows: bool = False) -> list[EncodedUtterance]:
        """Encode utterances (int16 or float samples at 16 kHz), all their windows in one batch."""
        import ctranslate2

        if not utterances:
            return []
        mels: list[np.ndarray] = []
        spans: list[tuple[int, list[int]]] = []
        for samples in utterances:
            m, f = self.windows(samples)
            spans.append((len(mels), f))
            mels.extend(m)
        batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels)))
        try:
            output = self.model.encode(batch, to_cpu=True)
        except Exception as exc:  # CTranslate2 raises RuntimeError for what it cannot run
            raise ModelError(f"the speech encoder failed: {exc}") from exc
        states = np.asarray(output, dtype=np.float32)
        key = self.key()
        self.d_model = states.shape[-1]
        self.calls += 1
        out = []
        for (first, frames), samples in zip(spans, utterances, strict=True):
            kept = np.concatenate([states[first + i, :n] for i, n in enumerate(frames)])
            windows = None
            if keep_windows:
                windows = ctranslate2.StorageView.from_array(np.ascontiguousarray(states[first : first + len(frames)]))
            out.append(EncodedUtterance(kept, windows, len(samples) / SAMPLE_RATE, key))
        return out

    @staticmethod
    def pool(states: np.ndarray) -> np.ndarray:
        """Mean and standard deviation of encoder states over frames, as one float32 vector."""
        s = np.asarray(states, dtype=np.float64)
        return np.concatenate([s.mean(0), s.std(0)]).astype(np.float32)

    def embed(self, utterances: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled vectors (N, dim) of utterances, in one encoder batch."""
        return np.stack([self.pool(e.states) for e in self.encode(utterances)]) if utterances else np.zeros(
            (0, self.dim), np.float32)


# -- a shallower encoder -------------------------------------------------------------------------

_MODEL_FORMATS = (6,)
"""The versions of CTranslate2's ``model.bin`` layout :func:`truncated_model_files` reads (that of the
Whisper models ``realtime-ser models prepare`` assembles)."""


def _read_model_bin(data: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    """Where the variables of a CTranslate2 ``model.bin`` are: (offset of the variable count,
    [(name, start of its record, end of its record)]); raises ValueError on anything else.

    The layout: u32 format version, the spec's name (u16 length, bytes, NUL), u32 revision,
    u32 variable count, then per variable its name, u8 rank, u32 dims, u8 type, u32 byte count and
    the bytes; the aliases follow."""
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return int(value)

    def name() -> str:
        nonlocal pos
        n = take("H")
        text = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return text

    try:
        version = take("I")
        if version not in _MODEL_FORMATS:
            raise ValueError(f"model.bin format version {version} (this version reads {_MODEL_FORMATS})")
        name()
        take("I")
        count_at = pos
        records = []
        for _ in range(take("I")):
            start = pos
            var = name()
            rank = take("B")
            for _ in range(rank):
                take("I")
            take("B")
            size = take("I")
            pos += size
            if pos > len(data):
                raise ValueError(f"model.bin ends inside variable {var!r}")
            records.append((var, start, pos))
    except struct.error:
        raise ValueError("model.bin ends early") from None
    return count_at, records


def truncated_model_files(directory: Path, layers: int) -> dict[str, bytes]:
    """The files of the CTranslate2 Whisper model in ``directory`` with only its first ``layers``
    encoder layers and one decoder layer (never used for decoding: the model only encodes), for
    ``ctranslate2.models.Whisper(..., files=...)``. Raises :class:`ModelError` when the model has
    fewer encoder layers or is not a model this can read."""
    data = (directory / "model.bin").read_bytes()
    try:
        count_at, records = _read_model_bin(data)
    except ValueError as exc:
        raise ModelError(f"cannot run a shallower encoder of {directory}: {exc}") from None

    def layer(var: str, part: str) -> int | None:
        prefix = f"{part}/layer_"
        if not var.startswith(prefix):
            return None
        digits = var[len(prefix):].split("/", 1)[0]
        return int(digits) if digits.isdigit() else None

    have = {n for var, _, _ in records if (n := layer(var, "encoder")) is not None}
    if layers > len(have):
        raise ModelError(f"encoder_layers={layers}, but the speech encoder in {directory} has {len(have)} layers")
    kept = [(s, e) for var, s, e in records
            if not ((n := layer(var, "encoder")) is not None and n >= layers)
            and not ((n := layer(var, "decoder")) is not None and n >= 1)]
    body = b"".join(data[s:e] for s, e in kept)
    files = {"model.bin": data[:count_at] + struct.pack("<I", len(kept)) + body + data[records[-1][2]:]}
    for extra in directory.iterdir():
        if extra.is_file() and extra.name != "model.bin" and extra.suffix in (".json", ".txt"):
            files[extra.name] = extra.read_bytes()
    return files


# -- loading: one model object per directory in a process ---------------------------------------

_models: dict[tuple[str, str, int], tuple[Any, str, str]] = {}
_encoders: dict[tuple[str, str, int, SpeechEncoderConfig], SpeechEncoder] = {}
_load_lock = threading.Lock()


def cpu_threads(setting: int) -> int:
    """CTranslate2's intra-op threads: ``setting`` when positive, else the usable cores (at most 8)."""
    if setting > 0:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _model_sha256(directory: Path) -> str:
    """The SHA-256 of ``model.bin``: read from the prepared directory's record when it has one
    (verified when it was prepared), else computed."""
    from ..asr import whisper_backend

    recorded = whisper_backend.recorded_files(directory).get("model.bin", {}).get("sha256")
    if isinstance(recorded, str) and len(recorded) == 64:
        return recorded
    digest = hashlib.sha256()
    with (directory / "model.bin").open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load(model_dir: str | Path = "", threads: int = 0, config: SpeechEncoderConfig | None = None) -> SpeechEncoder:
    """The process's encoder for ``model_dir`` ('' = the prepared Whisper base), loaded on first use.

    One model object per directory, compute type and depth (``config.encoder_layers``): the first
    caller's ``threads`` (0 = the cores, at most 8) sets how many cores it uses, and later callers
    share it.

    Raises :class:`ModelError` naming what to run or install when the model or CTranslate2 is missing.
    """
    from ..asr import whisper_backend

    config = config or SpeechEncoderConfig()
    directory = Path(model_dir).expanduser() if model_dir else whisper_backend.default_model_dir()
    whisper_backend.check_model_dir(directory, default=not model_dir)
    key = (str(directory.resolve()), config.compute_type, config.encoder_layers)
    with _load_lock:
        encoder = _encoders.get((*key, config))
        if encoder is not None:
            return encoder
        if key not in _models:
            try:
                import ctranslate2
            except ImportError as exc:
                raise ModelError("the speech encoder needs the 'ctranslate2' package: pip install ctranslate2") from exc
            files = truncated_model_files(directory, config.encoder_layers) if config.encoder_layers else None
            try:
                model = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type=config.compute_type,
                                                  intra_threads=cpu_threads(threads), inter_threads=1, files=files)
            except Exception as exc:
                raise ModelError(f"cannot load the Whisper model in {directory} for the speech encoder: {exc}") from exc
            _models[key] = (model, _model_sha256(directory), whisper_backend.model_name(directory))
            log.info("speech encoder %s loaded from %s (%s, %s, %d threads)", _models[key][2], directory,
                     config.compute_type, f"first {config.encoder_layers} layers" if config.encoder_layers
                     else "all layers", cpu_threads(threads))
        model, sha, name = _models[key]
        encoder = SpeechEncoder(model, directory, sha, config, name)
        encoder.embed([np.zeros(SAMPLE_RATE // 2, np.float32)])  # sets d_model; the first call is the slow one
        _encoders[(*key, config)] = encoder
        return encoder
