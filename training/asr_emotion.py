"""``python -m training.asr_emotion``: the packaged model's accuracy on recognized transcripts.

Held-out IEMOCAP dialogues (Session 4, voiced by the held-out RAVDESS actors as in
``runs/default/test-dialogues-ref.csv`` from :mod:`training.default_model`) are scored by the
packaged default model three times: with the typed transcripts, and with each turn's
transcript replaced by what a recognizer makes of it when espeak-ng speaks it
(:func:`bench.asr_compare.transcribe_text`: synthetic speech, one utterance per turn). The
audio input of the model stays the dialogue's clips, so the difference is the transcript's.
Reports the fused accuracy and the text head's own accuracy, with the word error rate.

Writes ``training/results/asr_emotion.{json,md}``. ``--dialogues N`` limits the work (whisper
decodes about one turn per second on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

from .data import REPO, read_manifest, write_manifest
from .default_report import MODELS, OUT, RUNS
from .evaluate import evaluate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.asr_emotion", description=__doc__)
    p.add_argument("--dialogues", type=int, default=5, help="Session 4 dialogues to use (default 5)")
    p.add_argument("--backends", default="pocketsphinx,whisper")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from bench.asr_compare import transcribe_text, word_errors
    from realtime_ser.asr import create_backend
    from realtime_ser.config import AsrConfig

    ref_path = RUNS / "test-dialogues-ref.csv"
    if not ref_path.is_file():
        print(f"error: {ref_path} is missing; run 'python -m training.default_model' first", file=sys.stderr)
        return 2
    manifest = read_manifest(ref_path)
    dialogues = manifest.dialogues()[: args.dialogues]
    rows = [u for d in dialogues for u in d]
    work = RUNS / "asr_emotion"
    work.mkdir(parents=True, exist_ok=True)
    sets = {"reference": write_manifest(work / "reference.csv", rows)}
    result: dict[str, Any] = {"dialogues": len(dialogues), "turns": len(rows),
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
        r = evaluate(MODELS / "default", path)
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
             f"`python -m training.asr_emotion`: {r['dialogues']} held-out IEMOCAP Session 4 dialogues "
             f"({r['turns']} turns, {r['labeled_turns']} labeled), voiced by held-out RAVDESS actors for the "
             "model's audio input; each turn's transcript typed, or spoken by espeak-ng and recognized. "
             "Packaged default model (causal, audio + text).", "",
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
