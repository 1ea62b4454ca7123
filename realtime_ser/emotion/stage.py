"""Per-session emotion stage: the session's dialogue context plus the shared scoring service.

With ``emotion.revise`` on, each finished turn also re-scores the earlier turns of the
window with an *offline* model (bidirectional: it sees what came after them), and an
earlier turn whose label changes gets an ``emotion.revised`` event. The live label of a
turn always comes from the causal model; revisions are a second opinion with hindsight.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import EmotionConfig
from ..errors import ModelError
from ..events import round_ms
from ..recognition import AUDIO, SPEECH, SPEECH_AHEAD
from .model import SHIFT, EmotionModel
from .service import DialogueContext, EmotionService, Turn, acquire, emotion_fields, packaged_model, release

log = logging.getLogger(__name__)


class EmotionStage:
    """Adds ``emotion`` to a session's utterances, in the order they finish.

    Created when the session starts, so a missing or mismatched model is a startup
    error; :meth:`annotate` blocks the calling session only, for at most ``timeout_s``.
    """

    def __init__(self, config: EmotionConfig, audio_only: bool) -> None:
        self.config = config
        self.service: EmotionService = acquire(config, audio_only)
        card = self.service.model.card
        self.context = DialogueContext(config.max_turns or card.max_turns, config.reset_after_s)
        self.speakers = card.speaker_norm.fresh() if card.speaker_norm is not None else None
        """Each speaker's running mean of this session (models trained with speaker-adaptive vectors)."""
        self._closed = False
        self.revisions: list[dict[str, Any]] = []
        """``emotion.revised`` fields produced by the last :meth:`annotate` (taken by the caller)."""
        self._offline: EmotionModel | None = None
        if config.revise:
            self._offline = self._load_offline(config, card.modalities)

    def _load_offline(self, config: EmotionConfig, modalities: tuple[str, ...]) -> EmotionModel:
        path = packaged_model("offline") if not config.revise_model else config.revise_model
        try:
            model = EmotionModel.load(path, threads=config.threads)
        except ModelError:
            self.close()
            raise
        live_norm, norm = self.service.model.card.speaker_norm, model.card.speaker_norm
        if (live_norm is None) != (norm is None) or (
                live_norm is not None and norm is not None and (
                    live_norm.shrink != norm.shrink or not np.allclose(live_norm.mean, norm.mean, atol=1e-4))):
            self.close()
            raise ModelError(f"emotion.revise_model {path}: it must read the audio vectors the live model reads "
                             f"(features.audio.speaker_norm of both cards alike)")
        if model.card.causal or model.card.modalities != modalities or model.labels != self.service.model.labels:
            self.close()
            raise ModelError(f"emotion.revise_model {path}: revisions need an offline (non-causal) model with the "
                             f"live model's modalities {list(modalities)} and labels "
                             f"{list(self.service.model.labels)}; it has causal={model.card.causal}, "
                             f"modalities {list(model.card.modalities)}, labels {list(model.labels)}")
        service = self.service  # the revisions score the vectors its front ends computed
        try:
            model.check_features(service.audio.key() if service.audio is not None else None,
                                 service.encoder.key() if service.encoder is not None else None)
        except ModelError as exc:
            self.close()
            raise ModelError(f"emotion.revise_model {path}: it must read the vectors the live model reads "
                             f"(another front end, input level or segmentation): {exc}") from exc
        return model

    @property
    def model_name(self) -> str:
        return f"{self.service.model.name} {self.service.model.version}"

    def encoder_ahead(self, backend: Any) -> Callable[[np.ndarray], concurrent.futures.Future[Any] | None] | None:
        """What starts the speech encoder during a pause (:meth:`EmotionService.encode_ahead`), for a
        recognition stage on ``backend``; None when the model reads no speech-encoder features or the
        recognizer hands over its own encoder pass (Whisper's)."""
        key = self.service.speech_key
        if not self.config.encode_ahead or not key:
            return None
        if backend is not None and getattr(backend, "speech_key", "") == key:
            return None
        return self.service.encode_ahead

    def annotate(self, fields: dict[str, Any]) -> str | None:
        """Fill ``fields["emotion"]`` and the emotion latencies; return an error message instead on failure."""
        samples = fields.pop(AUDIO, None)
        speech = fields.pop(SPEECH, None)
        ahead = fields.pop(SPEECH_AHEAD, None)
        if samples is None:
            samples = np.zeros(0, np.int16)
        t0 = time.perf_counter()
        waited = None
        if speech is None and ahead is not None:
            try:
                speech = ahead.result(timeout=self.config.timeout_s)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, ModelError):
                speech = None  # encoded again below, which says what went wrong if it fails again
            waited = (time.perf_counter() - t0) * 1000
        window = self.context.window(float(fields["start"]))
        speaker = str(fields.get("speaker", ""))
        shift = self.speakers.shift(speaker) if self.speakers is not None else None
        future = self.service.submit(samples, str(fields.get("text", "")), window, speech, shift)
        try:
            result = future.result(timeout=max(0.01, self.config.timeout_s - (time.perf_counter() - t0)))
        except concurrent.futures.TimeoutError:
            return f"emotion scoring took longer than emotion.timeout_s={self.config.timeout_s} s; sent without it"
        except ModelError as exc:
            return str(exc)
        fields["emotion"] = result["emotion"]
        if self.speakers is not None and shift is not None:
            self.speakers.add(speaker, result["vectors"]["audio"])
        latency = fields.setdefault("latency_ms", {})
        if waited is not None:
            latency["encoder_ahead"] = round_ms(waited)
        for key, value in result["latency_ms"].items():
            latency[key] = round_ms(value)
        turn = Turn(str(fields.get("speaker", "")), float(fields["start"]), float(fields["end"]),
                    result["vectors"], label=result["emotion"]["label"], channel=fields.get("channel"),
                    utterance_id=str(fields.get("utterance_id", "")))
        self.context.add(turn)
        self.revisions = self._revise() if self._offline is not None else []
        return None

    def _revise(self) -> list[dict[str, Any]]:
        """Re-score the window's earlier turns with the offline model; the turns whose label changed."""
        assert self._offline is not None
        turns = list(self.context.turns)
        if len(turns) < 2:
            return []
        mods = self._offline.card.modalities
        keys = [*mods, *([SHIFT] if "audio" in mods and all(SHIFT in t.vectors for t in turns) else [])]
        inputs = {k: np.stack([t.vectors[k] for t in turns])[None].astype(np.float32) for k in keys}
        out = self._offline.score(inputs, np.ones((1, len(turns)), dtype=bool))
        revised = []
        for j, turn in enumerate(turns[:-1]):
            emotion = emotion_fields(self._offline, out, 0, j, context_turns=len(turns) - 1)
            if emotion["label"] != turn.label:
                revised.append({"utterance_id": turn.utterance_id, "speaker": turn.speaker,
                                "channel": turn.channel if turn.channel is not None else 0,
                                "start": turn.start, "end": turn.end, "previous_label": turn.label,
                                "emotion": emotion})
                turn.label = emotion["label"]
        return revised

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self.service)
