"""Utterance-level acoustic functionals (prosody, voice quality, spectrum) in pure numpy.

The same code serves training and live inference, so it is deterministic (no randomness, no
threads, no data-dependent library paths) and vectorised: the signal is framed once with
stride tricks and every per-frame quantity is computed for all frames in one numpy call.
numpy is the only dependency because scipy/librosa/torch are not runtime dependencies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["AcousticConfig", "AcousticFeatures"]

_EPS = 1e-10
#: RMS floor (-100 dBFS) so digital silence gives a finite loudness rather than -inf.
_RMS_FLOOR = 1e-5
#: A frame must be within this many dB of the loudest frame (and above -70 dBFS) to count as voiced:
#: stops low-level room noise between words from producing spurious pitch.
_VOICING_GATE_DB = 45.0
_VOICING_ABS_RMS = 10 ** (-70 / 20)
#: Per-octave penalty on long lags (as in Praat's octave cost): a perfectly periodic signal has
#: equal autocorrelation at every multiple of its period, and this picks the true (shortest) one.
_OCTAVE_COST = 0.02
#: A candidate lag within this fraction of the best score counts as the period if it is shorter.
_PEAK_RATIO = 0.9
#: Cap on r for HNR so a pure periodic signal gives a finite value (30 dB) instead of inf.
_R_MAX = 0.999


@dataclass(frozen=True)
class AcousticConfig:
    """Settings of the acoustic front end; ``key()`` identifies them in caches and model cards.

    Bump ``version`` whenever the feature code changes meaning, so caches keyed on ``key()``
    are not silently reused with different features.
    """

    sample_rate: int = 16000
    frame_ms: float = 25
    hop_ms: float = 10
    n_mels: int = 40
    n_mfcc: int = 13
    fmin_f0: float = 60
    fmax_f0: float = 500
    voicing_threshold: float = 0.45
    pre_emphasis: float = 0.97
    version: str = "1"

    def key(self) -> str:
        """Short stable hash of every field (sorted JSON, so independent of field order)."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _frames(x: np.ndarray, length: int, hop: int, n: int) -> np.ndarray:
    """``n`` frames of ``length`` samples every ``hop`` samples, as a read-only strided view (no copy)."""
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, length), strides=(x.strides[0] * hop, x.strides[0]), writeable=False
    )


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _mel_filterbank(n_mels: int, n_fft: int, sr: int) -> np.ndarray:
    """HTK-style triangular filters, shape (n_fft//2+1, n_mels), spanning 0 Hz to Nyquist."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).T


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis, shape (n_in, n_out): ``logmel @ D`` gives MFCCs."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    d = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    d[:, 0] /= np.sqrt(2.0)
    return d


def _deltas(c: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over +-``width`` frames (edge-padded), the usual HTK formula."""
    padded = np.pad(c, ((width, width), (0, 0)), mode="edge")
    t = len(c)
    num = sum(k * (padded[width + k : width + k + t] - padded[width - k : width - k + t]) for k in range(1, width + 1))
    return num / (2.0 * sum(k * k for k in range(1, width + 1)))


def _slope(values: np.ndarray, times: np.ndarray) -> float:
    """Least-squares slope (units per second); 0 when fewer than two points make it undefined."""
    if len(values) < 2:
        return 0.0
    tc = times - times.mean()
    denom = float(tc @ tc)
    return float(tc @ (values - values.mean()) / denom) if denom > 0 else 0.0


def _functionals(values: np.ndarray, times: np.ndarray) -> list[float]:
    """mean, std, 20th and 80th percentile, slope; all zeros for an empty series (never NaN)."""
    if len(values) == 0:
        return [0.0] * 5
    p20, p80 = np.percentile(values, [20, 80])
    return [float(values.mean()), float(values.std()), float(p20), float(p80), _slope(values, times)]


class AcousticFeatures:
    """Fixed-length acoustic description of one utterance (see ``names`` for the layout).

    Features: MFCC (DCT-II of log-Mel, Hann window, pre-emphasis) and their deltas (mean, std);
    loudness = frame RMS in dB (mean, std, p20, p80, slope/s); F0 in semitones re 27.5 Hz from
    window-corrected normalised autocorrelation on voiced frames (same functionals) and the voiced
    fraction; jitter, shimmer (dB) and HNR (dB) over voiced frames; spectral centroid, flatness,
    85% roll-off and zero-crossing rate (mean, std); duration in seconds.
    """

    def __init__(self, config: AcousticConfig | None = None) -> None:
        self.config = config = config or AcousticConfig()
        sr = config.sample_rate
        self.frame_len = int(round(sr * config.frame_ms / 1000))
        self.hop = int(round(sr * config.hop_ms / 1000))
        self.n_fft = 1 << max(0, (self.frame_len - 1).bit_length())
        self._window = np.hanning(self.frame_len + 2)[1:-1]  # strictly positive Hann (periodic-like)
        self._melfb = _mel_filterbank(config.n_mels, self.n_fft, sr)
        self._dct = _dct_matrix(config.n_mels, config.n_mfcc)
        self._freqs = np.arange(self.n_fft // 2 + 1) * sr / self.n_fft
        # Pitch: 3 periods of the lowest F0 per window (as Praat does), so the longest lag is
        # still well inside the window; the autocorrelation is divided by the window's own.
        self.lag_min = max(1, int(np.floor(sr / config.fmax_f0)))
        self.lag_max = int(np.ceil(sr / config.fmin_f0))
        self.pitch_len = max(self.frame_len, 3 * self.lag_max)
        self._pitch_window = np.hanning(self.pitch_len + 2)[1:-1]
        self.pitch_fft = 1 << (self.pitch_len + self.lag_max + 1).bit_length()
        wac = np.fft.irfft(np.abs(np.fft.rfft(self._pitch_window, self.pitch_fft)) ** 2, self.pitch_fft)
        self._lags = np.arange(self.lag_min, self.lag_max + 1)
        self._win_ac = wac[: self.lag_max + 2] / wac[0]
        self._octave_penalty = _OCTAVE_COST * np.log2(self._lags * config.fmin_f0 / sr)
        self.names = self._make_names()
        self.dim = len(self.names)

    def _make_names(self) -> list[str]:
        n = self.config.n_mfcc
        names: list[str] = []
        for group in ("mfcc", "dmfcc"):
            for stat in ("mean", "std"):
                names += [f"{group}{i}_{stat}" for i in range(n)]
        for group in ("loudness_db", "f0_st"):
            names += [f"{group}_{s}" for s in ("mean", "std", "p20", "p80", "slope")]
        names += ["voiced_fraction", "jitter", "shimmer_db", "hnr_db"]
        for group in ("spectral_centroid_hz", "spectral_flatness", "spectral_rolloff85_hz", "zcr"):
            names += [f"{group}_mean", f"{group}_std"]
        names.append("duration_s")
        return names

    def _to_float(self, samples: np.ndarray) -> np.ndarray:
        """int16 -> [-1, 1) exactly as ``x / 32768``; floats are clipped and NaN-cleaned."""
        x = np.asarray(samples)
        if x.ndim != 1:
            x = x.reshape(-1)
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(np.float64) / 32768.0
        x = x.astype(np.float64)
        return np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)

    def extract(self, samples: np.ndarray) -> np.ndarray:
        """Feature vector (float32, shape ``(dim,)``) of one utterance at ``config.sample_rate``.

        Audio shorter than one frame gives zeros except the duration: there is nothing to
        measure, and a defined vector is better for a live runtime than an exception.
        """
        cfg = self.config
        x = self._to_float(samples)
        out = np.zeros(self.dim, dtype=np.float64)
        out[-1] = len(x) / cfg.sample_rate
        n_frames = 0 if len(x) < self.frame_len else 1 + (len(x) - self.frame_len) // self.hop
        if n_frames == 0:
            return out.astype(np.float32)
        times = (np.arange(n_frames) * self.hop + self.frame_len / 2) / cfg.sample_rate
        values: list[np.ndarray | list[float]] = []

        # --- spectrum, MFCC ---------------------------------------------------------------
        emph = np.empty_like(x)
        emph[0] = x[0]
        emph[1:] = x[1:] - cfg.pre_emphasis * x[:-1]
        frames = _frames(emph, self.frame_len, self.hop, n_frames)
        frames = (frames - frames.mean(axis=1, keepdims=True)) * self._window
        power = np.abs(np.fft.rfft(frames, self.n_fft, axis=1)) ** 2
        mfcc = np.log(power @ self._melfb + _EPS) @ self._dct
        d = _deltas(mfcc)
        values += [mfcc.mean(0), mfcc.std(0), d.mean(0), d.std(0)]

        # --- loudness ------------------------------------------------------------------------
        raw = _frames(x, self.frame_len, self.hop, n_frames)
        rms = np.sqrt(np.mean(raw * raw, axis=1))
        loud = 20.0 * np.log10(np.maximum(rms, _RMS_FLOOR))
        values.append(_functionals(loud, times))

        # --- F0, voicing, voice quality -----------------------------------------------------
        f0, r_best, voiced, peaks = self._pitch(x, n_frames, rms)
        st = 12.0 * np.log2(f0[voiced] / 27.5)
        values.append(_functionals(st, times[voiced]))
        values.append([float(voiced.mean()), *self._voice_quality(f0, r_best, voiced, peaks)])

        # --- spectral shape, ZCR -------------------------------------------------------------
        total = power.sum(axis=1) + _EPS
        centroid = (power @ self._freqs) / total
        flatness = np.exp(np.mean(np.log(power + _EPS), axis=1)) / (power.mean(axis=1) + _EPS)
        cum = np.cumsum(power, axis=1)
        rolloff = self._freqs[np.argmax(cum >= 0.85 * cum[:, -1:], axis=1)]
        signs = np.signbit(raw)
        zcr = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
        for v in (centroid, flatness, rolloff, zcr):
            values.append([float(v.mean()), float(v.std())])

        flat = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
        out[: len(flat)] = flat
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def _pitch(
        self, x: np.ndarray, n_frames: int, rms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame F0 (Hz), autocorrelation peak r, voiced mask and peak amplitude.

        Pitch frames start where the spectral frames start but are longer (3 periods of fmin),
        so the tail is zero-padded and both frame sets have the same count and timing.
        """
        padded = np.concatenate([x, np.zeros(self.pitch_len)])
        frames = _frames(padded, self.pitch_len, self.hop, n_frames)
        peaks = np.max(np.abs(frames[:, : self.frame_len]), axis=1)
        centred = (frames - frames.mean(axis=1, keepdims=True)) * self._pitch_window
        spec = np.fft.rfft(centred, self.pitch_fft, axis=1)
        ac = np.fft.irfft(spec.real**2 + spec.imag**2, self.pitch_fft, axis=1)[:, : self.lag_max + 2]
        energy = ac[:, :1]
        r = ac / np.where(energy > _EPS, energy, 1.0) / self._win_ac
        cand = r[:, self.lag_min : self.lag_max + 1]
        # Candidates are local maxima of r; the shortest lag whose (octave-penalised) score is
        # within _PEAK_RATIO of the best wins. A periodic signal scores ~1 at every multiple of
        # its period, and sample-level quantisation can make a multiple score slightly higher.
        left = r[:, self.lag_min - 1 : self.lag_max]
        right = r[:, self.lag_min + 1 : self.lag_max + 2]
        score = cand - self._octave_penalty
        top = score.max(axis=1, keepdims=True)
        ok = (cand >= left) & (cand > right) & (score >= _PEAK_RATIO * top) & (top > 0)
        best = np.where(ok.any(axis=1), np.argmax(ok, axis=1), np.argmax(score, axis=1))
        lag = self._lags[best]
        # Parabolic interpolation around the chosen lag for sub-sample period resolution.
        rows = np.arange(n_frames)
        a, b, c = r[rows, lag - 1], r[rows, lag], r[rows, lag + 1]
        den = a - 2 * b + c
        shift = np.where(np.abs(den) > _EPS, 0.5 * (a - c) / np.where(np.abs(den) > _EPS, den, 1.0), 0.0)
        shift = np.clip(shift, -0.5, 0.5)
        period = lag + shift
        f0 = self.config.sample_rate / period
        r_best = np.clip(b, 0.0, 1.0)
        loud_enough = (rms > _VOICING_ABS_RMS) & (rms >= rms.max() * 10 ** (-_VOICING_GATE_DB / 20))
        voiced = (
            (r_best >= self.config.voicing_threshold)
            & loud_enough
            & (energy[:, 0] > _EPS)
            & (f0 >= self.config.fmin_f0)
            & (f0 <= self.config.fmax_f0)
        )
        return f0, r_best, voiced, peaks

    @staticmethod
    def _voice_quality(f0: np.ndarray, r: np.ndarray, voiced: np.ndarray, peaks: np.ndarray) -> list[float]:
        """Frame-level jitter, shimmer (dB) and HNR (dB); 0 where there is nothing voiced.

        Jitter and shimmer use pairs of consecutive frames that are both voiced (i.e. within a
        voiced run), so jumps across unvoiced gaps are not counted as perturbation.
        """
        if not voiced.any():
            return [0.0, 0.0, 0.0]
        pair = voiced[1:] & voiced[:-1]
        period = 1.0 / f0
        in_run = np.zeros_like(voiced)
        in_run[1:] |= pair
        in_run[:-1] |= pair
        if pair.any():
            jitter = float(np.mean(np.abs(np.diff(period))[pair]) / np.mean(period[in_run]))
            amp_db = 20.0 * np.log10(np.maximum(peaks, _RMS_FLOOR))
            shimmer = float(np.mean(np.abs(np.diff(amp_db))[pair]))
        else:
            jitter = shimmer = 0.0
        rv = np.clip(r[voiced], 1e-3, _R_MAX)
        hnr = float(np.mean(10.0 * np.log10(rv / (1.0 - rv))))
        return [jitter, shimmer, hnr]
