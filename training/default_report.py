"""``python -m training.default_report``: the accuracy report of the packaged models.

Evaluates ``realtime_ser/data/models/{default,audio}`` (and an offline twin of the default
model, trained on the same data, for the offline-versus-causal gap) on the held-out sets
that :mod:`training.default_model` wrote, runs the held-out RAVDESS clips through the live
pipeline (``Pipeline`` with the real recognizer, as ``realtime-ser run`` does) and checks
that the live scores equal the evaluator's. Writes ``training/results/default_model.{json,md}``
and the held-out metrics into each model's card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.emotion.model import EmotionModel

from .data import REPO, read_manifest
from .evaluate import evaluate
from .metrics import classification_report

MODELS = REPO / "realtime_ser" / "data" / "models"
RUNS = REPO / "runs" / "default"
OUT = REPO / "training" / "results"


def live_scores(manifest_path: Path, model_dir: Path, asr: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Each clip of the manifest through the live pipeline; (dialogue_id, 0) -> the utterance events."""
    from realtime_ser.asr import create_backend
    from realtime_ser.config import AsrConfig, EmotionConfig, PipelineConfig
    from realtime_ser.pipeline import Pipeline
    from realtime_ser.sources import FileSource

    manifest = read_manifest(manifest_path)
    config = PipelineConfig(asr=AsrConfig(backend=asr), emotion=EmotionConfig(model=str(model_dir)))
    backend = create_backend(config.asr) if asr != "none" else None
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for u in manifest.utterances:
        path = manifest.audio_path(u)
        assert path is not None
        events: list[dict[str, Any]] = []

        def sink(event: dict[str, Any], events: list[dict[str, Any]] = events) -> None:
            events.append(event)

        Pipeline(config, FileSource(path, config.source), [sink], backend=backend).run()
        out[(u.dialogue_id, u.utt_index)] = {"utterances": [e for e in events if e["type"] == "utterance"]}
    return out


def compare_live(manifest_path: Path, model_dir: Path, asr: str, predictions: Path) -> dict[str, Any]:
    """Live accuracy on single-utterance clips, and its agreement with the evaluator's predictions."""
    import csv

    with open(predictions, newline="") as f:
        offline = {(r["dialogue_id"], int(r["utt_index"])): r for r in csv.DictReader(f)}
    model = EmotionModel.load(model_dir)
    labels = list(model.labels)
    t0 = time.perf_counter()
    live = live_scores(manifest_path, model_dir, asr)
    ys, probs, diffs, same = [], [], [], 0
    multi = 0
    for key, res in live.items():
        utts = res["utterances"]
        if len(utts) != 1 or utts[0]["emotion"] is None:
            multi += 1
            continue
        row = offline[key]
        scores = utts[0]["emotion"]["scores"]
        p = np.array([scores[lab] for lab in labels])
        q = np.array([float(row[f"p_{lab}"]) for lab in labels])
        diffs.append(float(np.abs(p - q).max()))
        same += int(labels[int(p.argmax())] == row["predicted"])
        ys.append(labels.index(row["label"]))
        probs.append(p)
    report = classification_report(np.array(ys), np.stack(probs), labels)
    return {
        "clips": len(live), "single_utterance_clips": len(ys), "skipped_multi_or_empty": multi,
        "metrics": report, "same_label_as_evaluator": same, "max_abs_score_difference": max(diffs),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.default_report", description=__doc__)
    p.add_argument("--offline", type=Path, default=MODELS / "offline",
                   help="the offline twin's export (default: the packaged one that emotion.revise uses)")
    p.add_argument("--no-live", action="store_true", help="skip the live-path run of the held-out clips")
    p.add_argument("--render", action="store_true", help="only rewrite default_model.md from default_model.json")
    args = p.parse_args(argv)
    if args.render:
        (OUT / "default_model.md").write_text(markdown(json.loads((OUT / "default_model.json").read_text())))
        return 0
    results: dict[str, Any] = {"held_out": "RAVDESS actors 07, 08, 15, 16; IEMOCAP Session 4 (constructed pairing "
                                           "voiced by those actors)"}
    sets = {
        "ravdess_asr": RUNS / "test-ravdess-asr.csv",
        "ravdess_ref": RUNS / "test-ravdess-ref.csv",
        "dialogues_ref": RUNS / "test-dialogues-ref.csv",
        "dialogues_asr": RUNS / "test-dialogues-asr.csv",
    }
    models = {"default": MODELS / "default", "audio": MODELS / "audio"}
    if (args.offline / "card.json").is_file():
        models["offline"] = args.offline
    for mname, mdir in models.items():
        for sname, spath in sets.items():
            pred = RUNS / f"pred-{mname}-{sname}.csv"
            r = evaluate(mdir, spath, pred)
            results.setdefault("evaluate", {}).setdefault(mname, {})[sname] = {
                "metrics": r["metrics"], "modalities": r.get("modalities", {})}
            m = r["metrics"]
            print(f"{mname:8s} {sname:14s} WA {100 * m['weighted_accuracy']:.1f} UAR {100 * m['uar']:.1f} "
                  f"n={m['n']}")
    if not args.no_live:
        for mname, asr in (("default", "pocketsphinx"), ("audio", "none")):
            live = compare_live(sets["ravdess_asr"], models[mname], asr, RUNS / f"pred-{mname}-ravdess_asr.csv")
            results.setdefault("live", {})[mname] = live
            m = live["metrics"]
            print(f"live {mname}: WA {100 * m['weighted_accuracy']:.1f} UAR {100 * m['uar']:.1f}, "
                  f"{live['same_label_as_evaluator']}/{live['single_utterance_clips']} same label as evaluate, "
                  f"max score difference {live['max_abs_score_difference']:.2e}")
    noise = RUNS / "noise.json"
    if noise.is_file():
        results["recognizer_noise"] = json.loads(noise.read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "default_model.json").write_text(json.dumps(results, indent=1) + "\n")
    (OUT / "default_model.md").write_text(markdown(results))
    for mname in [m for m in ("default", "audio", "offline") if m in models]:
        card_path = models[mname] / "card.json"
        card = json.loads(card_path.read_text())
        card["metrics"] = {
            "held_out": results["held_out"],
            **{s: {k: v for k, v in r["metrics"].items() if k != "confusion"}
               for s, r in results["evaluate"][mname].items()},
        }
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {OUT / 'default_model.md'}")
    return 0


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(r: dict[str, Any]) -> str:
    ev = r["evaluate"]
    names = {"ravdess_asr": "RAVDESS held-out clips, pocketsphinx transcripts",
             "ravdess_ref": "RAVDESS held-out clips, reference transcripts",
             "dialogues_ref": "Session 4 dialogues (constructed), reference transcripts",
             "dialogues_asr": "Session 4 dialogues (constructed), recognizer-noised transcripts"}
    lines = ["# The packaged emotion models: held-out accuracy", "",
             f"Held out from training: {r['held_out']}.", "",
             "| test set | model | WA % | UAR % | macro-F1 % | neutral | happy | sad | angry |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, title in names.items():
        for mname in ev:
            m = ev[mname][s]["metrics"]
            rec = m["per_class_recall"]
            lines.append(f"| {title} | {mname} | {_pct(m['weighted_accuracy'])} | {_pct(m['uar'])} | "
                         f"{_pct(m['macro_f1'])} | " + " | ".join(_pct(rec.get(k)) for k in
                                                              ("neutral", "happy", "sad", "angry")) + " |")
    for mname in ev:
        m = ev[mname]["ravdess_asr"]["metrics"]
        lines += ["", f"Confusion, {mname} on the held-out RAVDESS clips (rows true, columns predicted: "
                  + ", ".join(m["labels"]) + "):", ""]
        lines += ["    " + " ".join(f"{x:4d}" for x in row) for row in m["confusion"]]
    lines += ["", "## Gaps", ""]
    if "offline" in ev:
        for s_name in ("dialogues_ref", "dialogues_asr"):
            c, o = ev["default"][s_name]["metrics"], ev["offline"][s_name]["metrics"]
            lines.append(f"- Offline (sees later turns) against causal (live), {names[s_name]}: WA "
                         f"{_pct(o['weighted_accuracy'])} vs {_pct(c['weighted_accuracy'])} "
                         f"({100 * (o['weighted_accuracy'] - c['weighted_accuracy']):+.1f} points).")
    for mname in [m for m in ("default", "offline") if m in ev]:
        ref, asr = ev[mname]["dialogues_ref"]["metrics"], ev[mname]["dialogues_asr"]["metrics"]
        lines.append(f"- Reference against recognizer-noised transcripts, {mname}, Session 4 dialogues: WA "
                     f"{_pct(ref['weighted_accuracy'])} vs {_pct(asr['weighted_accuracy'])} "
                     f"({100 * (asr['weighted_accuracy'] - ref['weighted_accuracy']):+.1f} points).")
    d, a = ev["default"]["dialogues_ref"]["metrics"], ev["audio"]["dialogues_ref"]["metrics"]
    lines.append(f"- Audio + text + context against audio alone (same dialogues): WA {_pct(d['weighted_accuracy'])} "
                 f"vs {_pct(a['weighted_accuracy'])}. On the single RAVDESS clips the transcript carries no "
                 "emotion (every actor says the same two sentences), and there the audio-only model is as good "
                 "or better.")
    if "live" in r:
        lines += ["", "## Live path against the evaluator", "",
                  "| model | clips | live WA % | live UAR % | same label as evaluate | max score difference |",
                  "|---|---|---|---|---|---|"]
        for mname, live in r["live"].items():
            m = live["metrics"]
            lines.append(f"| {mname} | {live['single_utterance_clips']} | {_pct(m['weighted_accuracy'])} | "
                         f"{_pct(m['uar'])} | {live['same_label_as_evaluator']}/{live['single_utterance_clips']} | "
                         f"{live['max_abs_score_difference']:.1e} |")
    if "recognizer_noise" in r:
        n = r["recognizer_noise"]
        lines += ["", f"Recognizer noise used for training and for the noised test transcripts: measured "
                  f"pocketsphinx WER {n['wer']:.2f} on acted clips (substitution {n['rates']['substitution']:.2f}, "
                  f"deletion {n['rates']['deletion']:.2f}, insertion {n['rates']['insertion']:.2f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
