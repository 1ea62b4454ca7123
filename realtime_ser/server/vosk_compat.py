"""vosk-server compatible sessions: synchronous processing, one chunk at a time.

vosk-server (alphacephei) answers every audio message with exactly one reply, so
a client waits for it before sending the next chunk. :class:`VoskCompatSession`
does the work of one chunk (resample, segment, recognize, score the emotion)
synchronously, on a worker thread (never on the event loop), and returns the
reply. The session is also a regular session: its events (utterances with their
emotion, alerts, ``session.ended`` with its counts) go to the hub, so dashboards,
``follow`` and alerts see these calls like any other.

The messages, as vosk-server's own clients send them (docs/protocol.md):

- ``{"config": {...}}`` before the audio: ``sample_rate`` (any rate from 4 to
  192 kHz, resampled; 8000 when no config comes, as vosk-server), ``words``
  (word times in results, default on), ``max_alternatives`` (n-best) and
  ``phrase_list`` (a grammar). What the recognizer cannot do of them is said in a
  ``warning`` field of the replies.
- binary PCM16 mono: answered ``{"partial": ...}`` or, when an utterance ended in
  that chunk, its result.
- ``{"reset": 1}``: the final result of what was heard so far; recognition goes
  on with a fresh utterance.
- ``{"eof": 1}``: the final result; the server then closes.
"""

from __future__ import annotations

import collections
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..asr import RecognizerBackend, RecognizerOptions
from ..config import PipelineConfig, public_dict
from ..errors import RealtimeSerError
from ..events import EventLog, Sink
from ..frames import SAMPLE_RATE, AudioFrame
from ..recognition import ALTERNATIVES, RecognitionStage
from ..session import SessionEvents
from ..sources import _Framer
from ..vad import Segmenter

DEFAULT_RATE = 8000.0
"""vosk-server's rate when the client sends no config (its ``VOSK_SAMPLE_RATE`` default)."""
MIN_RATE, MAX_RATE = 4000.0, 192000.0
MAX_ALTERNATIVES = 100
MAX_PHRASES = 5000
MAX_PHRASE_CHARS = 500
CONFIG_KEYS = ("sample_rate", "words", "max_alternatives", "phrase_list")
"""What vosk-server reads from a config message; other keys are ignored (and said so)."""


class VoskProtocolError(RealtimeSerError):
    """A message vosk-server's protocol does not allow; ``code`` names it for the error event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VoskConfig:
    """A connection's settings, from its config message(s)."""

    sample_rate: float = DEFAULT_RATE
    words: bool = True
    max_alternatives: int = 0
    phrase_list: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default_factory=tuple)
    """Config keys that are not vosk-server's (said in the replies' ``warning``)."""

    @property
    def options(self) -> RecognizerOptions:
        return RecognizerOptions(self.max_alternatives, self.phrase_list)


def parse_message(text: str) -> dict[str, Any]:
    """A text message as a JSON object; VoskProtocolError otherwise."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise VoskProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise VoskProtocolError("bad_json", "message must be a JSON object")
    return obj


def apply_config(current: VoskConfig, cfg: Any) -> VoskConfig:
    """``current`` updated with a config message's ``config`` object (vosk-server's keys)."""
    if not isinstance(cfg, dict):
        raise VoskProtocolError("bad_config", "config must be an object")
    rate, words, alternatives, phrases = (current.sample_rate, current.words, current.max_alternatives,
                                          current.phrase_list)
    if "sample_rate" in cfg:
        r = cfg["sample_rate"]
        if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) \
                or not MIN_RATE <= r <= MAX_RATE:
            raise VoskProtocolError("unsupported_sample_rate",
                                    f"sample_rate {r!r} is not supported; use a rate from {MIN_RATE:.0f} to "
                                    f"{MAX_RATE:.0f} Hz (it is resampled to 16000)")
        rate = float(r)
    if "words" in cfg:
        w = cfg["words"]
        if not isinstance(w, bool | int):
            raise VoskProtocolError("bad_config", f"words must be true/false or 1/0, got {w!r}")
        words = bool(w)
    if "max_alternatives" in cfg:
        n = cfg["max_alternatives"]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_ALTERNATIVES:
            raise VoskProtocolError("bad_config", f"max_alternatives must be an integer from 0 to "
                                                  f"{MAX_ALTERNATIVES}, got {n!r}")
        alternatives = n
    if "phrase_list" in cfg:
        p = cfg["phrase_list"]
        if p is None:
            phrases = ()
        elif (not isinstance(p, list) or len(p) > MAX_PHRASES
              or not all(isinstance(x, str) and len(x) <= MAX_PHRASE_CHARS for x in p)):
            raise VoskProtocolError("bad_config", f"phrase_list must be a list of at most {MAX_PHRASES} strings of "
                                                  f"at most {MAX_PHRASE_CHARS} characters")
        else:
            phrases = tuple(x for x in p if x.strip())
    ignored = tuple(dict.fromkeys(current.ignored + tuple(sorted(str(k)[:40] for k in cfg if k not in CONFIG_KEYS))))
    return VoskConfig(rate, words, alternatives, phrases, ignored)


class VoskCompatSession:
    """One vosk-server protocol connection as a session (see the module docstring).

    Made on a worker thread: loading the emotion model or starting a recognizer stream
    may take a while. Every method blocks; none may run on the event loop.
    """

    def __init__(self, session: str, config: PipelineConfig, backend: RecognizerBackend | None,
                 sink: Sink, vosk: VoskConfig) -> None:
        self.config = config
        self.vosk = vosk
        self.log = EventLog(session, [sink])
        self.events = SessionEvents(config, self.log, audio_only=backend is None)
        try:
            emotion = self.events.emotion
            self._stage = RecognitionStage(backend, config.asr, ["ch0"], keep_audio=emotion is not None,
                                           options=vosk.options,
                                           encode_ahead=emotion.encoder_ahead(backend) if emotion else None)
        except BaseException:
            self.events.close()
            raise
        self.warning = "; ".join(
            ([f"config key(s) {', '.join(vosk.ignored)} are not vosk-server's and were ignored"]
             if vosk.ignored else []) + self._stage.warnings)
        """What this connection asked for that is not done ('' when everything is)."""
        self._frame_len = SAMPLE_RATE * config.source.frame_ms // 1000
        self._framer = _Framer(vosk.sample_rate, self._frame_len)
        self._segmenter = Segmenter(config.vad, config.source.frame_ms, 0)
        self._results: collections.deque[dict[str, Any]] = collections.deque()
        self._partial = ""
        self._carry = b""
        self._replies = 0
        self.ended = False
        self.log.emit("session.started", 0.0, input="websocket (vosk-server protocol)",
                      asr={"backend": config.asr.backend, "model": backend.model if backend else None},
                      sample_rate=int(round(vosk.sample_rate)), channels=1, speakers=["ch0"], realtime=True,
                      config=public_dict(config), version=__version__)

    @property
    def stats(self) -> Any:
        return self.events.stats

    def feed(self, data: bytes) -> dict[str, Any]:
        """Process one chunk of PCM16 mono; return vosk-server's reply to it."""
        now = time.monotonic_ns()
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]  # half a sample: it completes with the next chunk
        block = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        for offset, samples in self._framer.push(block):
            self._run_frame(AudioFrame(self.stats.frames, 0, offset, samples, now))
        if self._results:
            return self._reply(self._format([self._results.popleft()]))
        return self._reply({"partial": self._partial})

    def reset(self) -> dict[str, Any]:
        """``{"reset": 1}``: end the open utterance now; its (and any pending) final result."""
        for ev in self._segmenter.flush("reset", time.monotonic_ns()):
            self._publish(self._stage.feed(ev))
        self._partial = ""
        return self._final()

    def finish(self, reason: str = "end_of_input") -> dict[str, Any]:
        """End of stream (``eof``; ``stopped`` when the client left or the server stops): flush,
        end the session, return the final reply."""
        if self.ended:
            return self._final()
        for offset, samples in self._framer.push(np.zeros(0, dtype=np.float32), last=True):
            self._run_frame(AudioFrame(self.stats.frames, 0, offset, samples, time.monotonic_ns()))
        for ev in self._segmenter.flush("end_of_input", time.monotonic_ns()):
            self._publish(self._stage.feed(ev))
        self._stage.close()
        self.events.close()
        s = self.stats
        duration = s.frames * self.config.source.frame_ms / 1000.0
        s.discarded_segments = self._segmenter.discarded
        self.log.emit("session.ended", duration, reason=reason, duration=round(duration, 3),
                      counts={"utterances": s.utterances, "frames": s.frames, "dropped_frames": 0,
                              "discarded_segments": s.discarded_segments, "partials": s.partials,
                              "errors": s.errors})
        self.ended = True
        return self._final()

    # -- internals -----------------------------------------------------------------------------

    def _run_frame(self, frame: AudioFrame) -> None:
        self.stats.frames += 1
        for ev in self._segmenter.feed(frame, time.monotonic_ns()):
            self._publish(self._stage.feed(ev))

    def _publish(self, outs: list[tuple[str, float, dict[str, Any]]]) -> None:
        for out in outs:
            type_, _t, fields = out
            after = self.events.annotate(out)  # the emotion, as on every other path
            if type_ == "utterance":
                alternatives = fields.pop(ALTERNATIVES, None)
                self._partial = ""
                self._results.append({"words": [dict(w) for w in fields["words"]], "text": fields["text"],
                                      "emotion": fields["emotion"], "alternatives": alternatives})
            elif type_ == "transcript.partial":
                self._partial = fields["text"]
            self.events.deliver(out)
            for extra in after:
                self.events.deliver(extra)

    def _final(self) -> dict[str, Any]:
        results = list(self._results)
        self._results.clear()
        if not results:
            empty: dict[str, Any] = {"text": ""}
            if self.vosk.max_alternatives:
                empty = {"alternatives": [{"confidence": 0.0, "text": ""}]}
            return self._reply(empty)
        return self._reply(self._format(results))

    def _format(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """vosk-server's result message for these utterances (several: joined, as one)."""
        reply: dict[str, Any] = {}
        if self.vosk.max_alternatives:
            n = max(len(r["alternatives"] or [None]) for r in results)
            alternatives = []
            for k in range(n):
                picked = [(r["alternatives"] or [{"text": r["text"], "confidence": 0.0, "words": r["words"]}])
                          for r in results]
                chosen = [alts[min(k, len(alts) - 1)] for alts in picked]
                alt: dict[str, Any] = {"confidence": round(sum(float(a["confidence"]) for a in chosen), 6)}
                if self.vosk.words:
                    alt["result"] = [{"end": w["end"], "start": w["start"], "word": w["word"]}
                                     for a in chosen for w in a["words"]]
                alt["text"] = " ".join(a["text"] for a in chosen if a["text"])
                alternatives.append(alt)
            reply["alternatives"] = alternatives
        else:
            if self.vosk.words:
                reply["result"] = [{"conf": w["conf"], "end": w["end"], "start": w["start"], "word": w["word"]}
                                   for r in results for w in r["words"]]
            reply["text"] = " ".join(r["text"] for r in results if r["text"])
        reply["emotion"] = results[-1]["emotion"]
        return reply

    def _reply(self, reply: dict[str, Any]) -> dict[str, Any]:
        # The warning goes with the first reply and with every result (not with each partial).
        if self.warning and (self._replies == 0 or "partial" not in reply):
            reply["warning"] = self.warning
        self._replies += 1
        return reply
