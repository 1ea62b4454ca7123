"""``python -m training evaluate``: score an exported model on any manifest.

Runs the exported ONNX model through the runtime's own loader and scoring
(:meth:`realtime_ser.emotion.model.EmotionModel.score_dialogue`) on features from
the runtime's own front ends, so the figures are those the live path gives for the
same audio and transcripts. Needs no torch.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.config import PipelineConfig
from realtime_ser.emotion.model import SHIFT, EmotionModel
from realtime_ser.features.audio import extra_window
from realtime_ser.features.speech import SpeechEncoderConfig

from .data import ManifestError, read_manifest
from .features import FeatureExtractor, FeatureSettings
from .metrics import classification_report


def extractor_for(model: EmotionModel, pipeline: PipelineConfig | None = None) -> FeatureExtractor:
    """A feature extractor with the front ends the model's card names; refuses a mismatch. ``pipeline``:
    the segmentation settings to cut each clip with (the defaults, as live, unless given)."""
    text = model.card.features.get("text", {})
    audio = model.card.features.get("audio", {})
    speech = audio.get("speech", {}).get("config", {})
    extra = [e.get("config", {}) for e in audio.get("speech", {}).get("extra", [])]
    window = extra_window([SpeechEncoderConfig(**e) for e in extra], SpeechEncoderConfig(**speech)) if extra else 0
    settings = FeatureSettings(text_encoder=text.get("kind", "contextual"), text_encoder_dir=text_encoder_dir(model),
                               audio=audio.get("kind", "acoustic"), speech_level_dbfs=speech.get("level_dbfs"),
                               speech_layers=int(speech.get("encoder_layers", 0)),
                               speech_extra_layers=tuple(int(e.get("encoder_layers", 0)) for e in extra),
                               speech_extra_window_s=window)
    extractor = FeatureExtractor(settings, pipeline=pipeline)
    audio_key = extractor.front_end.key() if "audio" in model.card.modalities else None
    text_key = extractor.text_encoder.key() if "text" in model.card.modalities else None
    model.check_features(audio_key, text_key)
    return extractor


def text_encoder_dir(model: EmotionModel) -> str:
    """The prepared text encoder a model was trained with ('' = the default one)."""
    from realtime_ser.features.text import encoder_dir_for

    text = model.card.features.get("text")
    return str(encoder_dir_for(text)) if text else ""


def evaluate(model_dir: Path, manifest_path: Path, predictions: Path | None = None,
             pipeline: PipelineConfig | None = None) -> dict[str, Any]:
    model = EmotionModel.load(model_dir)
    needs_audio = "audio" in model.card.modalities
    manifest = read_manifest(manifest_path, labels=model.labels, require_audio=needs_audio)
    labeled = [u for u in manifest.utterances if u.labeled]
    if not labeled:
        raise ManifestError(f"{manifest_path}: no labeled utterance to evaluate (labels: {', '.join(model.labels)})")
    extractor = extractor_for(model, pipeline)
    index = {lab: i for i, lab in enumerate(model.labels)}
    uts = manifest.utterances
    feats: dict[str, np.ndarray] = {}
    if "text" in model.card.modalities:
        feats["text"] = extractor.text([u.text for u in uts])
    if needs_audio:
        feats["audio"] = extractor.audio(manifest, uts)
    ys: list[int] = []
    probs: dict[str, list[np.ndarray]] = {}
    rows = []
    pos = 0
    for d in manifest.dialogues():
        n = len(d)
        inputs = {m: x[pos : pos + n] for m, x in feats.items()}
        if model.card.speaker_norm is not None and "audio" in inputs:
            # A dialogue is a session: each speaker's turns shifted by their earlier ones, as live.
            speakers = model.card.speaker_norm.fresh()
            inputs[SHIFT] = np.stack([speakers.step(u.speaker, a) for u, a in zip(d, inputs["audio"], strict=True)])
        scores = model.score_dialogue(inputs)
        pos += n
        for i, u in enumerate(d):
            if u.labeled:
                ys.append(index[u.label])
                for k, v in scores.items():
                    probs.setdefault(k, []).append(v[i])
                p = scores["probs"][i]
                rows.append({"dialogue_id": u.dialogue_id, "utt_index": u.utt_index, "label": u.label,
                             "predicted": model.labels[int(p.argmax())],
                             **{f"p_{lab}": f"{float(x):.6f}" for lab, x in zip(model.labels, p, strict=True)}})
    report: dict[str, Any] = {
        "model": {"name": model.name, "version": model.version, "dir": str(model_dir),
                  "sha256": model.card.raw["files"]["model.onnx"]},
        "manifest": str(manifest_path),
        "causal": model.card.causal,
        "context_max_turns": model.card.max_turns,
        "metrics": classification_report(np.array(ys), np.stack(probs["probs"]), model.labels),
    }
    if "audio_reliability" in probs:
        report["audio_weight"] = float(np.clip(np.stack(probs["audio_reliability"]), 0.0, 1.0).mean())
    for m in model.card.modalities:
        if m in probs:
            report.setdefault("modalities", {})[m] = classification_report(np.array(ys), np.stack(probs[m]),
                                                                           model.labels)
    if predictions is not None:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        with open(predictions, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return report


def format_report(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [
        f"model {report['model']['name']} {report['model']['version']} on {report['manifest']} "
        f"({m['n']} labeled utterances, {'causal' if report['causal'] else 'offline'} context)",
        f"  accuracy (WA, weighted accuracy: share of utterances right) {100 * m['weighted_accuracy']:.1f}%  "
        f"UAR (mean recall over classes) {100 * m['uar']:.1f}%",
        f"  macro-F1 {100 * m['macro_f1']:.1f}%  weighted F1 {100 * m['weighted_f1']:.1f}%  "
        f"ROC AUC {100 * m['roc_auc']:.1f}%  ECE {m['ece']:.3f}",
        "  recall: " + ", ".join(f"{k} {'-' if v is None else f'{100 * v:.1f}%'}"
                                 for k, v in m["per_class_recall"].items()),
        "  confusion (rows true, columns predicted; " + ", ".join(m["labels"]) + "):",
    ]
    lines += ["    " + " ".join(f"{x:5d}" for x in row) for row in m["confusion"]]
    if report.get("audio_weight") is not None:
        lines.append(f"  audio weight in the fusion (1 = the voice fully trusted), mean {report['audio_weight']:.2f}")
    for mod, r in report.get("modalities", {}).items():
        lines.append(f"  {mod} branch alone: accuracy {100 * r['weighted_accuracy']:.1f}%  UAR {100 * r['uar']:.1f}%  "
                     f"ECE {r['ece']:.3f}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return out
