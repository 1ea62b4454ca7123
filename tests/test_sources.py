"""Sources: decoding, resampling, channel handling, framing, capture times."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from realtime_ser.config import SourceConfig
from realtime_ser.errors import DeviceError, InputError
from realtime_ser.frames import SAMPLE_RATE
from realtime_ser.sources import ArraySource, FileSource, MicSource, StdinSource, demo_path


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def dominant_freq(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.argmax(spec) * SAMPLE_RATE / len(x))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_file_any_rate_becomes_16k_frames_with_pitch_kept(tmp_path: Path, rate: int) -> None:
    p = tmp_path / f"t{rate}.wav"
    sf.write(p, tone(440, 1.0, rate), rate, subtype="PCM_16")
    src = FileSource(p, SourceConfig(frame_ms=20))
    frames = list(src)
    assert src.sample_rate == rate
    assert all(len(f.samples) == 320 and f.samples.dtype == np.int16 for f in frames)
    assert [f.offset for f in frames] == [i * 320 for i in range(len(frames))]
    audio = np.concatenate([f.samples for f in frames])
    assert abs(len(audio) - SAMPLE_RATE) <= 320
    assert dominant_freq(audio[1000:15000]) == pytest.approx(440, abs=3)
    caps = [f.capture_ns for f in frames]
    assert caps == sorted(caps) and caps[0] > 0


def test_stereo_mixdown_or_split(tmp_path: Path) -> None:
    p = tmp_path / "st.flac"
    sf.write(p, np.stack([tone(300, 0.5, 44100), tone(1000, 0.5, 44100)], axis=1), 44100)
    mixed = list(FileSource(p, SourceConfig()))
    assert {f.channel for f in mixed} == {0}
    split = list(FileSource(p, SourceConfig(split_channels=True)))
    assert {f.channel for f in split} == {0, 1}
    # Interleaved in time order across channels.
    assert [f.offset for f in split] == sorted(f.offset for f in split)
    ch0 = np.concatenate([f.samples for f in split if f.channel == 0])
    ch1 = np.concatenate([f.samples for f in split if f.channel == 1])
    assert dominant_freq(ch0) == pytest.approx(300, abs=5)
    assert dominant_freq(ch1) == pytest.approx(1000, abs=5)


def test_realtime_pacing_takes_the_audio_duration(tmp_path: Path) -> None:
    src = ArraySource(np.zeros(int(0.6 * SAMPLE_RATE), dtype=np.int16), SAMPLE_RATE, SourceConfig(realtime=True))
    t0 = time.monotonic()
    frames = list(src)
    assert time.monotonic() - t0 == pytest.approx(0.6, abs=0.1)
    # A frame is stamped no earlier than the moment its last sample would have been captured.
    first = frames[0].capture_ns
    for f in frames:
        assert (f.capture_ns - first) / 1e9 >= f.end - frames[0].end - 0.005


def test_close_ends_a_paced_source_quickly() -> None:
    src = ArraySource(np.zeros(10 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE, SourceConfig(realtime=True))
    it = iter(src)
    next(it)
    src.close()
    t0 = time.monotonic()
    rest = list(it)
    assert time.monotonic() - t0 < 0.2 and len(rest) < 10


def test_stdin_raw_pcm_at_8k_stereo() -> None:
    x = (tone(500, 0.5, 8000) * 32767).astype("<i2")
    raw = np.stack([x, x // 2], axis=1).tobytes() + b"\x01"  # a dangling byte is ignored
    src = StdinSource(io.BytesIO(raw), SourceConfig(split_channels=True), rate=8000, channels=2)
    frames = list(src)
    assert {f.channel for f in frames} == {0, 1}
    ch0 = np.concatenate([f.samples for f in frames if f.channel == 0])
    assert dominant_freq(ch0) == pytest.approx(500, abs=5)


def test_stdin_rejects_an_unsupported_rate() -> None:
    with pytest.raises(InputError, match="unsupported raw input rate 12345 Hz; use one of 8000"):
        StdinSource(io.BytesIO(b""), SourceConfig(), rate=12345)


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "not found"), (b"", "is empty"), (b"hello, this is text not audio\n" * 20, "not a readable audio file")],
)
def test_bad_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.wav"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        FileSource(p, SourceConfig())


def test_wav_with_no_samples(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0), 16000)
    with pytest.raises(InputError, match="no audio samples"):
        FileSource(p, SourceConfig())


def test_no_microphone_says_what_was_found_and_suggests_a_file() -> None:
    # These machines have no audio devices: the error lists what PortAudio saw.
    try:
        MicSource(SourceConfig())
    except DeviceError as exc:
        assert "--input FILE" in str(exc)
    else:  # pragma: no cover - a machine with a microphone
        pytest.skip("this machine has an audio input device")


def test_demo_recording_is_shipped() -> None:
    info = sf.info(str(demo_path()))
    assert info.channels == 2 and info.duration > 20
