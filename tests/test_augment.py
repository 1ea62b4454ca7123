"""Training-time augmentation: each transform measured on synthetic tones and noise."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import (
    AugmentConfig,
    Augmenter,
    add_noise,
    apply_gain,
    make_noise,
    pitch_shift,
    speed,
    telephone,
    time_stretch,
)

SR = 16000


def tone(freq: float, seconds: float = 1.0, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def power_db(y: np.ndarray, edge: int = 1000) -> float:
    """Mean power in dB, leaving out the edges where filters and resamplers ramp."""
    y = np.asarray(y, dtype=np.float64)[edge:-edge]
    return float(10 * np.log10(np.mean(y * y)))


def peak_freq(y: np.ndarray, sr: int = SR) -> float:
    n = 1 << 20
    spectrum = np.abs(np.fft.rfft(np.asarray(y, dtype=np.float64) * np.hanning(len(y)), n))
    return float(np.argmax(spectrum) * sr / n)


def onset(y: np.ndarray, sr: int = SR) -> float:
    """Time (s) where the 10 ms RMS envelope first exceeds half its maximum."""
    frames = np.asarray(y, dtype=np.float64)[: len(y) // 160 * 160].reshape(-1, 160)
    env = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.argmax(env > 0.5 * env.max()) * 160 / sr)


@pytest.mark.parametrize("kind", ["white", "pink", "speech"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_at_the_set_snr(kind: str, snr: float) -> None:
    x = tone(440, amp=0.1)
    y = add_noise(x, snr, np.random.default_rng(1), kind)
    noise = y.astype(np.float64) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(measured - snr) < 0.5


def test_real_noise_is_sliced_tiled_and_scaled() -> None:
    x = tone(440, amp=0.1)
    recording = (np.random.default_rng(2).standard_normal(3000) * 3000).astype(np.int16)  # shorter than x
    y = add_noise(x, 15.0, np.random.default_rng(3), "real", noise=recording)
    noise = y.astype(np.float64) - x
    assert abs(10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2)) - 15.0) < 0.5


def test_pink_noise_falls_3_db_per_octave() -> None:
    n = make_noise("pink", 1 << 18, np.random.default_rng(4))
    spec = np.abs(np.fft.rfft(n)) ** 2
    freqs = np.fft.rfftfreq(len(n), 1 / SR)

    def band(lo: float) -> float:
        return float(spec[(freqs >= lo) & (freqs < 2 * lo)].sum())

    # Equal power per octave: each octave band holds about the same energy.
    assert abs(10 * np.log10(band(2000) / band(250))) < 1.0


def test_noise_on_silence_leaves_it_alone() -> None:
    y = add_noise(np.zeros(1000, np.float32), 10.0, np.random.default_rng(0), "white")
    assert not y.any()


def test_telephone_band() -> None:
    ref = {f: power_db(tone(f)) for f in (100, 1000, 5000)}
    out = {f: power_db(telephone(tone(f), SR)) for f in ref}
    assert ref[100] - out[100] > 20
    assert ref[5000] - out[5000] > 20
    assert abs(ref[1000] - out[1000]) < 3
    assert len(telephone(tone(1000), SR)) == SR


def test_telephone_mu_law_adds_quantisation_noise_but_keeps_the_tone() -> None:
    x = tone(1000)
    clean, coded = telephone(x, SR), telephone(x, SR, mu_law=True)
    err = power_db(coded - clean) - power_db(clean)
    assert -50 < err < -25  # 8-bit mu-law: roughly 35-40 dB SNR
    assert abs(peak_freq(coded) - 1000) < 2


def test_gain_and_peak_protection() -> None:
    x = tone(440, amp=0.1)
    assert abs(power_db(apply_gain(x, -6.0)) - power_db(x) + 6.0) < 0.01
    loud = apply_gain(x, 20.0)  # 0.1 * 10 = 1.0 would touch full scale
    assert np.max(np.abs(loud)) <= 0.99 + 1e-6
    # Scaled, not clipped: still a clean sine (no harmonics from clipping).
    spectrum = np.abs(np.fft.rfft(loud * np.hanning(len(loud))))
    assert spectrum[3 * 440] < 1e-3 * spectrum[440]


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.1, 1.25])
def test_tempo_changes_duration_by_the_factor_and_keeps_pitch(factor: float) -> None:
    x = np.concatenate([np.zeros(SR // 2, np.float32), tone(220, seconds=1.5)])  # onset at 0.5 s
    y = time_stretch(x, factor, SR)
    assert abs(len(y) / len(x) - 1 / factor) < 0.02 / factor
    assert abs(onset(y) - 0.5 / factor) < 0.02 * 0.5 / factor + 0.01  # within 2% (+ one 10 ms frame)
    assert abs(peak_freq(y[SR:]) / 220 - 1) < 0.02


def test_speed_changes_duration_and_pitch_together() -> None:
    y = speed(tone(220, seconds=2.0), 1.1, SR)
    assert abs(len(y) / (2 * SR) - 1 / 1.1) < 0.02
    assert abs(peak_freq(y) / 220 - 1.1) < 0.02


@pytest.mark.parametrize("semitones", [-2.0, -0.5, 1.0, 2.0, 5.0])
def test_pitch_shift_moves_a_tone_by_the_ratio(semitones: float) -> None:
    x = tone(220, seconds=1.5)
    y = pitch_shift(x, semitones, SR)
    assert len(y) == len(x)
    assert abs(peak_freq(y) / 220 / 2 ** (semitones / 12) - 1) < 0.02


def speechlike(seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


ALL_ON = AugmentConfig(noise_prob=1, tempo_prob=1, pitch_prob=1, gain_prob=1, telephone_prob=0.5,
                       noise_kinds=("white", "pink", "speech"), mu_law=True)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    x = speechlike()
    a = [Augmenter(ALL_ON, seed=5).apply(x, SR) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    b = Augmenter(ALL_ON, seed=6).apply(x, SR)
    assert len(a[0]) != len(b) or not np.array_equal(a[0], b)
    run1 = Augmenter(ALL_ON, seed=(1, 2))
    run2 = Augmenter(ALL_ON, seed=(1, 2))
    for _ in range(3):
        assert np.array_equal(run1.apply(x, SR), run2.apply(x, SR))


def test_outputs_are_float32_finite_and_within_the_peak() -> None:
    aug = Augmenter(ALL_ON, seed=0)
    x = speechlike()
    x[100] = np.nan  # bad input samples become 0, not NaN output
    for source in (x, (np.nan_to_num(x) * 32767).astype(np.int16)):
        for _ in range(8):
            y = aug.apply(source, SR)
            assert y.dtype == np.float32 and y.ndim == 1
            assert np.isfinite(y).all() and np.max(np.abs(y)) <= 0.99 + 1e-6
            assert 0.8 * len(x) < len(y) < 1.25 * len(x)


def test_disabled_is_the_identity() -> None:
    x = speechlike()
    y = Augmenter.disabled().apply(x, SR)
    assert y.dtype == np.float32 and np.array_equal(y, x)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: add_noise(tone(440), 10, np.random.default_rng(), "brown"), "white, pink, speech, real"),
        (lambda: add_noise(tone(440), 10, np.random.default_rng(), "real"), "needs a noise array"),
        (lambda: add_noise(tone(440), 200, np.random.default_rng()), r"\[-20, 80\]"),
        (lambda: time_stretch(tone(440), 3.0, SR), r"\[0.5, 2\]"),
        (lambda: pitch_shift(tone(440), 13, SR), r"\[-12, 12\]"),
        (lambda: apply_gain(tone(440), 60), r"\[-40, 40\]"),
        (lambda: telephone(tone(440), 4000), ">= 8000"),
        (lambda: time_stretch(np.zeros((2, 100), np.float32), 1.1, SR), "1-D"),
        (lambda: time_stretch(np.zeros(0, np.float32), 1.1, SR), "at least 1 sample"),
        (lambda: AugmentConfig(noise_prob=1.5), r"probability in \[0, 1\]"),
        (lambda: AugmentConfig(tempo=(1.1, 0.9)), "low <= high"),
        (lambda: AugmentConfig(tempo=(0.1, 1.0)), r"\[0.5, 2\]"),
        (lambda: AugmentConfig(noise_kinds=("babble",)), "white, pink, speech, real"),
        (lambda: Augmenter(AugmentConfig(noise_kinds=("real",))), "no noise arrays"),
    ],
)
def test_bad_arguments_raise_value_error_naming_what_is_allowed(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_config_key_is_stable_and_changes_with_settings() -> None:
    assert AugmentConfig().key() == AugmentConfig().key()
    assert AugmentConfig().key() != AugmentConfig(telephone_prob=0.5).key()


def test_pitch_shift_moves_every_harmonic_of_a_complex_tone() -> None:
    t = np.arange(SR) / SR
    f0 = 150.0
    x = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 11)).astype(np.float32)
    y = pitch_shift(x, 3.0, SR)
    ratio = 2 ** (3 / 12)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    for k in (1, 2, 5):
        band = (freqs > 0.95 * k * f0 * ratio) & (freqs < 1.05 * k * f0 * ratio)
        assert abs(freqs[band][np.argmax(spectrum[band])] / (k * f0 * ratio) - 1) < 0.02
    old = (freqs > 0.98 * f0) & (freqs < 1.02 * f0)  # nothing left at the old fundamental
    assert spectrum[old].max() < 0.05 * spectrum.max()
