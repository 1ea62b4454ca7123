"""Utterance segmentation: a voice detector per frame (Silero VAD or webrtcvad) and the
start/end decisions around it.

:class:`Segmenter` is the stage logic for one channel: call :meth:`feed` with
each frame and get the segment events it causes; :meth:`flush` closes an open
utterance (end of input, or the runner's input timeout); :meth:`reset` starts
over. No threads, no clocks: the caller passes the current time for latency
bookkeeping.

Voice detectors (``vad.detector``):

- ``webrtc`` (the default): webrtcvad (a GMM per frame), mode ``vad.aggressiveness``.
- ``silero``: Silero VAD v6, a small neural network (the 16 kHz ONNX model of the
  ``silero-vad`` 6.2.3 wheel, MIT, shipped in ``realtime_ser/data/silero``), run with
  onnxruntime on every 32 ms of audio; a frame is voiced while the speech probability is
  above ``vad.threshold`` (and stays voiced until it drops below ``threshold - 0.15``, as
  Silero's own iterator does).

Measured on RAVDESS, TESS and CREMA-D clean and in noise (``bench/results/vad_compare.md``):
Silero finds the end of speech more exactly (it decides about 50 ms sooner at the same
hangover), gives Whisper the same words, and in babble still ends utterances, where webrtcvad
stays "in speech" for seconds; but it hears nothing at all in some shouted, high-arousal
utterances (15 of the 1200 RAVDESS clips, one actor's strong-intensity angry, happy, fearful
and sad lines, even at threshold 0.2), and it splits more at pauses in strong white noise.
Tones and other non-speech sounds are not speech to it. An emotion monitor cannot miss the
shouting, so webrtcvad stays the default; its hangover went from 500 to 400 ms.

Decisions, per frame of 10/20/30 ms:

- *start*: at least ``start_ms`` of voiced frames within the last
  ``start_window_ms``. The utterance starts at the first voiced frame of that
  window; up to ``start_padding_ms`` of audio before it goes to the recognizer.
- An utterance is only announced (``SpeechStart``) once its voiced span reaches
  ``min_utterance_ms``; shorter blips are dropped as ``SpeechDiscarded`` and the
  recognizer never sees them.
- *end*: ``hangover_ms`` of unvoiced frames. The end is the end of the last
  voiced frame; the first ``end_padding_ms`` of the trailing silence go to the
  recognizer. Unvoiced frames inside an utterance (pauses shorter than the
  hangover) reach the recognizer when speech resumes.
- *pause*: once a pause has lasted ``end_padding_ms`` (and the hangover is not
  over yet), a ``SpeechPause`` says the utterance's audio is complete should the
  pause be its end, so work on the whole utterance can start inside the hangover.
- *maximum length*: at the first voiced frame that reaches ``max_utterance_ms``
  the utterance is cut and the next frame opens the next utterance at once, so
  a monologue goes on.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import VAD_DETECTORS, VadConfig
from .frames import (
    ALLOWED_FRAME_MS,
    SAMPLE_RATE,
    AudioFrame,
    SegmentEvent,
    SpeechAudio,
    SpeechDiscarded,
    SpeechEnd,
    SpeechPause,
    SpeechStart,
)


class VoiceDetector(Protocol):
    def is_speech(self, buf: bytes, sample_rate: int) -> bool: ...


DETECTORS = VAD_DETECTORS

SILERO_MODEL = Path(__file__).resolve().parent / "data" / "silero" / "silero_vad_16k_op15.onnx"
"""Silero VAD v6, 16 kHz, from the silero-vad 6.2.3 wheel (``silero_vad/data/silero_vad_16k_op15.onnx``)."""
SILERO_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
SILERO_CHUNK = 512
"""Samples per Silero call at 16 kHz (32 ms): the only size the model takes."""
_SILERO_CONTEXT = 64  # samples of the previous chunk the model sees before each chunk


def webrtc_detector(aggressiveness: int) -> VoiceDetector:
    import webrtcvad

    if aggressiveness not in (0, 1, 2, 3):
        raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
    return webrtcvad.Vad(aggressiveness)  # type: ignore[no-any-return]


_silero_session: Any = None
_silero_lock = threading.Lock()


def _silero() -> Any:
    """The process's onnxruntime session of the Silero model (loaded once, checked against its SHA-256).

    One session serves every stream: ``run`` is thread-safe and the recurrent state is passed in
    and out by each :class:`SileroDetector`, so nothing of one stream leaks into another."""
    global _silero_session
    with _silero_lock:
        if _silero_session is None:
            import onnxruntime as ort

            data = SILERO_MODEL.read_bytes()
            got = hashlib.sha256(data).hexdigest()
            if got != SILERO_SHA256:
                raise ValueError(f"{SILERO_MODEL} has sha256 {got}, expected {SILERO_SHA256}: the installed "
                                 "package is damaged; reinstall realtime-ser")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # a 32 ms chunk is far too small to split over cores
            options.inter_op_num_threads = 1
            _silero_session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return _silero_session


class SileroDetector:
    """Silero VAD behind the per-frame ``is_speech`` interface of webrtcvad.

    Frames of any length go into a buffer; the model runs on each complete 32 ms chunk, and a
    frame is voiced while the latest probability says speech, with hysteresis: speech starts at
    ``threshold`` and ends below ``threshold - 0.15``. A frame's answer therefore reflects audio
    up to 32 ms old at most.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self._session = _silero()
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_SILERO_CONTEXT, dtype=np.float32)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._sr = np.array(16000, dtype=np.int64)
        self._speaking = False
        self.probability = 0.0
        """The latest speech probability."""

    def is_speech(self, buf: bytes, sample_rate: int) -> bool:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the Silero detector takes {SAMPLE_RATE} Hz audio, got {sample_rate}")
        x = np.frombuffer(buf, dtype=np.int16).astype(np.float32) / 32768.0
        self._buffer = np.concatenate([self._buffer, x]) if self._buffer.size else x
        while self._buffer.size >= SILERO_CHUNK:
            chunk, self._buffer = self._buffer[:SILERO_CHUNK], self._buffer[SILERO_CHUNK:]
            frame = np.concatenate([self._context, chunk])[None, :]
            out, self._state = self._session.run(None, {"input": frame, "state": self._state, "sr": self._sr})
            self._context = chunk[-_SILERO_CONTEXT:]
            self.probability = float(out[0, 0])
            if self.probability >= self.threshold:
                self._speaking = True
            elif self.probability < self.neg_threshold:
                self._speaking = False
        return self._speaking


class InputLevels:
    """The levels (dBFS, mean power) of a channel's last ``AUTO_GAIN_WINDOW_MS`` of frames, digital
    silence left out: what :class:`DetectorGain` and the quiet-input hint read."""

    def __init__(self, frame_ms: int) -> None:
        self._levels: collections.deque[float] = collections.deque(maxlen=max(1, AUTO_GAIN_WINDOW_MS // frame_ms))
        self._min_frames = max(1, AUTO_GAIN_MIN_MS // frame_ms)

    def add(self, samples: np.ndarray) -> None:
        x = samples.astype(np.float32)
        power = float(np.dot(x, x)) / (x.size * 32768.0**2) if x.size else 0.0  # a dot: a tenth of mean(x * x)
        if power > AUTO_GAIN_SILENCE:  # digital silence (a muted or starting device) says nothing of the floor
            self._levels.append(10.0 * math.log10(power))

    def speech_level(self) -> float | None:
        """The speech level (the ``AUTO_GAIN_PERCENTILE`` percentile) while the window holds a speech-like
        range of levels (at least ``AUTO_GAIN_RANGE_DB`` above the 10th percentile); ``None`` otherwise
        (steady noise, silence, too little audio)."""
        if len(self._levels) < self._min_frames:
            return None
        floor, level = np.percentile(np.fromiter(self._levels, np.float64), (10.0, AUTO_GAIN_PERCENTILE))
        return float(level) if level - floor >= AUTO_GAIN_RANGE_DB else None


class DetectorGain:
    """The gain ``vad.auto_gain_dbfs`` gives the voice detector's copy of each frame (quiet input).

    While the channel's recent levels (:class:`InputLevels`) say speech, the gain is set to bring the
    speech level up to ``target_dbfs``, between 0 and ``max_db``; otherwise (steady noise, silence,
    too little audio) it holds, so a quiet speaker's pauses keep it and noise alone never raises it.
    """

    def __init__(self, target_dbfs: float, max_db: float, levels: InputLevels) -> None:
        self.target_dbfs = target_dbfs
        self.max_db = max_db
        self.levels = levels
        self.gain_db = 0.0
        """The gain the latest frame was given (dB)."""

    def apply(self, samples: np.ndarray) -> np.ndarray:
        """``samples`` (int16) as the detector should hear them (their level already added to ``levels``)."""
        level = self.levels.speech_level()
        if level is not None:
            self.gain_db = float(min(max(self.target_dbfs - level, 0.0), self.max_db))
        if self.gain_db <= 0.0:
            return samples
        y = samples.astype(np.float32) * np.float32(10.0 ** (self.gain_db / 20.0))
        return np.clip(y, -32768.0, 32767.0).astype(np.int16)


AUTO_GAIN_WINDOW_MS = 10000
"""How much recent audio :class:`InputLevels` measures the speech level over."""
AUTO_GAIN_MIN_MS = 200
"""Audio :class:`InputLevels` needs before it says a level."""
AUTO_GAIN_SILENCE = 1e-10
"""Frames below this power (-100 dBFS, under the last bit of 16-bit audio: digital silence) are left out."""
AUTO_GAIN_PERCENTILE = 95.0
"""Which percentile of the frames' levels counts as the speech level."""
AUTO_GAIN_RANGE_DB = 12.0
"""Level range (95th against 10th percentile of frames) that says speech is in the window."""
QUIET_HINT_DBFS = -45.0
"""With the detector gain off, a channel whose speech level over ``AUTO_GAIN_WINDOW_MS`` is below this gets
a hint (:attr:`Segmenter.quiet_input_dbfs`): webrtcvad starts to miss acted clips about there."""


def make_detector(config: VadConfig) -> VoiceDetector:
    """The voice detector ``config.detector`` names, with its settings."""
    if config.detector == "silero":
        return SileroDetector(config.threshold)
    if config.detector == "webrtc":
        return webrtc_detector(config.aggressiveness)
    raise ValueError(f"vad.detector must be one of {', '.join(DETECTORS)}, got {config.detector!r}")


class Segmenter:
    """Speech start/end decisions for one channel."""

    def __init__(
        self,
        config: VadConfig,
        frame_ms: int,
        channel: int = 0,
        detector_factory: Callable[[VadConfig], VoiceDetector] = make_detector,
    ) -> None:
        if frame_ms not in ALLOWED_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {ALLOWED_FRAME_MS}, got {frame_ms}")
        self.config = config
        self.frame_ms = frame_ms
        self.channel = channel
        self._detector_factory = detector_factory
        self._frame_len = SAMPLE_RATE * frame_ms // 1000

        def frames(ms: int) -> int:
            return max(1, -(-ms // frame_ms))  # ceiling

        self._start_frames = frames(config.start_ms)
        self._window_frames = max(self._start_frames, frames(config.start_window_ms))
        self._pad_frames = config.start_padding_ms // frame_ms
        self._end_pad_frames = config.end_padding_ms // frame_ms
        self._hangover_frames = frames(config.hangover_ms)
        self._hint_frames = max(1, AUTO_GAIN_WINDOW_MS // frame_ms)  # how often the quiet-input hint looks
        self.utterances = 0
        self.discarded = 0
        self.reset()

    def reset(self) -> None:
        """Forget all state: no open utterance, empty pre-roll, no detector gain."""
        self._vad = self._detector_factory(self.config)
        self._levels = InputLevels(self.frame_ms)
        self._gain = (DetectorGain(self.config.auto_gain_dbfs, self.config.auto_gain_max_db, self._levels)
                      if self.config.auto_gain_dbfs else None)
        self._hint_count = 0
        self.quiet_input_dbfs: float | None = None
        """Set once (the speech level, dBFS) when a window of ``AUTO_GAIN_WINDOW_MS`` holds speech-like levels
        below ``QUIET_HINT_DBFS``, so quiet that the detector may miss some of it (only with
        ``vad.auto_gain_dbfs`` off). The pipeline logs a hint."""
        self._preroll: collections.deque[tuple[AudioFrame, bool]] = collections.deque(
            maxlen=self._window_frames + self._pad_frames
        )
        self._in_speech = False
        self._announced = False
        self._held: list[SegmentEvent] = []
        self._pending: list[AudioFrame] = []
        self._index = -1
        self._start = 0.0
        self._audio_start = 0.0
        self._start_capture_ns = 0
        self._last_voiced: AudioFrame | None = None
        self._silence_run = 0
        self._continue_next = False

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def detector_gain_db(self) -> float:
        """The gain the voice detector heard the latest frame with (``vad.auto_gain_dbfs``; 0 when off)."""
        return self._gain.gain_db if self._gain is not None else 0.0

    # -- feeding -----------------------------------------------------------------

    def feed(self, frame: AudioFrame, now_ns: int = 0) -> list[SegmentEvent]:
        """Process one frame; return the events it causes, in order."""
        if len(frame.samples) != self._frame_len:
            raise ValueError(
                f"frame has {len(frame.samples)} samples; this segmenter takes {self._frame_len} "
                f"({self.frame_ms} ms at {SAMPLE_RATE} Hz)"
            )
        heard = frame.samples
        if self._gain is not None:
            self._levels.add(frame.samples)
            heard = self._gain.apply(frame.samples)
        elif self.quiet_input_dbfs is None:  # until the hint is given
            self._levels.add(frame.samples)
            self._check_quiet()
        voiced = self._vad.is_speech(heard.tobytes(), SAMPLE_RATE)
        out: list[SegmentEvent] = []
        if not self._in_speech:
            if self._continue_next:
                self._continue_next = False
                self._open(frame, [(frame, voiced)], 0, now_ns, out)
                self._check_max(frame, now_ns, out)
                return out
            self._preroll.append((frame, voiced))
            window = list(self._preroll)[-self._window_frames :]
            if sum(v for _, v in window) >= self._start_frames:
                entries = list(self._preroll)
                first_in_window = len(entries) - len(window)
                first_voiced = first_in_window + next(i for i, (_, v) in enumerate(window) if v)
                first = max(0, first_voiced - self._pad_frames)
                self._open(entries[first_voiced][0], entries, first, now_ns, out)
                self._preroll.clear()
                self._check_max(frame, now_ns, out)
            return out

        if voiced:
            self._last_voiced = frame
            self._silence_run = 0
            for f in self._pending:
                self._emit(SpeechAudio(self.channel, self._index, f), out)
            self._pending.clear()
            self._emit(SpeechAudio(self.channel, self._index, frame), out)
        else:
            self._silence_run += 1
            if self._silence_run <= self._end_pad_frames:
                self._emit(SpeechAudio(self.channel, self._index, frame), out)
            else:
                self._pending.append(frame)
            if (self._announced and self._silence_run == max(1, self._end_pad_frames)
                    and self._silence_run < self._hangover_frames and self._last_voiced is not None):
                out.append(SpeechPause(self.channel, self._index, self._last_voiced.end))
            if self._silence_run >= self._hangover_frames:
                self._close("silence", now_ns, out)
                return out
        self._check_max(frame, now_ns, out)
        return out

    def flush(self, reason: str = "end_of_input", now_ns: int = 0) -> list[SegmentEvent]:
        """Close the open utterance, if any (end of input or input timeout)."""
        out: list[SegmentEvent] = []
        if self._in_speech:
            self._close(reason, now_ns, out)
        self._preroll.clear()
        self._continue_next = False
        return out

    # -- internals ------------------------------------------------------------------

    def _check_quiet(self) -> None:
        self._hint_count += 1
        if self._hint_count >= self._hint_frames:
            self._hint_count = 0
            level = self._levels.speech_level()
            if level is not None and level < QUIET_HINT_DBFS:
                self.quiet_input_dbfs = level

    def _open(
        self,
        start_frame: AudioFrame,
        entries: list[tuple[AudioFrame, bool]],
        first: int,
        now_ns: int,
        out: list[SegmentEvent],
    ) -> None:
        self._index += 1
        self._in_speech = True
        self._announced = False
        self._held = []
        self._pending = []
        self._start = start_frame.start
        self._start_capture_ns = start_frame.capture_ns
        self._audio_start = entries[first][0].start
        self._decided_start_ns = now_ns
        kept = entries[first:]
        self._last_voiced = next((f for f, v in reversed(kept) if v), None)
        self._silence_run = 0
        for _, v in reversed(kept):
            if v:
                break
            self._silence_run += 1
        for f, _ in kept:
            self._emit(SpeechAudio(self.channel, self._index, f), out)

    def _voiced_span_ms(self) -> float:
        if self._last_voiced is None:
            return 0.0
        return (self._last_voiced.end - self._start) * 1000.0

    def _emit(self, event: SegmentEvent, out: list[SegmentEvent]) -> None:
        if self._announced:
            out.append(event)
            return
        self._held.append(event)
        if self._voiced_span_ms() >= self.config.min_utterance_ms:
            self._announced = True
            out.append(
                SpeechStart(
                    channel=self.channel,
                    utterance_index=self._index,
                    start=self._start,
                    audio_start=self._audio_start,
                    capture_ns=self._start_capture_ns,
                    decided_ns=self._decided_start_ns,
                )
            )
            out.extend(self._held)
            self._held = []

    def _check_max(self, frame: AudioFrame, now_ns: int, out: list[SegmentEvent]) -> None:
        # Only cut while speech goes on: trailing silence ends the utterance normally.
        if (self._in_speech and self._silence_run == 0
                and (frame.end - self._start) * 1000.0 >= self.config.max_utterance_ms):
            self._close("max_length", now_ns, out)
            self._continue_next = True

    def _close(self, reason: str, now_ns: int, out: list[SegmentEvent]) -> None:
        last = self._last_voiced
        end = last.end if last is not None else self._start
        if reason == "max_length" and last is not None:
            # Everything up to the cut belongs to this utterance.
            for f in self._pending:
                self._emit(SpeechAudio(self.channel, self._index, f), out)
        self._pending = []
        if self._announced and last is not None:
            self.utterances += 1
            out.append(
                SpeechEnd(
                    channel=self.channel,
                    utterance_index=self._index,
                    start=self._start,
                    end=end,
                    end_capture_ns=last.capture_ns,
                    decided_ns=now_ns,
                    reason=reason,
                )
            )
        else:
            self.discarded += 1
            out.append(SpeechDiscarded(self.channel, self._index, self._start, end))
        self._in_speech = False
        self._announced = False
        self._held = []
        self._last_voiced = None
        self._silence_run = 0
