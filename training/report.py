"""``python -m training.report``: the tables of ``training/RESULTS.md`` from the runs' metrics.

Each experiment writes ``runs/<name>/metrics.json``; this script turns the ones that
exist into the tables of the report (``training/results/tables.md``), which RESULTS.md
quotes. Missing experiments are listed, not invented.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .data import REPO
from .metrics import format_pct

RUNS = REPO / "runs"
OUT = REPO / "training" / "results"


def _load(name: str) -> dict[str, Any] | None:
    """A run's metrics: ``runs/<name>/metrics.json``, else the committed compact copy in training/results."""
    for path in (RUNS / name / "metrics.json", OUT / f"{name}.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _variant(doc: dict[str, Any], **settings: Any) -> dict[str, Any] | None:
    for v in doc["variants"]:
        cfg = v["config"]
        if all(_get(cfg, k) == val for k, val in settings.items()):
            return v
    return None


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return cfg[section][key]


def _fold_wa(v: dict[str, Any]) -> dict[str, str]:
    return {k: f"{100 * f['weighted_accuracy']['mean']:.1f}" for k, f in v["per_fold"].items()}


def text_table(doc: dict[str, Any]) -> list[str]:
    lines = ["| folds | context | Ses01 | Ses02 | Ses03 | Ses04 | mean WA % | UAR % | macro-F1 % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for folds in ("session", "speaker_script"):
        for causal in (False, True):
            v = _variant(doc, **{"protocol.folds": folds, "model.causal": causal})
            if v is None:
                continue
            per = list(_fold_wa(v).values())
            s = v["summary"]
            lines.append(f"| {'session' if folds == 'session' else 'speaker + script disjoint'} | "
                         f"{'causal' if causal else 'offline'} | " + " | ".join(per) +
                         f" | {format_pct(s['weighted_accuracy'])} | {format_pct(s['uar'])} | "
                         f"{format_pct(s['macro_f1'])} |")
    return lines


def generic_table(doc: dict[str, Any]) -> list[str]:
    lines = ["| variant | WA % | UAR % | macro-F1 % | ROC AUC % |", "|---|---|---|---|---|"]
    for v in doc["variants"]:
        s = v["summary"]
        lines.append(f"| {v['variant']} | {format_pct(s['weighted_accuracy'])} | {format_pct(s['uar'])} | "
                     f"{format_pct(s['macro_f1'])} | {format_pct(s['roc_auc'])} |")
    return lines


def per_class(v: dict[str, Any]) -> list[str]:
    labels = v["runs"][0]["metrics"]["labels"]
    import numpy as np

    cm = np.sum([np.array(r["metrics"]["confusion"]) for r in v["runs"]], axis=0)
    recall = cm.diagonal() / np.maximum(cm.sum(1), 1)
    lines = ["| true \\ predicted | " + " | ".join(labels) + " | recall % |",
             "|---|" + "---|" * (len(labels) + 1)]
    for lab, row, r in zip(labels, cm, recall, strict=True):
        lines.append(f"| {lab} | " + " | ".join(str(int(x)) for x in row) + f" | {100 * r:.1f} |")
    return lines


def by_table(doc: dict[str, Any]) -> list[str]:
    """Each variant on the test turns of each value of its ``protocol.report_by`` columns (mean ± std over
    seeds of the mean over folds), with the number of such turns per seed."""
    import numpy as np

    lines = ["| variant | turns | n | WA % | UAR % |", "|---|---|---|---|---|"]
    for v in doc["variants"]:
        by = v["runs"][0].get("by", {}) if v["runs"] else {}
        seeds = sorted({r["seed"] for r in v["runs"]})
        for column, values in by.items():
            for value in values:
                cells = {}
                for key in ("weighted_accuracy", "uar"):
                    per_seed = [np.mean([r["by"][column][value]["metrics"][key] for r in v["runs"] if r["seed"] == s])
                                for s in seeds]
                    cells[key] = format_pct({"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
                                             "n": len(seeds)})
                n = sum(r["by"][column][value]["metrics"]["n"] for r in v["runs"]) // max(1, len(seeds))
                lines.append(f"| {v['variant']} | {column} = {value} | {n} | {cells['weighted_accuracy']} | "
                             f"{cells['uar']} |")
    return lines


def fusion_table(doc: dict[str, Any]) -> list[str]:
    lines = ["| depth | method | single loss WA % | single UAR % | perspective WA % | perspective UAR % |",
             "|---|---|---|---|---|---|"]
    for depth in ("early", "middle", "late", "logits"):
        for method in ("add", "concat", "attention"):
            cells = []
            for loss in ("single", "perspective"):
                v = _variant(doc, **{"model.fusion_depth": depth, "model.fusion_method": method, "train.loss": loss})
                if v is None:
                    cells += ["–", "–"]
                else:
                    cells += [format_pct(v["summary"]["weighted_accuracy"]), format_pct(v["summary"]["uar"])]
            lines.append(f"| {depth} | {method} | " + " | ".join(cells) + " |")
    return lines


def modality_table(doc: dict[str, Any]) -> list[str]:
    """Per-modality heads of fused models (what each branch alone gets inside the fused model)."""
    lines = ["| variant | fused WA % | audio head WA % | text head WA % |", "|---|---|---|---|"]
    import numpy as np

    for v in doc["variants"]:
        runs = v["runs"]
        if not runs or not runs[0].get("modalities"):
            continue
        fused = np.mean([r["metrics"]["weighted_accuracy"] for r in runs])
        heads = {m: np.mean([r["modalities"][m]["weighted_accuracy"] for r in runs]) for m in ("audio", "text")}
        lines.append(f"| {v['variant']} | {100 * fused:.1f} | {100 * heads['audio']:.1f} | {100 * heads['text']:.1f} |")
    return lines


def main() -> int:
    sections: list[str] = ["# Experiment tables", "",
                           "Generated by `python -m training.report` from `runs/*/metrics.json`. "
                           "Mean ± standard deviation over seeds of the mean over folds.", ""]
    missing = []
    spec = [
        ("text_iemocap", "Text only, IEMOCAP transcripts (weighted accuracy per test session)", text_table),
        ("text_iemocap_residual", "Text only, IEMOCAP transcripts, causal: each turn's own vector beside its "
                                  "context (model.turn_residual)", generic_table),
        ("text_encoders", "Contextual vs static text vectors (IEMOCAP, leave-one-session-out)", generic_table),
        ("audio_ravdess", "Audio only, RAVDESS 4 classes, speaker-disjoint (5 x 4 actors)", generic_table),
        ("audio_ravdess8", "Audio only, RAVDESS 8 classes, speaker-disjoint (5 x 4 actors)", generic_table),
        ("audio_tess", "Audio only, TESS 4 classes: within speaker, and trained on RAVDESS", generic_table),
        ("audio_combined", "Combining corpora: RAVDESS folds, trained with TESS added", generic_table),
        ("fusion", "Fusion table (constructed IEMOCAP-text x RAVDESS-audio pairing, leave-one-session-out, "
                   "offline)", fusion_table),
        ("fusion_unimodal", "Unimodal references on the constructed pairing (leave-one-session-out, offline, "
                            "one seed)", generic_table),
        ("strategies", "Fusion training strategies (constructed pairing, causal, late concat, perspective loss)",
         generic_table),
        ("text_finetuned", "Text only, IEMOCAP transcripts, the text encoder fine-tuned per fold", text_table),
        ("voices_ravdess", "Every voice: RAVDESS 4 classes, five groups of four actors, trained on every other "
                           "voice (front ends compared)", generic_table),
        ("voices_ravdess8", "Every voice: RAVDESS 8 classes, five groups of four actors", generic_table),
        ("voices_crema_d", "Every voice: CREMA-D 4 classes, five groups of 15 actors", generic_table),
        ("voices_crema_d6", "Every voice: CREMA-D 6 classes, five groups of 15 actors", generic_table),
        ("voices_cross", "Cross-corpus: trained on RAVDESS + CREMA-D, tested on TESS", generic_table),
        ("voices_cross_crema_d", "Cross-corpus: trained on RAVDESS + TESS, tested on CREMA-D", generic_table),
        ("voices_ravdess_speaker_norm", "Speaker-adaptive: RAVDESS 4 classes, five groups of four actors",
         generic_table),
        ("voices_crema_d_speaker_norm", "Speaker-adaptive: CREMA-D 4 classes, five groups of 15 actors", generic_table),
        ("voices_ravdess8_speaker_norm", "Speaker-adaptive: RAVDESS 8 classes", generic_table),
        ("voices_crema_d6_speaker_norm", "Speaker-adaptive: CREMA-D 6 classes", generic_table),
        ("voices_cross_speaker_norm", "Speaker-adaptive, cross-corpus: trained on RAVDESS + CREMA-D, tested on TESS",
         generic_table),
        ("default_cv", "The packaged default model's recipe, voice group and IEMOCAP session held out together",
         generic_table),
        ("default_cv_speaker_norm", "The default model's recipe, speaker-adaptive, on the same folds", generic_table),
        ("default_cv_audio", "The audio model's recipe on the default recipe's folds", generic_table),
        ("default_cv_audio_speaker_norm", "The audio model's recipe on the default recipe's folds, speaker-adaptive",
         generic_table),
    ]
    for name, title, fn in spec:
        doc = _load(name)
        if doc is None:
            missing.append(name)
            continue
        sections += [f"## {title}", "", f"`runs/{name}`, commit `{doc['git_commit'][:10]}`, "
                     f"{doc['seconds'] / 60:.1f} min on this machine.", ""]
        sections += fn(doc) + [""]
        if name == "fusion":
            sections += ["Per-modality heads inside the fused models (mean over runs):", ""]
            sections += modality_table(doc) + [""]
        if any(r.get("by") for v in doc["variants"] for r in v["runs"][:1]):
            sections += ["The same runs on subsets of the test turns (`protocol.report_by`):", ""]
            sections += by_table(doc) + [""]
        if name in ("audio_ravdess", "text_iemocap"):
            v = doc["variants"][0] if name == "audio_ravdess" else _variant(
                doc, **{"protocol.folds": "session", "model.causal": True})
            if v is not None:
                sections += [f"Confusion matrix, summed over folds and seeds ({v['variant']}):", ""]
                sections += per_class(v) + [""]
    if missing:
        sections += ["Not run yet: " + ", ".join(missing), ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tables.md").write_text("\n".join(sections))
    for name, _, _ in spec:
        doc = _load(name)
        if doc is not None:
            (OUT / f"{name}.json").write_text(json.dumps(_compact(doc), indent=1) + "\n")
    print(f"wrote {OUT / 'tables.md'}")
    return 0


def _compact(doc: dict[str, Any]) -> dict[str, Any]:
    """The metrics without the per-epoch histories (kept in runs/)."""
    out = dict(doc)
    out["variants"] = [{**v, "runs": [{k: r[k] for k in r if k != "history"} for r in v["runs"]]}
                       for v in doc["variants"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
