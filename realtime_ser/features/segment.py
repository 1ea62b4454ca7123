"""The audio of each utterance in a file, cut exactly as the live pipeline cuts it.

The emotion model's acoustic features must be computed on the same samples in
training, in offline evaluation and live: the live pipeline sees the segmenter's
utterance (start padding, speech, pauses, end padding), not the whole file with
its leading and trailing silence. This module runs the same source framing and
the same :class:`~realtime_ser.vad.Segmenter` over a file, without pacing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import PipelineConfig
from ..frames import SpeechAudio, SpeechEnd, SpeechStart
from ..sources import FileSource
from ..vad import Segmenter

__all__ = ["utterance_audio"]


def utterance_audio(path: str | Path, config: PipelineConfig | None = None) -> list[np.ndarray]:
    """The int16 samples of every utterance the segmenter finds in ``path`` (mixed to mono), in order."""
    config = config or PipelineConfig()
    source_cfg = replace(config.source, realtime=False, split_channels=False)
    source = FileSource(path, source_cfg)
    segmenter = Segmenter(config.vad, source_cfg.frame_ms)
    out: list[np.ndarray] = []
    current: list[np.ndarray] | None = None

    def handle(events: list) -> None:
        nonlocal current
        for ev in events:
            if isinstance(ev, SpeechStart):
                current = []
            elif isinstance(ev, SpeechAudio) and current is not None:
                current.append(ev.frame.samples)
            elif isinstance(ev, SpeechEnd) and current is not None:
                out.append(np.concatenate(current) if current else np.zeros(0, np.int16))
                current = None

    for frame in source:
        handle(segmenter.feed(frame))
    handle(segmenter.flush())
    return out
