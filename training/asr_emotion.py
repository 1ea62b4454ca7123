"""``python -m training.asr_emotion``: what the recognizer's errors cost the emotion, on held-out turns.

The default recipe (``configs/train/default.toml``) is trained without one of ``default_cv``'s
folds: a group of voices (RAVDESS, CREMA-D and TESS actors) together with the IEMOCAP session
they speak in the constructed dialogues of ``runs/default/all.csv`` (from
``python -m training.default_model``). That fold's first dialogues (typed transcripts) are then
scored three times: with the typed transcripts, and with each turn's transcript replaced by what
a recognizer makes of it when espeak-ng speaks it (:func:`bench.asr_compare.transcribe_text`:
synthetic speech, one utterance per turn). The model's audio input stays the dialogue's clips, so
the rows differ only by their transcripts. Reports the fused accuracy and the text head's own,
with the word error rate.

Writes ``training/results/asr_emotion.{json,md}``; the held-out model is kept in
``runs/asr_emotion/model-group<N>`` (trained again when its training manifest or
the recipe changes).
``--dialogues N`` limits the work (whisper decodes about one turn per second on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .data import REPO, Manifest, read_manifest, write_manifest
from .default_report import OUT, RUNS
from .evaluate import evaluate

ALL = RUNS / "default" / "all.csv"


def held_out_model(manifest: Manifest, group: str, work: Path) -> Path:
    """The default recipe trained on every row of ``manifest`` (``all.csv``) outside ``group`` (reused
    while that training manifest and the recipe are unchanged)."""
    from .train import export_final, load_config

    rows = [u for u in manifest.utterances if u.meta("group") != group]
    train_csv = write_manifest(work / f"train-group{group}.csv", rows)
    cfg = load_config(REPO / "configs" / "train" / "default.toml", [f'data.manifests = ["{train_csv}"]'])
    recipe = json.dumps(cfg.to_dict(), sort_keys=True).encode()
    digest = hashlib.sha256(train_csv.read_bytes() + recipe).hexdigest()[:16]
    out = work / f"model-group{group}"
    stamp = out / "trained-on.txt"
    if (out / "card.json").is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return out
    print(f"training the default recipe without group {group} ({len(rows)} training rows)", flush=True)
    export_final(cfg, out, version=f"without-group{group}", name=f"default-without-group{group}")
    stamp.write_text(digest + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.asr_emotion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", default="3", help="the default_cv fold held out (0-3; default 3, IEMOCAP Session 4)")
    p.add_argument("--dialogues", type=int, default=5, help="that fold's dialogues to use (default 5)")
    p.add_argument("--backends", default="pocketsphinx,whisper")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from bench.asr_compare import transcribe_text, word_errors
    from realtime_ser.asr import create_backend
    from realtime_ser.config import AsrConfig

    if not ALL.is_file():
        print(f"error: {ALL} is missing; run 'python -m training.default_model' first", file=sys.stderr)
        return 2
    manifest = read_manifest(ALL)
    dialogues = [d for d in manifest.dialogues()
                 if d[0].meta("group") == args.group and d[0].meta("kind") == "dialogue_ref"][: args.dialogues]
    if not dialogues:
        groups = sorted({u.meta("group") for u in manifest.utterances})
        print(f"error: no constructed dialogues in group {args.group!r}; groups: {', '.join(groups)}", file=sys.stderr)
        return 2
    rows = [u for d in dialogues for u in d]
    work = RUNS / "asr_emotion"
    work.mkdir(parents=True, exist_ok=True)
    model = held_out_model(manifest, args.group, work)
    sets = {"reference": write_manifest(work / "reference.csv", rows)}
    result: dict[str, Any] = {"group": args.group, "session": dialogues[0][0].meta("session"),
                              "dialogues": len(dialogues), "turns": len(rows),
                              "labeled_turns": sum(u.labeled for u in rows), "recognizers": {}}
    for name in args.backends.split(","):
        backend = create_backend(AsrConfig(backend=name, worker_processes=False), in_process=True)
        assert backend is not None
        t0 = time.perf_counter()
        errors = words = 0
        recognized = []
        for u in rows:
            text = transcribe_text(u.text, backend).text if u.text.strip() else ""
            e, n = word_errors(u.text, text)
            errors, words = errors + e, words + n
            recognized.append(replace(u, text=text))
        sets[name] = write_manifest(work / f"{name}.csv", recognized)
        result["recognizers"][name] = {"wer": errors / max(words, 1), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: WER {errors / max(words, 1):.3f} over {len(rows)} turns", flush=True)
    for name, path in sets.items():
        r = evaluate(model, path)
        m, t = r["metrics"], r["modalities"]["text"]
        result.setdefault("emotion", {})[name] = {"fused": m, "text_head": t}
        print(f"{name:12s} fused WA {100 * m['weighted_accuracy']:.1f} UAR {100 * m['uar']:.1f} | text head "
              f"WA {100 * t['weighted_accuracy']:.1f} UAR {100 * t['uar']:.1f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "asr_emotion.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "asr_emotion.md").write_text(markdown(result))
    print(f"wrote {OUT / 'asr_emotion.md'}")
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Emotion on recognized transcripts", "",
             f"`python -m training.asr_emotion --group {r['group']}`: {r['dialogues']} constructed dialogues of "
             f"IEMOCAP {r['session']} ({r['turns']} turns, {r['labeled_turns']} labeled), voiced by actors of "
             f"`default_cv`'s group {r['group']}; the default recipe (causal, audio + text) trained without that "
             "group's voices and session. Each turn's transcript typed, or spoken by espeak-ng and recognized.", "",
             "| transcripts | WER | fused WA % | fused UAR % | text head WA % | text head UAR % |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, e in r["emotion"].items():
        wer = "0" if name == "reference" else f"{r['recognizers'][name]['wer']:.3f}"
        f, t = e["fused"], e["text_head"]
        lines.append(f"| {name} | {wer} | {100 * f['weighted_accuracy']:.1f} | {100 * f['uar']:.1f} | "
                     f"{100 * t['weighted_accuracy']:.1f} | {100 * t['uar']:.1f} |")
    lines += ["", "The speech is synthetic, so the error rates are a rough guide to conversational speech; "
              "the audio input is the same in every row, so the rows differ only by their transcripts."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
