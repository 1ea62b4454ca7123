"""Data that crosses threads: audio frames and segmenter output.

All of these are frozen dataclasses. Every one carries the monotonic capture
time (``time.monotonic_ns()`` at the source) of the audio it is about, so the
latency of any event can be measured from the moment its audio was captured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
"""The pipeline's one sample rate; sources convert everything to it."""

ALLOWED_FRAME_MS = (10, 20, 30)
"""Frame lengths webrtcvad accepts."""


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One frame of 16 kHz mono PCM16 audio of one channel.

    ``offset`` is the index of the frame's first sample in the channel's stream
    (stream time = offset / 16000 s). ``capture_ns`` is ``time.monotonic_ns()``
    when the source obtained the frame.
    """

    seq: int
    channel: int
    offset: int
    samples: np.ndarray  # int16, shape (n,)
    capture_ns: int

    @property
    def start(self) -> float:
        return self.offset / SAMPLE_RATE

    @property
    def end(self) -> float:
        return (self.offset + len(self.samples)) / SAMPLE_RATE

    @property
    def end_offset(self) -> int:
        return self.offset + len(self.samples)


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """The segmenter decided speech started on a channel.

    ``start`` is the stream time (s) of the first voiced frame; ``audio_start``
    the stream time of the first frame handed to the recognizer (start padding
    included).
    """

    channel: int
    utterance_index: int
    start: float
    audio_start: float
    capture_ns: int
    decided_ns: int


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """A frame that belongs to the open utterance of a channel."""

    channel: int
    utterance_index: int
    frame: AudioFrame


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The segmenter closed the open utterance of a channel.

    ``end`` is the stream time (s) of the end of the last voiced frame and
    ``end_capture_ns`` that frame's capture time: latency is measured from it.
    ``reason`` is one of ``"silence"`` (hangover elapsed), ``"max_length"``
    (cut at the maximum; speech goes on as the next utterance),
    ``"input_timeout"`` (audio stopped arriving) or ``"end_of_input"``.
    """

    channel: int
    utterance_index: int
    start: float
    end: float
    end_capture_ns: int
    decided_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class SpeechPause:
    """The open utterance of a channel has all the audio it will have, unless speech resumes.

    Sent once per pause, when the pause has lasted the end padding (``vad.end_padding_ms``):
    the frames already sent are then exactly the utterance's audio if the pause turns out to
    be its end, which the segmenter knows only when the hangover has elapsed. Work that needs
    the whole utterance's audio (the emotion model's speech encoder) can start here and be
    done by the time :class:`SpeechEnd` comes; a :class:`SpeechAudio` of the same utterance
    after it means the speaker went on, and that work is void.
    """

    channel: int
    utterance_index: int
    end: float
    """Stream time (s) of the end of the last voiced frame."""


@dataclass(frozen=True, slots=True)
class SpeechDiscarded:
    """An open utterance was shorter than the minimum length and was dropped."""

    channel: int
    utterance_index: int
    start: float
    end: float


SegmentEvent = SpeechStart | SpeechAudio | SpeechPause | SpeechEnd | SpeechDiscarded
