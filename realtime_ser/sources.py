"""Audio sources: files, raw PCM16 on stdin, the microphone.

Each source is an iterator of :class:`~realtime_ser.frames.AudioFrame`: 16 kHz
mono int16 frames of a fixed length, one channel at a time, stamped with
``time.monotonic_ns()`` when the source obtained them. Multi-channel input is
either mixed down to one channel (0) or, with ``split_channels``, handed out
as one stream per channel (speakers ``ch0``, ``ch1``, ...), frames of all
channels interleaved in time order.

Sources run on the pipeline's source thread; :meth:`Source.close` may be
called from another thread to make the iteration end soon.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .config import ALLOWED_INPUT_RATES, SourceConfig
from .errors import DeviceError, InputError
from .frames import SAMPLE_RATE, AudioFrame

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis, AIFF, AU and other formats libsndfile reads"


class _Framer:
    """Resamples blocks of one channel to 16 kHz and cuts them into frames."""

    def __init__(self, in_rate: float, frame_len: int) -> None:
        self._resampler = None
        if in_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._frame_len = frame_len
        self._buf = np.zeros(0, dtype=np.int16)
        self.offset = 0

    def push(self, block: np.ndarray, last: bool = False) -> list[tuple[int, np.ndarray]]:
        """Add float32 samples in [-1, 1]; return (offset, int16 frame) pairs now complete.

        With ``last``, the remainder is zero-padded to a whole frame.
        """
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block.astype(np.float32, copy=False), last=last)
        pcm = np.clip(np.round(block * 32768.0), -32768, 32767).astype(np.int16)
        buf = np.concatenate([self._buf, pcm]) if len(self._buf) else pcm
        out = []
        n = len(buf) // self._frame_len
        for i in range(n):
            out.append((self.offset, buf[i * self._frame_len : (i + 1) * self._frame_len]))
            self.offset += self._frame_len
        self._buf = buf[n * self._frame_len :]
        if last and len(self._buf):
            pad = np.zeros(self._frame_len, dtype=np.int16)
            pad[: len(self._buf)] = self._buf
            out.append((self.offset, pad))
            self.offset += self._frame_len
            self._buf = np.zeros(0, dtype=np.int16)
        return out


class Source:
    """Base class: an iterator of frames plus a description."""

    name = "source"
    live = False
    """Live sources drop audio when the pipeline falls behind; others wait."""
    stored = False
    """Audio already stored (a file, an array): unless ``source.realtime`` paces it, its frames come as
    fast as they are read, and nothing waits for the VAD's hangover in wall time."""

    @property
    def unpaced(self) -> bool:
        """Frames come faster than the speed of speech (stored audio, not paced)."""
        return self.stored and not (self.config.realtime or self.live)

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.frame_len = SAMPLE_RATE * config.frame_ms // 1000
        self.sample_rate = SAMPLE_RATE
        self.channels = 1
        self.dropped_frames = 0
        self._closed = threading.Event()

    @property
    def out_channels(self) -> int:
        """Number of channels (speakers) the frames come in."""
        return self.channels if self.config.split_channels else 1

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[AudioFrame]:
        raise NotImplementedError

    def _frames_from_blocks(self, blocks: Iterator[np.ndarray], pace: bool,
                            stamps: Iterator[int] | None = None) -> Iterator[AudioFrame]:
        """Turn float32 blocks of shape (n, channels) into frames, paced if asked.

        Capture times: a paced replay stamps each frame with the moment its last
        sample would have been captured live (the schedule, not the moment this
        thread got to run: a recognizer holding the GIL must not make audio look
        newer than it is). A live source passes ``stamps``, the capture time of
        each block, and a frame gets the stamp of the block that completed it.
        Otherwise frames are stamped when read.
        """
        outs = self.out_channels
        framers = [_Framer(self.sample_rate, self.frame_len) for _ in range(outs)]
        seq = 0
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        block_stamp = 0
        pending: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(outs)]

        def drain(last: bool, block: np.ndarray | None) -> Iterator[AudioFrame]:
            nonlocal seq
            for ch in range(outs):
                if block is None:
                    data = np.zeros(0, dtype=np.float32)
                elif outs == 1:
                    data = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                else:
                    data = block[:, ch]
                pending[ch].extend(framers[ch].push(data, last=last))
            # Hand out frames in time order across channels.
            n = min(len(p) for p in pending) if not last else max(len(p) for p in pending)
            for i in range(n):
                for ch in range(outs):
                    if i >= len(pending[ch]):
                        continue
                    offset, samples = pending[ch][i]
                    if pace:
                        due = t0 + (offset + len(samples)) / SAMPLE_RATE
                        delay = due - time.monotonic()
                        if delay > 0 and self._closed.wait(delay):
                            return
                        capture = t0_ns + (offset + len(samples)) * 1_000_000_000 // SAMPLE_RATE
                    elif stamps is not None:
                        capture = block_stamp
                    else:
                        capture = time.monotonic_ns()
                    if self._closed.is_set():
                        return
                    yield AudioFrame(seq, ch, offset, samples, capture)
                    seq += 1
            for ch in range(outs):
                del pending[ch][:n]

        for block in blocks:
            if self._closed.is_set():
                return
            if stamps is not None:
                block_stamp = next(stamps)
            yield from drain(False, block)
        if not self._closed.is_set():
            yield from drain(True, None)


class FileSource(Source):
    """An audio file decoded by libsndfile, any rate and channel count."""

    stored = True

    def __init__(self, path: str | Path, config: SourceConfig) -> None:
        super().__init__(config)
        import soundfile as sf

        self.path = Path(path)
        self.name = str(path)
        if not self.path.exists():
            raise InputError(f"input file not found: {self.path}")
        if self.path.is_dir():
            raise InputError(f"input is a directory, not an audio file: {self.path}")
        try:
            info = sf.info(str(self.path))
        except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError
            size = self.path.stat().st_size
            what = "is empty" if size == 0 else "is not a readable audio file"
            raise InputError(
                f"{self.path} {what} ({_short(exc)}); supported: {SUPPORTED_FORMATS}"
            ) from None
        if info.frames == 0:
            raise InputError(f"{self.path} contains no audio samples")
        if info.channels > 2 and config.split_channels:
            log.info("%s has %d channels; each becomes a speaker", self.path, info.channels)
        self.sample_rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.duration = info.frames / info.samplerate
        self._sf = sf

    def __iter__(self) -> Iterator[AudioFrame]:
        block = max(1, self.sample_rate // 10)  # 100 ms blocks

        def blocks() -> Iterator[np.ndarray]:
            try:
                with self._sf.SoundFile(str(self.path)) as f:
                    while True:
                        data = f.read(block, dtype="float32", always_2d=True)
                        if len(data) == 0:
                            return
                        yield data
            except Exception as exc:
                raise InputError(f"failed to decode {self.path}: {_short(exc)}") from None

        yield from self._frames_from_blocks(blocks(), pace=self.config.realtime)


class ArraySource(Source):
    """Audio already in memory (tests, benchmarks): shape (n,) or (n, channels).

    int16 or float in [-1, 1], any sample rate. ``live=True`` makes it behave
    like a live source (paced, drops instead of waiting), for overload tests.
    """

    stored = True

    def __init__(self, samples: np.ndarray, sample_rate: int, config: SourceConfig,
                 name: str = "array", live: bool = False) -> None:
        super().__init__(config)
        data = np.asarray(samples)
        if data.ndim == 1:
            data = data[:, None]
        if data.dtype == np.int16:
            data = data.astype(np.float32) / 32768.0
        self._data = data.astype(np.float32, copy=False)
        self.sample_rate = int(sample_rate)
        self.channels = int(data.shape[1])
        self.name = name
        self.live = live

    def __iter__(self) -> Iterator[AudioFrame]:
        step = max(1, self.sample_rate // 10)
        blocks = (self._data[i : i + step] for i in range(0, len(self._data), step))
        yield from self._frames_from_blocks(blocks, pace=self.config.realtime or self.live)


class PushSource(Source):
    """PCM16 pushed in by another thread (the server's event loop).

    :meth:`try_push` never blocks: it returns False while the bounded buffer
    (``max_seconds`` of audio) is full, and the caller decides how to wait. Each
    chunk is stamped with its arrival time, which becomes the capture time of
    the frames it completes. :meth:`end` marks the end of the stream; what was
    pushed before it is still processed.
    """

    def __init__(self, config: SourceConfig, sample_rate: int, channels: int, max_seconds: float,
                 name: str = "websocket") -> None:
        super().__init__(config)
        if channels not in (1, 2):
            raise InputError(f"unsupported channel count {channels}; use 1 or 2")
        self.name = name
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self._bytes_per_sample = 2 * self.channels
        self._capacity = int(max_seconds * self.sample_rate) * self._bytes_per_sample
        self._chunks: collections.deque[tuple[int, bytes]] = collections.deque()
        self._buffered = 0
        self._ended = False
        self._cond = threading.Condition()

    @property
    def buffered_seconds(self) -> float:
        return self._buffered / self._bytes_per_sample / self.sample_rate

    def try_push(self, data: bytes) -> bool:
        """Queue ``data`` (a whole number of samples) unless the buffer is full."""
        if len(data) % self._bytes_per_sample:
            raise InputError(f"audio message of {len(data)} bytes is not a whole number of "
                             f"{self.channels}-channel PCM16 samples ({self._bytes_per_sample} bytes each)")
        with self._cond:
            if self._ended:
                raise InputError("audio after the end of the stream")  # callers check .ended first
            if self._buffered and self._buffered + len(data) > self._capacity:
                return False
            self._chunks.append((time.monotonic_ns(), data))
            self._buffered += len(data)
            self._cond.notify()
        return True

    @property
    def ended(self) -> bool:
        """True once :meth:`end` (or :meth:`close`) was called: no more audio is taken."""
        return self._ended

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    def close(self) -> None:
        super().close()
        self.end()

    def __iter__(self) -> Iterator[AudioFrame]:
        stamp_list: list[int] = []

        def blocks() -> Iterator[np.ndarray]:
            while True:
                with self._cond:
                    while not self._chunks and not self._ended:
                        self._cond.wait(0.1)
                    if not self._chunks:
                        return
                    stamp, data = self._chunks.popleft()
                    self._buffered -= len(data)
                pcm = np.frombuffer(data, dtype="<i2").reshape(-1, self.channels)
                stamp_list.append(stamp)
                yield pcm.astype(np.float32) / 32768.0

        def stamps() -> Iterator[int]:
            while True:
                yield stamp_list.pop(0) if stamp_list else time.monotonic_ns()

        yield from self._frames_from_blocks(blocks(), pace=False, stamps=stamps())


class StdinSource(Source):
    """Raw little-endian PCM16 on a binary stream (stdin), interleaved channels."""

    def __init__(self, stream: BinaryIO, config: SourceConfig, rate: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__(config)
        self.name = "stdin"
        rate = config.stdin_rate if rate is None else rate
        channels = config.stdin_channels if channels is None else channels
        if rate not in ALLOWED_INPUT_RATES:
            raise InputError(
                f"unsupported raw input rate {rate} Hz; use one of {', '.join(map(str, ALLOWED_INPUT_RATES))}"
            )
        if channels not in (1, 2):
            raise InputError(f"unsupported raw input channel count {channels}; use 1 or 2")
        self.sample_rate = rate
        self.channels = channels
        self._stream = stream

    def __iter__(self) -> Iterator[AudioFrame]:
        bytes_per_block = 2 * self.channels * max(1, self.sample_rate // 50)  # 20 ms reads

        def blocks() -> Iterator[np.ndarray]:
            carry = b""
            while not self._closed.is_set():
                chunk = self._stream.read(bytes_per_block)
                if not chunk:
                    break
                data = carry + chunk
                usable = len(data) - len(data) % (2 * self.channels)
                carry = data[usable:]
                if usable:
                    pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, self.channels)
                    yield pcm.astype(np.float32) / 32768.0
            if carry:
                log.warning("stdin ended with %d bytes that do not make a whole sample; ignored", len(carry))

        yield from self._frames_from_blocks(blocks(), pace=False)


class MicSource(Source):
    """The microphone, through sounddevice (PortAudio)."""

    live = True

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self.name = "mic"
        self._sd = _import_sounddevice()
        device = _parse_device(config.mic_device)
        inputs = list_input_devices(self._sd)
        if not inputs:
            raise DeviceError(_no_device_message(self._sd))
        try:
            info = self._sd.query_devices(device, kind="input")
        except Exception as exc:
            names = "; ".join(f"[{i}] {n}" for i, n, _ in inputs)
            raise DeviceError(f"input device {config.mic_device or 'default'} not usable ({_short(exc)}); "
                              f"input devices found: {names}") from None
        self.device = device
        self.device_name = str(info["name"])
        self.sample_rate = int(info["default_samplerate"]) or SAMPLE_RATE
        self.channels = 2 if config.split_channels and int(info["max_input_channels"]) >= 2 else 1
        # Blocks wait here between the audio callback and the source thread; when the
        # pipeline falls this far behind, blocks are dropped and counted.
        self._blocks: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(maxsize=200)

    def _callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        try:
            self._blocks.put_nowait((time.monotonic_ns(), indata.copy()))
        except queue.Full:
            self.dropped_frames += max(1, frames // max(1, self.sample_rate * self.config.frame_ms // 1000))

    def __iter__(self) -> Iterator[AudioFrame]:
        stamp_list: list[int] = []

        def blocks() -> Iterator[np.ndarray]:
            try:
                stream = self._sd.InputStream(
                    device=self.device, channels=self.channels, samplerate=self.sample_rate,
                    dtype="float32", blocksize=self.sample_rate // 50, callback=self._callback,
                )
            except Exception as exc:
                raise DeviceError(f"cannot open input device {self.device_name!r}: {_short(exc)}") from None
            log.info("listening on %s at %d Hz", self.device_name, self.sample_rate)
            with stream:
                while not self._closed.is_set():
                    try:
                        stamp, block = self._blocks.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    stamp_list.append(stamp)
                    yield block

        def stamps() -> Iterator[int]:
            while True:
                yield stamp_list.pop(0) if stamp_list else time.monotonic_ns()

        yield from self._frames_from_blocks(blocks(), pace=False, stamps=stamps())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _import_sounddevice():  # type: ignore[no-untyped-def]
    try:
        import sounddevice
    except OSError as exc:  # PortAudio library missing
        raise DeviceError(
            f"no audio input available: the PortAudio library is not installed ({_short(exc)}); "
            "install it (Debian/Ubuntu: apt-get install libportaudio2) or use --input FILE"
        ) from None
    except ImportError as exc:
        raise DeviceError(f"no audio input available: {_short(exc)}; use --input FILE") from None
    return sounddevice


def _parse_device(value: str) -> int | str | None:
    if not value:
        return None
    return int(value) if value.isdigit() else value


def list_input_devices(sd=None) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
    """(index, name, input channels) of every input device PortAudio sees."""
    sd = sd or _import_sounddevice()
    try:
        devices = sd.query_devices()
    except Exception:
        return []
    return [(i, str(d["name"]), int(d["max_input_channels"]))
            for i, d in enumerate(devices) if int(d["max_input_channels"]) > 0]


def _no_device_message(sd) -> str:  # type: ignore[no-untyped-def]
    try:
        devices = sd.query_devices()
        found = "; ".join(f"[{i}] {d['name']} ({d['max_input_channels']} in, {d['max_output_channels']} out)"
                          for i, d in enumerate(devices)) or "none"
    except Exception as exc:
        found = f"none ({_short(exc)})"
    return ("no audio input device found (devices PortAudio sees: " + found + "). "
            "Connect a microphone, or process a recording with --input FILE (or raw PCM16 on stdin with --input -)")


BUNDLED = {
    "demo": "demo.flac",
    "demo-voices": "demo-voices.flac",
}
"""Names of the bundled recordings: ``demo``, a synthetic (espeak-ng) two-speaker call; ``demo-voices``,
two CREMA-D actors as agent and customer whose emotions change over the call."""


def open_source(spec: str, config: SourceConfig, stdin: BinaryIO | None = None) -> Source:
    """``mic``, ``-`` (stdin), a file path, or the name of a bundled recording (:data:`BUNDLED`)."""
    if spec == "mic":
        return MicSource(config)
    if spec == "-":
        import sys

        return StdinSource(stdin if stdin is not None else sys.stdin.buffer, config)
    if spec in BUNDLED:
        return FileSource(demo_path(spec), config)
    return FileSource(spec, config)


def demo_path(name: str = "demo") -> Path:
    """A bundled recording by name (:data:`BUNDLED`)."""
    from importlib import resources

    return Path(str(resources.files("realtime_ser").joinpath(f"data/{BUNDLED[name]}")))
