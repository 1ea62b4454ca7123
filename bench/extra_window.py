"""What the first encoder layer's own pass costs per utterance, with a 10 s window and a shorter one.

``python -m bench.extra_window`` cuts RAVDESS clips with the live segmenter (as ``bench.emotion``
does), then times, one utterance at a time and interleaved utterance by utterance, the one-layer
encoder that a model with ``features.speech_extra_layers = [1]`` runs beside the whole encoder, on
10 s windows (as packaged) and on ``--window`` s windows (``features.speech_extra_window_s``), and
the whole encoder on 10 s for scale. Writes ``extra_window.json`` and ``extra_window.md`` under
``--out``. What the shorter window does to accuracy: ``training/RESULTS.md``, "A shorter window for
the first layer".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import git_info, machine, provenance

REPO_ROOT = Path(__file__).resolve().parent.parent
LEVEL_DBFS = -26.0  # as the packaged models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.extra_window", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=40, help="RAVDESS clips (default 40)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the utterances (default 3)")
    p.add_argument("--window", type=int, default=4, help="the shorter window in seconds (default 4)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if not 1 <= args.window <= 30:
        p.error(f"--window must be 1..30 seconds, got {args.window}")
    from bench.emotion import load_clips
    from realtime_ser.features import speech
    from realtime_ser.features.speech import SpeechEncoderConfig

    utterances = [x for x, _text in load_clips(args.clips)]
    seconds = np.array([len(x) / speech.SAMPLE_RATE for x in utterances])
    encoders = {
        "first layer, 10 s window": speech.load(config=SpeechEncoderConfig(window_s=10, encoder_layers=1,
                                                                           level_dbfs=LEVEL_DBFS)),
        f"first layer, {args.window} s window": speech.load(config=SpeechEncoderConfig(
            window_s=args.window, encoder_layers=1, level_dbfs=LEVEL_DBFS)),
        "whole encoder, 10 s window": speech.load(config=SpeechEncoderConfig(window_s=10, level_dbfs=LEVEL_DBFS)),
    }
    for enc in encoders.values():
        enc.embed(utterances[:1])  # warm
    ms: dict[str, list[float]] = {n: [] for n in encoders}
    t_all = time.perf_counter()
    for _ in range(args.repeats):
        for x in utterances:
            for name, enc in encoders.items():
                t0 = time.perf_counter()
                enc.embed([x])
                ms[name].append(1000 * (time.perf_counter() - t0))
    out: dict[str, Any] = {
        "benchmark": "extra_window",
        "command": " ".join(["python -m bench.extra_window", *map(shlex.quote, argv or sys.argv[1:])]),
        "machine": machine(), "git": git_info(), "utterances": len(utterances), "repeats": args.repeats,
        "utterance_seconds": {"min": round(float(seconds.min()), 2), "median": round(float(np.median(seconds)), 2),
                              "max": round(float(seconds.max()), 2)},
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "ms_per_utterance": {n: {"p50": round(float(np.percentile(v, 50)), 1),
                                 "p95": round(float(np.percentile(v, 95)), 1),
                                 "mean": round(float(np.mean(v)), 1)} for n, v in ms.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extra_window.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    m, g, s = out["machine"], out["git"], out["utterance_seconds"]
    md = "\n".join([
        "# The first encoder layer's own pass, by window",
        "",
        f"`{out['command']}`: {len(utterances)} RAVDESS utterances cut by the live segmenter ({s['min']}-{s['max']} s, "
        f"median {s['median']}), each encoded alone, {args.repeats} passes, the encoders interleaved utterance by "
        "utterance. Milliseconds per utterance:",
        "",
        "| encoder | p50 | p95 | mean |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {v['p50']:.1f} | {v['p95']:.1f} | {v['mean']:.1f} |" for n, v in out["ms_per_utterance"].items()),
        "",
        "A model reading the first layer beside the whole encoder (the packaged `audio` model) pays the first "
        "row on every utterance, also when Whisper's recognizer shares the whole encoder's pass. What the "
        "shorter window does to accuracy: [`training/RESULTS.md`](../../training/RESULTS.md), \"A shorter "
        "window for the first layer\".",
        "",
        provenance(m, g),
        "",
    ])
    (args.out / "extra_window.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
