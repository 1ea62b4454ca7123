"""Training-time audio augmentation: noise at a set SNR, tempo, pitch, gain, telephone band.

Every transform is a pure function of ``(samples, parameters, rng)`` built on numpy and soxr
only (no torch, no scipy), so the same clip, seed and config always give the same audio. An
:class:`Augmenter` draws a random chain of them per call; :meth:`Augmenter.disabled` is the
identity used at evaluation, where augmentation must be off.

Audio is mono, float in [-1, 1] (int16 is accepted and scaled by 1/32768); outputs are
float32, finite, the peak kept at or below ``max_peak`` by scaling the whole clip down rather
than clipping it (clipping adds distortion that live audio would not have).

Order of the chain (each step with its own probability): tempo, pitch (properties of the
talker), additive noise (the room), telephone band (the channel), gain (the level at the
microphone). Noise before the channel means telephone copies carry band-limited noise, as a
real call does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import soxr

__all__ = [
    "NOISE_KINDS",
    "AugmentConfig",
    "Augmenter",
    "add_noise",
    "apply_gain",
    "make_noise",
    "pitch_shift",
    "speed",
    "telephone",
    "time_stretch",
]

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "speech", "real")
"""``white``; ``pink`` (1/f power); ``speech``: speech-shaped noise, i.e. noise with the clip's own
long-term spectrum (random phase, as speech-shaped maskers are made in hearing research);
``real``: a slice of one of the noise recordings given to :class:`Augmenter`."""

TEMPO_LIMITS = (0.5, 2.0)
"""Allowed tempo factors (>1 is faster and shorter)."""
PITCH_LIMITS = (-12.0, 12.0)
"""Allowed pitch shifts in semitones."""
SNR_LIMITS = (-20.0, 80.0)
"""Allowed signal-to-noise ratios in dB."""
GAIN_LIMITS = (-40.0, 40.0)
"""Allowed gains in dB."""

TELEPHONE_RATE = 8000
TELEPHONE_BAND = (300.0, 3400.0)
#: Taps of the telephone band-pass at 8 kHz: 32 ms, enough for a transition band of ~90 Hz
#: (Blackman window) so 100 Hz sits well in the stop band while 300 Hz is only ~6 dB down.
_TELEPHONE_TAPS = 257
_MU = 255.0

#: WSOLA frame (ms) and search tolerance (fraction of the hop): 40 ms holds two periods of a
#: 50 Hz voice, and a tolerance of half a hop covers one period of any F0 above 50 Hz.
_WSOLA_FRAME_MS = 40.0
_WSOLA_TOLERANCE = 0.5
_EPS = 1e-12


def _as_float(samples: np.ndarray) -> np.ndarray:
    """1-D float64 copy in [-1, 1]-ish units; int16 scaled by 1/32768. Raises on bad shape or length."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D (mono); got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("samples must hold at least 1 sample; got an empty array")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float64) / 32768.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"samples must be float or integer PCM; got dtype {x.dtype}")
    return np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, int | np.integer) or sample_rate < 8000:
        raise ValueError(f"sample_rate must be an integer >= 8000 Hz; got {sample_rate!r}")


def _check_range(name: str, value: float, limits: tuple[float, float]) -> None:
    if not (np.isfinite(value) and limits[0] <= value <= limits[1]):
        raise ValueError(f"{name} must be within [{limits[0]:g}, {limits[1]:g}]; got {value!r}")


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` cut or zero-padded to exactly ``n`` samples."""
    if len(y) >= n:
        return y[:n]
    return np.concatenate([y, np.zeros(n - len(y), dtype=y.dtype)])


def _limit_peak(y: np.ndarray, max_peak: float) -> np.ndarray:
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    return y * (max_peak / peak) if peak > max_peak else y


def _out(y: np.ndarray, max_peak: float) -> np.ndarray:
    return _limit_peak(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0), max_peak).astype(np.float32)


# --------------------------------------------------------------------------- noise


def make_noise(kind: str, n: int, rng: np.random.Generator, like: np.ndarray | None = None) -> np.ndarray:
    """``n`` samples of unit-power noise of ``kind`` (``white``, ``pink`` or ``speech``).

    ``speech`` needs ``like``: the clip whose long-term magnitude spectrum the noise takes.
    """
    if kind not in NOISE_KINDS or kind == "real":
        raise ValueError(f"noise kind must be one of white, pink, speech; got {kind!r}")
    if n < 1:
        raise ValueError(f"noise length must be >= 1 sample; got {n}")
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0  # DC gets the lowest bin's weight rather than infinity
        noise = np.fft.irfft(spec / np.sqrt(f), n)
    else:
        if like is None:
            raise ValueError("speech-shaped noise needs the clip (like=...) whose spectrum it copies")
        ref = _fit(np.asarray(like, dtype=np.float64), n)
        mag = np.abs(np.fft.rfft(ref))
        phase = rng.uniform(0.0, 2.0 * np.pi, len(mag))
        noise = np.fft.irfft(mag * np.exp(1j * phase), n)
    power = float(np.mean(noise * noise))
    return noise / np.sqrt(power) if power > 0 else noise


def add_noise(
    samples: np.ndarray,
    snr_db: float,
    rng: np.random.Generator,
    kind: str = "white",
    noise: np.ndarray | None = None,
    max_peak: float = 0.99,
) -> np.ndarray:
    """``samples`` plus noise scaled so that signal power / noise power = ``snr_db`` over the clip.

    ``kind``: one of :data:`NOISE_KINDS`; ``real`` needs ``noise`` (any length: a random slice
    is taken, tiled when shorter than the clip). Powers are means over the whole clip. A silent
    clip has no SNR to set and comes back unchanged.
    """
    x = _as_float(samples)
    _check_range("snr_db", snr_db, SNR_LIMITS)
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r}")
    p_signal = float(np.mean(x * x))
    if p_signal <= 0:
        return _out(x, max_peak)
    if kind == "real":
        if noise is None:
            raise ValueError("noise kind 'real' needs a noise array (noise=...)")
        source = _as_float(noise)
        reps = -(-len(x) // len(source)) + 1
        tiled = np.tile(source, reps)
        start = int(rng.integers(0, len(tiled) - len(x) + 1))
        n = tiled[start : start + len(x)]
        p = float(np.mean(n * n))
        if p <= 0:
            raise ValueError("noise kind 'real': the noise array is silent")
        n = n / np.sqrt(p)
    else:
        n = make_noise(kind, len(x), rng, like=x)
    scale = np.sqrt(p_signal / 10 ** (snr_db / 10))
    return _out(x + scale * n, max_peak)


# --------------------------------------------------------------------------- tempo and pitch


def speed(samples: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Speed perturbation (Kaldi-style): resample so the clip plays ``factor`` times faster.

    Duration becomes 1/``factor`` AND pitch rises by ``factor``; use :func:`time_stretch`
    to change tempo alone.
    """
    x = _as_float(samples)
    _check_rate(sample_rate)
    _check_range("speed factor", factor, TEMPO_LIMITS)
    if factor == 1.0:
        return x.astype(np.float32)
    return soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def time_stretch(samples: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Tempo change that keeps pitch (WSOLA); ``factor`` > 1 is faster: length ``round(n / factor)``.

    WSOLA (Verhelst & Roelands 1993): output frames at a fixed hop, each copied from near
    ``factor`` times its output position in the input, shifted within a tolerance to the
    offset whose waveform best continues the previous frame (maximum cross-correlation), so
    periods line up and no phasing is heard. Hann windows at 50% overlap sum to one.
    """
    x = _as_float(samples)
    _check_rate(sample_rate)
    _check_range("tempo factor", factor, TEMPO_LIMITS)
    n_out = max(1, int(round(len(x) / factor)))
    if factor == 1.0:
        return x.astype(np.float32)
    frame = 2 * int(round(sample_rate * _WSOLA_FRAME_MS / 2000))
    hop = frame // 2
    tol = int(round(hop * _WSOLA_TOLERANCE))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame)  # periodic Hann
    # Pad so every read is in range: ``hop`` in front (the first output hop is only half
    # covered by windows and is cut off below), frame + tolerance at both ends.
    front = hop + tol
    n_frames = n_out // hop + 3
    back = int(np.ceil(n_frames * hop * factor)) + frame + 2 * tol
    xp = np.concatenate([np.zeros(front), x, np.zeros(max(0, back - len(x)) + frame)])
    y = np.zeros(n_frames * hop + frame)
    prev = front - hop  # padded-input position of the previous frame
    for k in range(n_frames):
        nominal = front - hop + int(round(k * hop * factor))
        if k == 0:
            pos = nominal
        else:
            template = xp[prev + hop : prev + hop + frame]
            region = xp[nominal - tol : nominal + tol + frame]
            corr = np.correlate(region, template, mode="valid")
            pos = nominal - tol + int(np.argmax(corr)) if np.any(corr) else nominal
        y[k * hop : k * hop + frame] += window * xp[pos : pos + frame]
        prev = pos
    return y[hop : hop + n_out].astype(np.float32)


def pitch_shift(samples: np.ndarray, semitones: float, sample_rate: int) -> np.ndarray:
    """Pitch shift by ``semitones`` keeping duration: WSOLA-stretch by the ratio, then resample.

    The clip is first made ``r = 2**(semitones/12)`` times longer with :func:`time_stretch`
    (pitch kept), then resampled ``r`` times faster (soxr, HQ), which restores the length
    and multiplies every frequency by ``r``. Formants move with the pitch, as in any
    resampling-based shift.
    """
    x = _as_float(samples)
    _check_rate(sample_rate)
    _check_range("pitch shift (semitones)", semitones, PITCH_LIMITS)
    if semitones == 0:
        return x.astype(np.float32)
    ratio = 2.0 ** (semitones / 12.0)
    longer = time_stretch(x, 1.0 / ratio, sample_rate).astype(np.float64)
    shifted = soxr.resample(longer, sample_rate * ratio, sample_rate, quality="HQ")
    return _fit(shifted, len(x)).astype(np.float32)


# --------------------------------------------------------------------------- gain, telephone


def apply_gain(samples: np.ndarray, gain_db: float, max_peak: float = 0.99) -> np.ndarray:
    """``samples`` times ``10**(gain_db/20)``; a peak above ``max_peak`` scales the clip down (no clipping)."""
    x = _as_float(samples)
    _check_range("gain_db", gain_db, GAIN_LIMITS)
    return _out(x * 10 ** (gain_db / 20), max_peak)


def _lowpass(cutoff: float, rate: int, taps: int) -> np.ndarray:
    """Blackman-windowed sinc low-pass, unit gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff / rate * np.sinc(2 * cutoff / rate * n) * np.blackman(taps)
    return h / h.sum()


def _bandpass(low: float, high: float, rate: int, taps: int) -> np.ndarray:
    """Linear-phase FIR band-pass: difference of two low-passes (``low`` and ``high`` are the -6 dB points)."""
    return _lowpass(high, rate, taps) - _lowpass(low, rate, taps)


_TELEPHONE_FIR = _bandpass(*TELEPHONE_BAND, TELEPHONE_RATE, _TELEPHONE_TAPS)


def telephone(samples: np.ndarray, sample_rate: int, mu_law: bool = False, max_peak: float = 0.99) -> np.ndarray:
    """A narrow-band telephone channel: to 8 kHz, band-pass 300-3400 Hz, optional G.711 mu-law, back.

    The band-pass is a 257-tap linear-phase FIR at 8 kHz applied without delay (centred
    convolution); 300 and 3400 Hz are its -6 dB points. ``mu_law`` adds 8-bit mu-law (mu=255)
    quantisation noise, as on a G.711 line. The result has the input's rate and length.
    """
    x = _as_float(samples)
    _check_rate(sample_rate)
    narrow = x if sample_rate == TELEPHONE_RATE else soxr.resample(x, sample_rate, TELEPHONE_RATE, quality="HQ")
    band = np.convolve(narrow, _TELEPHONE_FIR, mode="same")
    if mu_law:
        band = np.clip(band, -1.0, 1.0)
        code = np.round(np.sign(band) * np.log1p(_MU * np.abs(band)) / np.log1p(_MU) * 127.0) / 127.0
        band = np.sign(code) * np.expm1(np.abs(code) * np.log1p(_MU)) / _MU
    wide = band if sample_rate == TELEPHONE_RATE else soxr.resample(band, TELEPHONE_RATE, sample_rate, quality="HQ")
    return _out(_fit(wide, len(x)), max_peak)


# --------------------------------------------------------------------------- the chain


def _pair(name: str, value: Sequence[float], limits: tuple[float, float]) -> None:
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{name} must be a (low, high) pair with low <= high; got {value!r}")
    for v in value:
        _check_range(name, v, limits)


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Which transforms the chain may apply, how often, and over what ranges.

    Each ``*_prob`` is the chance that a call applies that transform; its parameter is then
    drawn uniformly from the ``(low, high)`` range. The defaults are the usual speech
    training recipe: SNR 10-20 dB, tempo 0.9-1.1, pitch +-2 semitones, gain +-6 dB, no
    telephone band (a separate condition: set ``telephone_prob``).
    """

    enabled: bool = True
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (10.0, 20.0)
    noise_kinds: tuple[str, ...] = ("white", "pink")
    """Kinds drawn with equal chance; ``real`` needs noise arrays given to the Augmenter."""
    tempo_prob: float = 0.5
    tempo: tuple[float, float] = (0.9, 1.1)
    pitch_prob: float = 0.5
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    telephone_prob: float = 0.0
    mu_law: bool = False
    """Telephone copies also get 8-bit mu-law quantisation."""
    max_peak: float = 0.99
    """Peak limit of every output (the clip is scaled down, never clipped)."""

    def __post_init__(self) -> None:
        for name in ("noise_prob", "tempo_prob", "pitch_prob", "gain_prob", "telephone_prob"):
            _probability(name, getattr(self, name))
        _pair("snr_db", self.snr_db, SNR_LIMITS)
        _pair("tempo", self.tempo, TEMPO_LIMITS)
        _pair("pitch_semitones", self.pitch_semitones, PITCH_LIMITS)
        _pair("gain_db", self.gain_db, GAIN_LIMITS)
        if not self.noise_kinds or any(k not in NOISE_KINDS for k in self.noise_kinds):
            raise ValueError(f"noise_kinds must be a non-empty subset of {', '.join(NOISE_KINDS)}; "
                             f"got {self.noise_kinds!r}")
        if not 0.0 < self.max_peak <= 1.0:
            raise ValueError(f"max_peak must be in (0, 1]; got {self.max_peak!r}")

    def key(self) -> str:
        """Short stable hash of every field, for caches of augmented features."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


class Augmenter:
    """Applies a random chain of transforms; deterministic given ``seed`` (or a Generator).

    ``noises``: recordings for the ``real`` noise kind (float or int16, at the clip's rate).
    The same seed and the same sequence of calls give the same outputs; to make one clip's
    copies independent of the order clips are visited, seed per clip, e.g.
    ``Augmenter(config, seed=(run_seed, clip_index, copy))``.
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        seed: int | Sequence[int] | np.random.Generator | None = 0,
        noises: Sequence[np.ndarray] = (),
    ) -> None:
        self.config = config or AugmentConfig()
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.noises = [_as_float(n) for n in noises]
        if "real" in self.config.noise_kinds and self.config.noise_prob > 0 and not self.noises:
            raise ValueError("noise_kinds includes 'real' but no noise arrays were given (noises=...)")

    @classmethod
    def disabled(cls) -> Augmenter:
        """The identity (for evaluation): returns the input as float32, untouched."""
        return cls(AugmentConfig(enabled=False))

    def apply(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """A randomly augmented float32 copy of ``samples``; same rate, length changed only by tempo."""
        cfg = self.config
        x = _as_float(samples)
        _check_rate(sample_rate)
        if not cfg.enabled:
            return x.astype(np.float32)
        rng = self.rng
        y: np.ndarray = x
        if rng.random() < cfg.tempo_prob:
            y = time_stretch(y, float(rng.uniform(*cfg.tempo)), sample_rate)
        if rng.random() < cfg.pitch_prob:
            y = pitch_shift(y, float(rng.uniform(*cfg.pitch_semitones)), sample_rate)
        if rng.random() < cfg.noise_prob:
            kind = cfg.noise_kinds[int(rng.integers(len(cfg.noise_kinds)))]
            noise = self.noises[int(rng.integers(len(self.noises)))] if kind == "real" else None
            y = add_noise(y, float(rng.uniform(*cfg.snr_db)), rng, kind, noise, cfg.max_peak)
        if rng.random() < cfg.telephone_prob:
            y = telephone(y, sample_rate, mu_law=cfg.mu_law, max_peak=cfg.max_peak)
        if rng.random() < cfg.gain_prob:
            y = apply_gain(y, float(rng.uniform(*cfg.gain_db)), cfg.max_peak)
        return _out(np.asarray(y, dtype=np.float64), cfg.max_peak)
