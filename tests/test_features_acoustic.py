"""Acoustic front end: determinism, robustness, known-answer checks, cache, and a RAVDESS sanity check."""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from realtime_ser.features import AcousticConfig, AcousticFeatures, FeatureCache, default_cache_root

SR = 16000
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REALTIME_SER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def fe() -> AcousticFeatures:
    return AcousticFeatures()


def harmonic(f0: float, seconds: float = 1.5, amp: float = 0.3) -> np.ndarray:
    """Band-limited sawtooth (sum of harmonics 1/k below Nyquist): a voice-like periodic signal."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 30) if k * f0 < SR / 2)
    return amp * x / np.max(np.abs(x))


def naive_sawtooth(f0: float, seconds: float = 1.5, amp: float = 0.3) -> np.ndarray:
    """Aliased sawtooth: its sample-level period is a multiple of 1/f0, a classic octave trap."""
    t = np.arange(int(seconds * SR)) / SR
    return amp * (2 * ((t * f0) % 1.0) - 1)


def feats(fe: AcousticFeatures, x: np.ndarray) -> dict[str, float]:
    return dict(zip(fe.names, fe.extract(x).tolist(), strict=True))


def test_layout(fe: AcousticFeatures) -> None:
    out = fe.extract(harmonic(150))
    assert fe.dim == len(fe.names) == len(set(fe.names)) == out.shape[0]
    assert out.dtype == np.float32 and out.shape == (fe.dim,)
    assert "mfcc3_mean" in fe.names and "f0_st_p80" in fe.names and fe.names[-1] == "duration_s"


def test_deterministic(fe: AcousticFeatures) -> None:
    x = np.random.default_rng(1).standard_normal(SR) * 0.1 + harmonic(180, 1.0)
    a = fe.extract(x)
    assert np.array_equal(a, fe.extract(x.copy()))
    assert np.array_equal(a, AcousticFeatures(AcousticConfig()).extract(x))


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(0),
        np.zeros(5),
        np.zeros(399),
        np.zeros(400),
        np.zeros(SR),
        np.zeros(SR, dtype=np.int16),
        np.full(SR, 1e-9),
        np.clip(harmonic(140) * 20, -1, 1),
        np.full(SR, 32767, dtype=np.int16),
        np.array([np.nan, np.inf, -np.inf, 0.5] * 200),
    ],
    ids=["empty", "5", "399", "400", "silence", "silence-int16", "tiny", "clipped", "dc-full-scale", "nonfinite"],
)
def test_finite_on_degenerate_input(fe: AcousticFeatures, x: np.ndarray) -> None:
    out = fe.extract(x)
    assert out.shape == (fe.dim,) and np.isfinite(out).all()
    assert out[-1] == pytest.approx(len(x) / SR)


def test_shorter_than_a_frame_is_zeros_but_duration(fe: AcousticFeatures) -> None:
    out = fe.extract(harmonic(200, seconds=0.01))
    assert np.all(out[:-1] == 0) and out[-1] == pytest.approx(0.01)


@pytest.mark.parametrize("f0", [120.0, 200.0, 310.0])
@pytest.mark.parametrize("make", [harmonic, naive_sawtooth], ids=["harmonic", "naive-saw"])
def test_f0_of_periodic_signal(fe: AcousticFeatures, f0: float, make) -> None:
    v = feats(fe, make(f0))
    truth = 12 * np.log2(f0 / 27.5)
    assert abs(v["f0_st_mean"] - truth) < 1.0, (v["f0_st_mean"], truth)
    assert v["voiced_fraction"] > 0.9
    assert v["f0_st_std"] < 0.5
    assert 0 <= v["jitter"] < 0.02
    assert v["hnr_db"] > 10


def test_white_noise_is_unvoiced(fe: AcousticFeatures) -> None:
    tonal = feats(fe, harmonic(200))["spectral_flatness_mean"]
    for seed in range(3):
        v = feats(fe, np.random.default_rng(seed).standard_normal(2 * SR) * 0.1)
        assert v["voiced_fraction"] < 0.1
        # Pre-emphasis tilts the noise spectrum, so flatness is ~0.3 rather than the ~0.56 of a flat periodogram.
        assert v["spectral_flatness_mean"] > 0.2 > 5 * tonal


def test_pitch_glide_has_positive_slope(fe: AcousticFeatures) -> None:
    t = np.arange(2 * SR) / SR
    f = 120 * 2 ** (t / 2)  # one octave over 2 s = 6 semitones per second
    phase = 2 * np.pi * np.cumsum(f) / SR
    v = feats(fe, 0.3 * (np.sin(phase) + 0.5 * np.sin(2 * phase)))
    assert v["f0_st_slope"] == pytest.approx(6.0, abs=1.0)
    assert v["f0_st_p80"] > v["f0_st_p20"]


def test_louder_is_louder_by_the_gain(fe: AcousticFeatures) -> None:
    x = harmonic(160, amp=0.1)
    quiet, loud = feats(fe, x), feats(fe, 4 * x)
    assert loud["loudness_db_mean"] - quiet["loudness_db_mean"] == pytest.approx(20 * np.log10(4), abs=0.01)
    # Scale-invariant features do not move.
    assert loud["f0_st_mean"] == pytest.approx(quiet["f0_st_mean"], abs=1e-3)
    assert loud["spectral_centroid_hz_mean"] == pytest.approx(quiet["spectral_centroid_hz_mean"], rel=1e-3)


def test_int16_and_float_agree(fe: AcousticFeatures) -> None:
    pcm = (harmonic(220) * 32767).astype(np.int16)
    a = fe.extract(pcm)
    b = fe.extract(pcm.astype(np.float64) / 32768.0)
    c = fe.extract((pcm.astype(np.float64) / 32768.0).astype(np.float32))
    np.testing.assert_allclose(a, b, rtol=0, atol=0)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


def test_speed(fe: AcousticFeatures) -> None:
    x = harmonic(150, seconds=10.0) + np.random.default_rng(0).standard_normal(10 * SR) * 0.01
    fe.extract(x)
    t0 = time.perf_counter()
    for _ in range(3):
        fe.extract(x)
    ms_per_s = (time.perf_counter() - t0) / 30 * 1000
    print(f"\nacoustic extraction: {ms_per_s:.2f} ms per second of audio (dim {fe.dim})")
    assert ms_per_s < 100


def test_config_key() -> None:
    base = AcousticConfig()
    assert base.key() == AcousticConfig().key() and len(base.key()) == 12
    assert AcousticConfig(n_mfcc=20).key() != base.key()
    assert AcousticConfig(version="2").key() != base.key()


def test_cache_reuses_and_keys_by_settings(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(5, dtype=np.float32)

    key = AcousticConfig().key()
    first = cache.get_or_compute("acoustic", b"clip-bytes", key, compute)
    second = cache.get_or_compute("acoustic", b"clip-bytes", key, compute)
    assert len(calls) == 1 and np.array_equal(first, second) and second.dtype == np.float32
    files = list((tmp_path / "acoustic" / key).glob("*.npy"))
    assert len(files) == 1 and len(files[0].stem) == 64
    assert not list(tmp_path.rglob(".tmp-*"))

    cache.get_or_compute("acoustic", b"clip-bytes", AcousticConfig(n_mels=64).key(), compute)
    cache.get_or_compute("acoustic", "other clip", key, compute)
    assert len(calls) == 3
    assert cache.path("acoustic", "x", "a") != cache.path("acoustic", b"x", "b")
    with pytest.raises(ValueError):
        cache.path("../evil", b"x", key)


def test_cache_recovers_from_a_corrupt_file(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    path = cache.path("acoustic", b"c", "k1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npy")
    out = cache.get_or_compute("acoustic", b"c", "k1", lambda: np.ones(3))
    assert np.array_equal(out, np.ones(3)) and np.array_equal(np.load(path), np.ones(3))


def test_default_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REALTIME_SER_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "features"
    monkeypatch.delenv("REALTIME_SER_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "realtime-ser" / "features"


@pytest.mark.shared_data
def test_ravdess_angry_is_louder_and_higher_than_sad(fe: AcousticFeatures) -> None:
    """Strong-intensity angry vs sad, repetition 01, per actor (20 actors, 80 clips, ~3 s).

    Checked on the data first: angry minus sad loudness p80 is positive for every actor (mean
    about +17 dB over all strong clips), mean F0 is higher for most actors (+4 semitones on
    average). The spectral centroid over all frames is NOT a reliable separator here.
    """
    root = SHARED_DATA / "ravdess"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"needs RAVDESS in {root} (absent here; set REALTIME_SER_SHARED_DATA)")
    sf = pytest.importorskip("soundfile")
    per_actor: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    with open(root / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["emotion"] in ("angry", "sad") and row["intensity"] == "strong" and row["repetition"] == "01":
                pcm, sr = sf.read(root / row["path"], dtype="int16")
                assert sr == SR
                per_actor[row["speaker"]][row["emotion"]].append(feats(fe, pcm))
    assert len(per_actor) >= 10

    def diff(key: str) -> np.ndarray:
        return np.array(
            [
                np.mean([v[key] for v in d["angry"]]) - np.mean([v[key] for v in d["sad"]])
                for d in per_actor.values()
            ]
        )

    loud, f0 = diff("loudness_db_p80"), diff("f0_st_mean")
    print(f"\nangry-sad per actor: loudness p80 {np.round(loud, 1)}; F0 st {np.round(f0, 1)}")
    assert loud.mean() > 6 and (loud > 0).mean() >= 0.85
    assert f0.mean() > 1.0 and (f0 > 0).mean() >= 0.6
