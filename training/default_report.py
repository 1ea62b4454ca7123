"""``python -m training.default_report``: how good the packaged emotion models are on voices they never heard.

Reads the experiments that ``make default-model`` runs (``runs/<name>/metrics.json`` and the
test predictions beside them, or the committed copies in ``training/results/``) and writes
``training/results/default_model.{json,md}`` with reliability diagrams in
``training/results/img/``:

1. **Every voice group of every corpus** (``voices_ravdess``, ``voices_crema_d``): the audio model's
   recipe trained on all other data, tested on one speaker group at a time, so every actor is
   tested once; per class, with the test-set size and the spread over seeds.
2. **Cross-corpus** (``voices_cross``, ``voices_cross_crema_d``): a whole corpus never heard.
3. **The default model's recipe** (``default_cv``): four folds, each holding out a group of voices
   with the IEMOCAP session they voice; per kind of test turn (constructed dialogues with typed or
   recognizer-noised transcripts, acted clips), per corpus of the voice, fused and per modality,
   with the audio's weight in the fusion.
4. **IEMOCAP text**, fine-tuned encoder (``text_finetuned``) against the frozen one (``text_iemocap``).
5. **Calibration**: ECE (15 bins) of each, pooled over the folds of a seed (small folds make a
   per-fold ECE mostly sampling noise), and reliability diagrams.
6. **The packaged models themselves** on the clips of the two actors held out of their training
   (the ``demo-voices`` actors): through ``python -m training evaluate`` and through the live
   pipeline (``realtime-ser run``'s code path), which must give the same labels.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.emotion.model import EmotionModel

from .calibration import ece, ece_floor, reliability_diagram
from .data import REPO, Utterance, read_manifest, write_manifest
from .demo_voices import DEMO_ACTORS
from .evaluate import evaluate
from .metrics import classification_report

MODELS = REPO / "realtime_ser" / "data" / "models"
RUNS = REPO / "runs"
OUT = REPO / "training" / "results"
IMG = OUT / "img"
LABELS = ("neutral", "happy", "sad", "angry")


# --------------------------------------------------------------------------- experiment results


def load_run(name: str) -> tuple[dict[str, Any], Path] | None:
    """An experiment's metrics and the folder its predictions are in (the run, else the committed copy)."""
    for folder, path in ((RUNS / name, RUNS / name / "metrics.json"), (OUT / name, OUT / f"{name}.json")):
        if path.is_file():
            return json.loads(path.read_text()), folder
    return None


def predictions(folder: Path, variant: dict[str, Any]) -> dict[str, np.ndarray] | None:
    name = variant.get("predictions")
    path = folder / name if name else None
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def pooled(pred: dict[str, np.ndarray], labels: list[str], output: str = "logits",
           where: np.ndarray | None = None) -> dict[str, Any]:
    """Per seed: one report over all the folds' test turns (so ECE is not the noise of a small fold);
    then mean and spread over seeds."""
    keep = np.ones(len(pred["y"]), bool) if where is None else where
    per_seed = []
    for seed in sorted(set(pred["seed"][keep].tolist())):
        sel = keep & (pred["seed"] == seed)
        per_seed.append(classification_report(pred["y"][sel], pred[output][sel], labels))
        # What a perfectly calibrated model as confident as this one would show on this many turns.
        per_seed[-1]["ece_floor"] = ece_floor(pred[output][sel], draws=100)
    out: dict[str, Any] = {"n_per_seed": per_seed[0]["n"] if per_seed else 0, "seeds": len(per_seed)}
    for k in ("weighted_accuracy", "uar", "macro_f1", "weighted_f1", "ece", "ece_floor"):
        v = np.array([r[k] for r in per_seed])
        out[k] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    out["per_class_recall"] = {lab: float(np.mean([r["per_class_recall"][lab] or 0 for r in per_seed]))
                               for lab in labels}
    out["support"] = per_seed[0]["support"] if per_seed else {}
    out["confusion"] = np.sum([r["confusion"] for r in per_seed], axis=0).tolist()
    if "reliability" in pred and output == "logits":
        out["audio_weight_mean"] = float(pred["reliability"][keep].mean())
    return out


def variant_by(doc: dict[str, Any], **settings: Any) -> dict[str, Any] | None:
    for v in doc["variants"]:
        cfg = v["config"]
        if all(cfg[k.split(".")[0]][k.split(".")[1]] == val for k, val in settings.items()):
            return v
    return None


def experiment(name: str, curves: list[tuple[str, str, np.ndarray, np.ndarray]], **settings: Any
               ) -> dict[str, Any] | None:
    """The pooled report of one experiment's variant (and its reliability curve)."""
    found = load_run(name)
    if found is None:
        return None
    doc, folder = found
    v = variant_by(doc, **settings) if settings else doc["variants"][0]
    if v is None:
        return None
    labels = list(v["config"]["model"]["labels"])
    pred = predictions(folder, v)
    result: dict[str, Any] = {"experiment": name, "variant": v["variant"], "description": doc.get("description", ""),
                              "folds": list(v["per_fold"]), "git_commit": doc.get("git_commit", ""),
                              "summary": v["summary"], "labels": labels,
                              "level_dbfs": v["config"].get("features", {}).get("speech_level_dbfs"),
                              "speech_layers": v["config"].get("features", {}).get("speech_layers", 0),
                              "speech_extra_layers": v["config"].get("features", {}).get("speech_extra_layers", []),
                              "training": _training_settings(v["config"].get("train", {}))}
    if pred is not None:
        result["pooled"] = pooled(pred, labels)
        seed0 = pred["seed"] == pred["seed"].min()
        curves.append((name, v["variant"], pred["logits"][seed0], pred["y"][seed0]))
        if "audio" in pred and "text" in pred:
            result["pooled_modalities"] = {m: pooled(pred, labels, m) for m in ("audio", "text")}
        result["by"] = {}
        for key in pred:
            if key.startswith("by:"):
                column = key[3:]
                result["by"][column] = {}
                for value in sorted(set(pred[key].tolist())):
                    sel = pred[key] == value
                    entry = {"fused": pooled(pred, labels, "logits", sel)}
                    for m in ("audio", "text"):
                        if m in pred:
                            entry[m] = pooled(pred, labels, m, sel)
                    result["by"][column][value] = entry
    return result


# --------------------------------------------------------------------------- the packaged models


def held_out_clips(out: Path) -> Path:
    """A manifest of the 4-class clips of the demo-voices actors (in no packaged model's training)."""
    from .train import DataConfig, resolve_manifest

    crema = resolve_manifest("crema_d", DataConfig(manifests=("crema_d",)))
    rows = [u for u in crema.utterances if u.speaker in DEMO_ACTORS]
    absolute = [Utterance(u.dialogue_id, 0, u.speaker, u.label, u.text, str(crema.audio_path(u)), u.extra)
                for u in rows]
    return write_manifest(out, absolute)


def live_scores(manifest_path: Path, model_dir: Path, asr: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Each clip of the manifest through the live pipeline (as ``realtime-ser run`` runs it)."""
    from realtime_ser.asr import close_backend, create_backend
    from realtime_ser.config import AsrConfig, EmotionConfig, PipelineConfig
    from realtime_ser.pipeline import Pipeline
    from realtime_ser.sources import FileSource

    manifest = read_manifest(manifest_path)
    config = PipelineConfig(asr=AsrConfig(backend=asr), emotion=EmotionConfig(model=str(model_dir)))
    backend = create_backend(config.asr) if asr != "none" else None
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for u in manifest.utterances:
            path = manifest.audio_path(u)
            assert path is not None
            events: list[dict[str, Any]] = []
            Pipeline(config, FileSource(path, config.source), [events.append], backend=backend).run()
            out[(u.dialogue_id, u.utt_index)] = [e for e in events if e["type"] == "utterance"]
    finally:
        close_backend(backend)
    return out


def compare_live(manifest_path: Path, model_dir: Path, asr: str, out: Path) -> dict[str, Any]:
    """The live path's labels and scores against the evaluator's, clip by clip. The live path hears each
    clip as ``realtime-ser run --input CLIP --asr ASR`` does; the evaluator then scores the same clips with
    the transcripts the live run heard (none for the audio model), so both see the same input."""
    model = EmotionModel.load(model_dir)
    labels = list(model.labels)
    t0 = time.perf_counter()
    live = live_scores(manifest_path, model_dir, asr)
    manifest = read_manifest(manifest_path)
    heard = [Utterance(u.dialogue_id, u.utt_index, u.speaker, u.label,
                       " ".join(e["text"] for e in live.get((u.dialogue_id, u.utt_index), [])) if asr != "none"
                       else u.text, str(manifest.audio_path(u)), u.extra) for u in manifest.utterances]
    pred = out.with_suffix(".pred.csv")
    evaluate(model_dir, write_manifest(out, heard), pred)
    with open(pred, newline="") as f:
        offline = {(r["dialogue_id"], int(r["utt_index"])): r for r in csv.DictReader(f)}
    same, diffs, skipped = 0, [], 0
    for key, utts in live.items():
        if len(utts) != 1 or utts[0]["emotion"] is None:
            skipped += 1
            continue
        row = offline[key]
        scores = utts[0]["emotion"]["scores"]
        p = np.array([scores[lab] for lab in labels])
        q = np.array([float(row[f"p_{lab}"]) for lab in labels])
        diffs.append(float(np.abs(p - q).max()))
        same += int(labels[int(p.argmax())] == row["predicted"])
    return {"asr": asr, "clips": len(live), "compared": len(diffs), "skipped_multi_or_empty": skipped,
            "same_label_as_evaluator": same, "max_abs_score_difference": max(diffs) if diffs else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def packaged(results: dict[str, Any], live: bool) -> None:
    manifest = held_out_clips(RUNS / "default" / "held-out-demo-actors.csv")
    for name in ("default", "audio", "offline"):
        directory = MODELS / name
        if not (directory / "card.json").is_file():
            continue
        pred = RUNS / "default" / f"pred-{name}-held-out.csv"
        r = evaluate(directory, manifest, pred)
        members = json.loads((directory / "card.json").read_text()).get("members", {}).get("count", 1)
        entry: dict[str, Any] = {"metrics": r["metrics"], "modalities": r.get("modalities", {}), "members": members}
        if live and name in ("default", "audio"):
            asr = "whisper" if name == "default" else "none"
            entry["live"] = compare_live(manifest, directory, asr, RUNS / "default" / f"live-{name}-held-out.csv")
        results.setdefault("packaged", {})[name] = entry
        m = r["metrics"]
        print(f"packaged {name}: {m['n']} held-out clips, UAR {100 * m['uar']:.1f} ECE {m['ece']:.3f}")


# --------------------------------------------------------------------------- report


def _pm(stat: dict[str, float], pct: bool = True) -> str:
    """Mean ± spread over seeds; a single seed's figure alone (no spread to show)."""
    scale = 100 if pct else 1
    fmt = ".1f" if pct else ".3f"
    if "min" in stat and stat["min"] == stat["max"]:
        return f"{scale * stat['mean']:{fmt}}"
    return f"{scale * stat['mean']:{fmt}} ± {scale * stat['std']:{fmt}}"


def _ece(p: dict[str, Any]) -> str:
    floor = p.get("ece_floor")
    return _pm(p["ece"], False) + (f" ({floor['mean']:.3f})" if floor else "")


def _recall(p: dict[str, Any], labels: list[str]) -> str:
    return " | ".join(f"{100 * p['per_class_recall'][lab]:.1f}" for lab in labels)


PACKAGED_RECIPE = REPO / "configs" / "train" / "default_audio.toml"
"""The packaged audio model's config: the recipe the voice rows are held against."""
TRAINING_SETTINGS = {"weight_average": "weights averaged over the training steps (`train.weight_average`)",
                     "calibrate_augmented": "temperatures fitted on the held-out voices' augmented copies too "
                                            "(`train.calibrate_augmented`)",
                     "calibrate_balance": "each corpus's held-out turns weighed alike in the temperature fit "
                                          "(`train.calibrate_balance`)"}
"""The trainer's settings beyond the defaults that the report names per row, and how it names them."""


def _training_settings(train: dict[str, Any]) -> list[str]:
    """Which of :data:`TRAINING_SETTINGS` a run's ``[train]`` section turns on."""
    return [k for k in TRAINING_SETTINGS if train.get(k)]


def _training_note(titles: dict[str, str], voices: dict[str, Any]) -> list[str]:
    """A line per training setting of :data:`TRAINING_SETTINGS`: which rows' models were trained with it, and
    whether the packaged audio model's recipe (:data:`PACKAGED_RECIPE`) is."""
    recipe = tomllib.loads(PACKAGED_RECIPE.read_text()).get("train", {})
    packaged = set(_training_settings(recipe))
    lines = []
    for key, words in TRAINING_SETTINGS.items():
        rows = [title for name, title in titles.items() if key in (voices.get(name) or {}).get("training", [])]
        if rows:
            lines.append(f"- {words[0].upper() + words[1:]}: {'; '.join(rows)}"
                         + ("; and the packaged models' recipe." if key in packaged else
                            ". Not (yet) the packaged models' recipe."))
    return ["", *lines] if lines else []


def _level(e: dict[str, Any]) -> str:
    """The input level the experiment's voice features were computed at (``features.speech_level_dbfs``), and
    the encoder's depth where it was not all of it (``features.speech_layers``), and the extra depths read
    beside it (``features.speech_extra_layers``)."""
    level = e.get("level_dbfs")
    text = "as recorded" if level is None else f"{level:g} dBFS"
    layers = e.get("speech_layers") or 0
    extra = e.get("speech_extra_layers") or []
    if layers or extra:
        text += f"; first {layers} encoder layers" if layers else "; all encoder layers"
        text += "".join(f" + first {n} layer{'s' if n > 1 else ''}" for n in extra)
    return text


def markdown(r: dict[str, Any]) -> str:
    lines = ["# The packaged emotion models on voices they never heard", "",
             "Written by `python -m training.default_report` from the experiments `make default-model` runs. "
             "Figures are per seed over all the test turns of all folds (every actor of the corpus tested "
             "exactly once), then mean ± standard deviation over the seeds (3 unless stated); ECE is the "
             "expected calibration error of the top probability after the temperature fitted on held-out "
             "training voices (15 bins); in brackets, its floor: the ECE a perfectly calibrated model as "
             "confident as this one would show on this many turns (`training.calibration.ece_floor`). n is "
             "the number of test turns per seed.", ""]
    lines += ["## Speaker-independent, every group of actors of each corpus (audio model's recipe)", "",
              "Speaker-adaptive rows: each utterance's voice vector shifted by the running mean of the same "
              "speaker's earlier ones (`features.speaker_norm`, `realtime_ser.emotion.speaker`), each test "
              "actor's clips taken as one session in a random order; no test actor is trained on. The packaged "
              "models read raw vectors: in dialogues whose speakers hold one emotion for many turns, the "
              "running mean takes that emotion in (the default recipe's sections below). Input level: the "
              "level each utterance was scaled to before the speech encoder (`features.speech_level_dbfs`; "
              "the packaged models use -26 dBFS), and which of the encoder's layers are read: the first few alone "
              "(`features.speech_layers`: the 6- and 8-class rows), or all of them with the first layer's own vector "
              "beside them (`features.speech_extra_layers`: the 4-class rows and the packaged audio model).", "",
              "| test set | classes | n | input level | UAR % | WA % (accuracy) | ECE (floor) | recall "
              + " / ".join(LABELS) + " |",
              "|---|---|---|---|---|---|---|---|"]
    titles = {"ravdess": "RAVDESS, 5 groups of 4 actors", "crema_d": "CREMA-D, 5 groups of 15 actors",
              "ravdess8": "RAVDESS, 8 classes", "crema_d6": "CREMA-D, 6 classes",
              "cross_tess": "TESS, trained without it (RAVDESS + CREMA-D)",
              "cross_crema_d": "CREMA-D, trained without it (RAVDESS + TESS)",
              "ravdess_adaptive": "RAVDESS, speaker-adaptive",
              "crema_d_adaptive": "CREMA-D, speaker-adaptive",
              "ravdess8_adaptive": "RAVDESS, 8 classes, speaker-adaptive",
              "crema_d6_adaptive": "CREMA-D, 6 classes, speaker-adaptive",
              "cross_tess_adaptive": "TESS, trained without it, speaker-adaptive"}
    for key, title in titles.items():
        e = r["voices"].get(key)
        if not e or "pooled" not in e:
            lines.append(f"| {title} | – | – | – | not run | | | |")
            continue
        p = e["pooled"]
        labels = e["labels"]
        recall = _recall(p, list(LABELS)) if tuple(labels) == LABELS else "see JSON"
        lines.append(f"| {title} | {len(labels)} | {p['n_per_seed']} | {_level(e)} | {_pm(p['uar'])} | "
                     f"{_pm(p['weighted_accuracy'])}"
                     f" | {_ece(p)} | {recall} |")
    lines += _training_note(titles, r["voices"])
    recipes = (("default_cv", "The default model's recipe: voice group and IEMOCAP session held out together"),
               ("default_cv_speaker_norm", "The same recipe, speaker-adaptive"),
               ("default_cv_audio", "The audio model's recipe on the same folds"),
               ("default_cv_audio_speaker_norm", "The audio model's recipe on the same folds, speaker-adaptive"))
    for key, title in recipes:
        d = r.get(key)
        if not d or "by" not in d:
            continue
        fused = "fused " if "pooled_modalities" in d else ""
        lines += ["", f"## {title}", "", d["description"].replace("\n", " ") + f" Input level: {_level(d)}.", "",
                  f"| test turns | n | {fused}UAR % | {fused}WA % | ECE | audio alone UAR % | text alone UAR % | "
                  "audio weight |", "|---|---|---|---|---|---|---|---|"]
        for column in ("kind", "voice_corpus", "emotion_change"):
            for value, entry in d["by"].get(column, {}).items():
                f = entry["fused"]
                a, t = entry.get("audio"), entry.get("text")
                weight = f"{f['audio_weight_mean']:.2f}" if "audio_weight_mean" in f else "–"
                lines.append(f"| {column} = {value} | {f['n_per_seed']} | {_pm(f['uar'])} | "
                             f"{_pm(f['weighted_accuracy'])} | {_pm(f['ece'], False)} | "
                             f"{_pm(a['uar']) if a else '–'} | {_pm(t['uar']) if t else '–'} | {weight} |")
        if "emotion_change" in d["by"]:
            lines += ["", "emotion_change: each labeled turn against the same speaker's previous labeled turn of its "
                      "dialogue (`first` includes every acted clip heard alone)."]
        if key == "default_cv" and all(e["fused"]["uar"].get("min") == e["fused"]["uar"].get("max")
                                       for by in d["by"].values() for e in by.values()):
            lines += ["", "One seed (a run of this recipe takes about 20 minutes on 2 cores); the spread over "
                      "seeds of the audio model's recipe is in the first table."]
    t = r.get("text")
    if t:
        lines += ["", "## IEMOCAP transcripts, session folds (text model)", "",
                  "| text encoder | context | n | WA % (accuracy) | UAR % | ECE (floor) |", "|---|---|---|---|---|---|"]
        for key, cells in (("frozen_causal", ("all-MiniLM-L6-v2, frozen", "causal")),
                           ("finetuned_causal", ("fine-tuned per fold", "causal")),
                           ("finetuned_offline", ("fine-tuned per fold", "offline")),
                           ("finetuned_script_causal", ("fine-tuned, speaker + script disjoint", "causal"))):
            e = t.get(key)
            if not e:
                continue
            p = e.get("pooled")
            if p:
                lines.append(f"| {cells[0]} | {cells[1]} | {p['n_per_seed']} | {_pm(p['weighted_accuracy'])} | "
                             f"{_pm(p['uar'])} | {_pm(p['ece'], False)} |")
            else:
                s = e["summary"]
                lines.append(f"| {cells[0]} | {cells[1]} | – | {_pm(s['weighted_accuracy'])} | {_pm(s['uar'])} | – |")
    if r.get("diagrams"):
        lines += ["", "## Reliability diagrams", ""]
        lines += [f"![{name}](img/{Path(path).name})" for name, path in r["diagrams"].items()]
    pk = r.get("packaged")
    if pk:
        lines += ["", "## The packaged models on the two held-out actors (the demo-voices actors)", "",
                  "| model | clips | UAR % | WA % | ECE |", "|---|---|---|---|---|"]
        for name, e in pk.items():
            m = e["metrics"]
            title = f"{name} ({e['members']} models averaged)" if e.get("members", 1) > 1 else name
            lines.append(f"| {title} | {m['n']} | {100 * m['uar']:.1f} | {100 * m['weighted_accuracy']:.1f} | "
                         f"{m['ece']:.3f} |")
        for name, e in pk.items():
            if "live" in e:
                lv = e["live"]
                heard = "no recognizer" if lv.get("asr", "none") == "none" else \
                    f"`--asr {lv['asr']}`, the evaluator given the transcripts the live run heard"
                lines.append(f"\nLive path (`realtime-ser run`, {heard}) against `python -m training evaluate` "
                             f"({name}): {lv['same_label_as_evaluator']} of {lv['compared']} clips with the same "
                             f"label, largest score difference {lv['max_abs_score_difference']:.1e}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.default_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-live", action="store_true", help="skip the live-path run of the held-out clips")
    p.add_argument("--render", action="store_true", help="only rewrite default_model.md from default_model.json")
    p.add_argument("--packaged", action="store_true",
                   help="only measure the packaged models again (after an export) and update their cards and "
                        "that section of default_model.json and .md; the experiments' figures are kept")
    p.add_argument("--only", default="", metavar="NAME[,NAME...]",
                   help="recompute only these experiments' figures from runs/NAME (after rerunning some of them), "
                        "keep the others of default_model.json, and measure the packaged models again")
    args = p.parse_args(argv)
    if args.render:
        (OUT / "default_model.md").write_text(markdown(json.loads((OUT / "default_model.json").read_text())))
        return 0
    if args.packaged:
        kept = json.loads((OUT / "default_model.json").read_text())
        kept.pop("packaged", None)
        write(kept, live=not args.no_live)
        return 0
    curves: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    known = {*(name for name, _ in SPECS.values()), *DEFAULT_RECIPES, *(name for _, name, _ in TEXT)}
    if only - known:
        p.error(f"--only: unknown experiment(s) {', '.join(sorted(only - known))}; "
                f"use some of {', '.join(sorted(known))}")
    results: dict[str, Any] = {"voices": {}}
    if only:
        results = json.loads((OUT / "default_model.json").read_text())
        results.pop("packaged", None)  # measured again below

    def measured(name: str, **settings: Any) -> dict[str, Any] | None:
        e = experiment(name, curves, **settings)
        if only and (e is None or "pooled" not in e):
            p.error(f"--only {name}: runs/{name} with its test predictions is needed (run the experiment first)")
        return e

    for key, (name, settings) in SPECS.items():
        if only and name not in only:
            continue
        e = measured(name, **settings)
        if e is not None:
            results["voices"][key] = e
    for name in DEFAULT_RECIPES:
        if not only or name in only:
            results[name] = measured(name)
    text: dict[str, Any] = results.get("text", {}) if only else {}
    for key, name, settings in TEXT:
        if only and name not in only:
            continue
        e = measured(name, **settings)
        if e is not None:
            text[key] = e
    results["text"] = text
    IMG.mkdir(parents=True, exist_ok=True)
    results.setdefault("diagrams", {})
    groups = {"ravdess": ["voices_ravdess"], "crema_d": ["voices_crema_d"], "tess_cross": ["voices_cross"],
              "iemocap_text": ["text_finetuned"], "default_cv": ["default_cv"]}
    for title, names in groups.items():
        chosen = [(f"{n} ({v})", lg, y) for n, v, lg, y in curves if n in names]
        if not chosen:
            continue
        items = [(name, np.asarray(probs), y) for name, probs, y in chosen]  # predictions are probabilities
        path = reliability_diagram(items, IMG / f"reliability-{title}.png", f"{title}: reliability (seed 0)")
        results["diagrams"][title] = str(path.relative_to(OUT))
        for name, probs, y in items:
            print(f"{name}: ECE {ece(probs, y):.3f} (n={len(y)})")
    write(results, live=not args.no_live)
    return 0


SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "ravdess": ("voices_ravdess", {"features.audio": "speech"}), "crema_d": ("voices_crema_d", {}),
    "ravdess8": ("voices_ravdess8", {}), "crema_d6": ("voices_crema_d6", {}),
    "cross_tess": ("voices_cross", {}), "cross_crema_d": ("voices_cross_crema_d", {}),
    "ravdess_adaptive": ("voices_ravdess_speaker_norm", {}),
    "crema_d_adaptive": ("voices_crema_d_speaker_norm", {}),
    "ravdess8_adaptive": ("voices_ravdess8_speaker_norm", {}),
    "crema_d6_adaptive": ("voices_crema_d6_speaker_norm", {}),
    "cross_tess_adaptive": ("voices_cross_speaker_norm", {})}
"""The every-voice experiments: report key -> (experiment, the variant's settings)."""
DEFAULT_RECIPES = ("default_cv", "default_cv_speaker_norm", "default_cv_audio", "default_cv_audio_speaker_norm")
TEXT: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("frozen_causal", "text_iemocap", {"protocol.folds": "session", "model.causal": True}),
    ("finetuned_causal", "text_finetuned", {"protocol.folds": "session", "model.causal": True}),
    ("finetuned_offline", "text_finetuned", {"protocol.folds": "session", "model.causal": False}),
    ("finetuned_script_causal", "text_finetuned", {"protocol.folds": "speaker_script", "model.causal": True}))


def write(results: dict[str, Any], live: bool) -> None:
    """Measure the packaged models, then write the report and each packaged model's card metrics."""
    packaged(results, live=live)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "default_model.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (OUT / "default_model.md").write_text(markdown(results))
    for name in ("default", "audio", "offline"):
        card_path = MODELS / name / "card.json"
        if card_path.is_file() and name in results.get("packaged", {}):
            card = json.loads(card_path.read_text())
            card["metrics"] = {"report": "training/results/default_model.md",
                               "held_out_actors": list(DEMO_ACTORS),
                               **{k: v for k, v in results["packaged"][name]["metrics"].items() if k != "confusion"}}
            card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {OUT / 'default_model.md'}")


if __name__ == "__main__":
    sys.exit(main())
