"""vosk-server compatible sessions: synchronous processing, one chunk at a time.

vosk-server answers every audio message with exactly one reply, so a client
waits for it before sending the next chunk. :class:`VoskCompatSession` does
the work of one chunk (resample, segment, recognize) synchronously, on a
worker thread (never on the event loop), and returns the reply. The session
also publishes regular events, so dashboards can follow these calls too.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from .. import __version__
from ..asr import RecognizerBackend
from ..config import PipelineConfig, public_dict
from ..events import EventLog, Sink
from ..frames import SAMPLE_RATE, AudioFrame
from ..recognition import RecognitionStage, finalize_latency
from ..sources import _Framer
from ..vad import Segmenter


class VoskCompatSession:
    def __init__(self, session: str, config: PipelineConfig, backend: RecognizerBackend | None,
                 sink: Sink, sample_rate: int) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self.log = EventLog(session, [sink])
        self._frame_len = SAMPLE_RATE * config.source.frame_ms // 1000
        self._framer = _Framer(sample_rate, self._frame_len)
        self._segmenter = Segmenter(config.vad, config.source.frame_ms, 0)
        self._stage = RecognitionStage(backend, config.asr, ["ch0"])
        self._results: collections.deque[dict[str, Any]] = collections.deque()
        self._partial = ""
        self._frames = 0
        self.utterances = 0
        self.log.emit("session.started", 0.0, input="websocket (vosk-server protocol)",
                      asr={"backend": config.asr.backend, "model": backend.model if backend else None},
                      sample_rate=sample_rate, channels=1, speakers=["ch0"], realtime=True,
                      config=public_dict(config), version=__version__)

    def feed(self, data: bytes) -> dict[str, Any]:
        """Process one chunk of PCM16 mono; return vosk-server's reply to it."""
        now = time.monotonic_ns()
        usable = len(data) - len(data) % 2
        block = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        for offset, samples in self._framer.push(block):
            self._run_frame(AudioFrame(self._frames, 0, offset, samples, now))
        return self._reply()

    def finish(self) -> dict[str, Any]:
        """End of stream: flush, end the session, return the final reply."""
        for offset, samples in self._framer.push(np.zeros(0, dtype=np.float32), last=True):
            self._run_frame(AudioFrame(self._frames, 0, offset, samples, time.monotonic_ns()))
        for ev in self._segmenter.flush("end_of_input", time.monotonic_ns()):
            self._publish(self._stage.feed(ev))
        self._stage.close()
        duration = self._frames * self.config.source.frame_ms / 1000.0
        self.log.emit("session.ended", duration, reason="end_of_input", duration=round(duration, 3),
                      counts={"utterances": self.utterances, "frames": self._frames, "dropped_frames": 0,
                              "discarded_segments": self._segmenter.discarded, "partials": 0, "errors": 0})
        if not self._results:
            return {"text": ""}
        results = list(self._results)
        self._results.clear()
        words = [w for r in results for w in r["result"]]
        return {"result": words, "text": " ".join(r["text"] for r in results if r["text"]),
                "emotion": results[-1]["emotion"]}

    def _run_frame(self, frame: AudioFrame) -> None:
        self._frames += 1
        for ev in self._segmenter.feed(frame, time.monotonic_ns()):
            self._publish(self._stage.feed(ev))

    def _publish(self, outs: list[tuple[str, float, dict[str, Any]]]) -> None:
        for type_, t, fields in outs:
            if type_ == "utterance":
                finalize_latency(fields, time.monotonic_ns())
                self.utterances += 1
                self._partial = ""
                self._results.append({
                    "result": [{"conf": w["conf"], "end": w["end"], "start": w["start"], "word": w["word"]}
                               for w in fields["words"]],
                    "text": fields["text"], "emotion": fields["emotion"]})
            elif type_ == "transcript.partial":
                self._partial = fields["text"]
            self.log.emit(type_, t, **fields)

    def _reply(self) -> dict[str, Any]:
        if self._results:
            return self._results.popleft()
        return {"partial": self._partial}
