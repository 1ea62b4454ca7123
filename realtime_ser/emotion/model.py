"""An exported emotion model: ONNX graph + model card, run on onnxruntime (no torch).

A model directory holds ``model.onnx`` and ``card.json``. The card says what the
graph expects and was trained on; :meth:`EmotionModel.load` checks the card
against the graph and against the features this runtime computes, so a
mismatched or damaged model is refused at startup instead of giving wrong scores.

Graph interface (see ``training/export.py``): inputs ``audio`` (B, T, Da) and/or
``text`` (B, T, Dt) float32 and ``mask`` (B, T) bool; outputs ``probs`` (B, T, C)
and, for fused models, ``audio_probs`` and ``text_probs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .speaker import SpeakerNorm

log = logging.getLogger(__name__)

CARD_FORMAT = "realtime-ser-emotion-model"
CARD_VERSION = 1
SHIFT = "audio_shift"
"""The graph input, and the key of a turn's vectors, that holds the speaker shift of its audio
vector (:class:`~.speaker.SpeakerNorm`)."""
REQUIRED = ("format", "format_version", "name", "version", "labels", "modalities", "inputs", "causal",
            "context", "features", "files")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """The parts of ``card.json`` the runtime relies on (the whole document is in ``raw``)."""

    name: str
    version: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    dims: dict[str, int]
    causal: bool
    max_turns: int
    features: dict[str, Any]
    raw: dict[str, Any]
    speaker_norm: SpeakerNorm | None = None
    """Speaker-adaptive audio vectors (``features.audio.speaker_norm``); None = raw vectors."""

    @property
    def input_dims(self) -> dict[str, int]:
        """Feature size of each input a turn may carry: the modalities' and, for a speaker-adaptive
        model, the speaker shift's (:data:`SHIFT`, the audio vector's size)."""
        return self.dims | ({SHIFT: self.dims["audio"]} if self.speaker_norm is not None else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "card.json") -> ModelCard:
        if not isinstance(d, dict):
            raise ModelError(f"{where}: not a JSON object")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ModelError(f"{where}: missing field(s) {', '.join(missing)}")
        if d["format"] != CARD_FORMAT or d["format_version"] != CARD_VERSION:
            raise ModelError(f"{where}: format {d['format']!r} v{d['format_version']!r} is not "
                             f"{CARD_FORMAT!r} v{CARD_VERSION}")
        labels = d["labels"]
        if (not isinstance(labels, list) or len(labels) < 2 or len(set(labels)) != len(labels)
                or not all(isinstance(x, str) and x for x in labels)):
            raise ModelError(f"{where}: labels must be a list of at least 2 distinct names, got {labels!r}")
        mods = d["modalities"]
        if not isinstance(mods, list) or not mods or any(m not in ("audio", "text") for m in mods):
            raise ModelError(f"{where}: modalities must be a non-empty subset of ['audio', 'text'], got {mods!r}")
        dims = {}
        for m in mods:
            try:
                dims[m] = int(d["inputs"][m]["dim"])
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"{where}: inputs.{m}.dim missing") from None
            if m not in d["features"]:
                raise ModelError(f"{where}: features.{m} missing (the {m} front end the model expects)")
        try:
            max_turns = int(d["context"]["max_turns"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where}: context.max_turns missing") from None
        if max_turns < 1:
            raise ModelError(f"{where}: context.max_turns must be >= 1")
        speaker_norm = SpeakerNorm.from_card(d["features"].get("audio"), dims["audio"], where) if "audio" in dims \
            else None
        return cls(str(d["name"]), str(d["version"]), tuple(labels), tuple(mods), dims, bool(d["causal"]),
                   max_turns, d["features"], d, speaker_norm)


class EmotionModel:
    """A loaded, verified model; :meth:`score` runs it on padded dialogue batches."""

    def __init__(self, directory: Path, card: ModelCard, session: Any) -> None:
        self.directory = directory
        self.card = card
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]
        self.takes_shift = any(i.name == SHIFT for i in session.get_inputs())
        """Whether the graph takes the speaker shift as an input of its own (:data:`SHIFT`): its
        classifier reads the shifted vector and its audio gate the raw one. A speaker-adaptive model
        without it reads the shifted vector only."""

    @classmethod
    def load(cls, directory: Path | str, threads: int = 1) -> EmotionModel:
        """Load and verify ``directory``; :class:`ModelError` says exactly what is wrong."""
        directory = Path(directory)
        card_path = directory / "card.json"
        onnx_path = directory / "model.onnx"
        for p in (card_path, onnx_path):
            if not p.is_file():
                raise ModelError(f"emotion model {directory}: {p.name} is missing")
        try:
            raw = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"emotion model {directory}: card.json is not valid JSON ({exc})") from None
        card = ModelCard.from_dict(raw, f"{card_path}")
        expected = raw["files"].get("model.onnx") if isinstance(raw["files"], dict) else None
        actual = sha256_file(onnx_path)
        if expected != actual:
            raise ModelError(f"emotion model {directory}: model.onnx does not match its card (sha256 {actual[:12]}, "
                             f"card says {str(expected)[:12]}): the file is damaged or belongs to another model")
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover
            raise ModelError("onnxruntime is not installed (pip install onnxruntime)") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"emotion model {directory}: model.onnx cannot be loaded ({exc})") from None
        cls._check_graph(directory, card, session)
        return cls(directory, card, session)

    @staticmethod
    def _check_graph(directory: Path, card: ModelCard, session: Any) -> None:
        inputs = {i.name: i.shape for i in session.get_inputs()}
        want = set(card.modalities) | {"mask"}
        if card.speaker_norm is not None and SHIFT in inputs:
            want.add(SHIFT)
        if set(inputs) != want:
            raise ModelError(f"emotion model {directory}: graph inputs {sorted(inputs)} do not match the card "
                             f"(expects {sorted(want)})")
        dims = card.input_dims
        for m in want - {"mask"}:
            dim = inputs[m][-1]
            if isinstance(dim, int) and dim != dims[m]:
                raise ModelError(f"emotion model {directory}: graph input {m} has {dim} features, card says "
                                 f"{dims[m]}")
        outputs = {o.name: o.shape for o in session.get_outputs()}
        if "probs" not in outputs:
            raise ModelError(f"emotion model {directory}: graph has no 'probs' output")
        c = outputs["probs"][-1]
        if isinstance(c, int) and c != len(card.labels):
            raise ModelError(f"emotion model {directory}: graph gives {c} classes, card lists {len(card.labels)} "
                             f"labels {list(card.labels)}")

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.card.labels

    def score(self, inputs: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per turn: ``{"probs": (B, T, C), "audio": ..., "text": ...}`` (per-modality where fused).

        ``inputs`` holds the raw features of each modality and, for a speaker-adaptive model, the
        speaker shift of each turn under :data:`SHIFT` (zeros where it is absent: every turn a
        speaker's first).
        """
        feed = {m: np.ascontiguousarray(inputs[m], dtype=np.float32) for m in self.card.modalities}
        shift = inputs.get(SHIFT)
        if self.takes_shift:
            feed[SHIFT] = np.zeros_like(feed["audio"]) if shift is None else np.ascontiguousarray(shift, np.float32)
        elif shift is not None and "audio" in feed:
            feed["audio"] = feed["audio"] - np.asarray(shift, dtype=np.float32)
        feed["mask"] = np.ascontiguousarray(mask, dtype=bool)
        values = self._session.run(self._outputs, feed)
        out = {}
        for name, value in zip(self._outputs, values, strict=True):
            out[name.removesuffix("_probs")] = value
        return out

    def score_dialogue(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores of every turn of one dialogue ``{m: (T, D)}`` exactly as the live runtime computes them.

        A causal model scores turn *n* from the window of the last ``context.max_turns`` turns
        ending at *n* (the windows are batched in one call); an offline model sees the whole
        dialogue at once.
        """
        t = len(next(iter(inputs.values())))
        if not self.card.causal:
            mask = np.ones((1, t), dtype=bool)
            return {k: v[0] for k, v in self.score({m: x[None] for m, x in inputs.items()}, mask).items()}
        w = min(self.card.max_turns, t)
        batch = {m: np.zeros((t, w, x.shape[1]), dtype=np.float32) for m, x in inputs.items()}
        mask = np.zeros((t, w), dtype=bool)
        last = np.zeros(t, dtype=np.int64)
        for n in range(t):
            lo = max(0, n - w + 1)
            for m, x in inputs.items():
                batch[m][n, : n + 1 - lo] = x[lo : n + 1]
            mask[n, : n + 1 - lo] = True
            last[n] = n - lo
        out = self.score(batch, mask)
        return {k: v[np.arange(t), last] for k, v in out.items()}

    def check_features(self, audio_key: str | None, text_key: str | None) -> None:
        """Refuse to run when this runtime's front ends differ from those the model was trained on."""
        for m, key in (("audio", audio_key), ("text", text_key)):
            if m not in self.card.modalities:
                continue
            want = self.card.features[m].get("key")
            if key != want:
                raise ModelError(f"emotion model {self.directory}: it expects {m} features {want!r} but this runtime "
                                 f"computes {key!r}; use the matching front end or retrain/export the model")
