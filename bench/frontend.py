"""The acoustic front end against openSMILE's eGeMAPSv02 functionals, per second of audio.

``python -m bench.frontend`` times, on one thread and in one run, the runtime's numpy
functionals (``realtime_ser.features.acoustic``, what every utterance costs live) and
openSMILE eGeMAPSv02 functionals (the paper's kind of features) on the same RAVDESS and
TESS clips, interleaved clip by clip so that drift on a shared machine hits both alike.
Writes ``frontend.json`` and ``frontend.md`` under ``--out``. The accuracy side of the
comparison is ``python -m training.frontends`` (``training/results/frontends.md``).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, both sides
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.latency import default_data_dir, git_info, machine, provenance  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RATE = 16000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.frontend", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--clips", type=int, default=40, help="clips per corpus (default 40)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the clips (default 3)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    try:
        from training.frontends import load_clips, make_frontend, opensmile_available, read_audio
    except ImportError as exc:
        print(f"error: the trainer's dependencies are missing ({exc}); pip install 'realtime-ser[train]'",
              file=sys.stderr)
        return 2
    if not opensmile_available():
        print("error: openSMILE is not installed (pip install opensmile)", file=sys.stderr)
        return 2
    data = args.data or default_data_dir()
    audio: list[np.ndarray] = []
    for corpus in ("ravdess", "tess"):
        if not (data / corpus / "manifest.csv").is_file():
            print(f"error: {data / corpus / 'manifest.csv'} not found (give --data)", file=sys.stderr)
            return 2
        clips, _ = load_clips(corpus, data)
        picks = np.linspace(0, len(clips) - 1, min(args.clips, len(clips))).round().astype(int)
        audio += [read_audio(clips[i].path) for i in picks]
    names = ("ours", "egemaps")
    fes = {n: make_frontend(n) for n in names}
    for fe in fes.values():
        fe.extract(audio[0])  # warm
    per: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    t_all = time.perf_counter()
    for rep in range(args.repeats):
        for i, x in enumerate(audio):
            order = names if (i + rep) % 2 == 0 else names[::-1]
            for n in order:
                t0, c0 = time.perf_counter(), time.process_time()
                fes[n].extract(x)
                t1, c1 = time.perf_counter(), time.process_time()
                per[n].append(1000 * (t1 - t0) / (len(x) / RATE))
                cpu[n].append(1000 * (c1 - c0) / (len(x) / RATE))
    seconds = sum(len(x) for x in audio) / RATE
    out: dict[str, Any] = {
        "benchmark": "frontend", "command": " ".join(["python -m bench.frontend", *map(shlex.quote, argv or
                                                                                        sys.argv[1:])]),
        "machine": machine(), "git": git_info(), "clips": len(audio), "audio_seconds": round(seconds, 1),
        "repeats": args.repeats, "threads": 1, "wall_seconds": round(time.perf_counter() - t_all, 1),
        "frontends": {n: {"dim": fes[n].dim,
                          "ms_per_audio_s": {"median": round(float(np.median(per[n])), 2),
                                             "p95": round(float(np.percentile(per[n], 95)), 2),
                                             "mean": round(float(np.mean(per[n])), 2)},
                          "cpu_ms_per_audio_s_median": round(float(np.median(cpu[n])), 2)} for n in names},
    }
    ours, ege = (out["frontends"][n]["ms_per_audio_s"]["median"] for n in names)
    out["ratio_egemaps_over_ours"] = round(ege / ours, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontend.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    m, g = out["machine"], out["git"]
    md = "\n".join([
        "# Acoustic front end against openSMILE eGeMAPSv02",
        "",
        f"`{out['command']}`: {out['clips']} RAVDESS and TESS clips ({seconds:.0f} s of audio), {args.repeats} "
        "passes, one thread, the two front ends interleaved clip by clip. Milliseconds of compute per second "
        "of audio:",
        "",
        "| front end | values | median | p95 | mean | CPU median |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {n} | {v['dim']} | {v['ms_per_audio_s']['median']:.1f} | {v['ms_per_audio_s']['p95']:.1f} | "
          f"{v['ms_per_audio_s']['mean']:.1f} | {v['cpu_ms_per_audio_s_median']:.1f} |"
          for n, v in out["frontends"].items()),
        "",
        f"Ours takes {1 / out['ratio_egemaps_over_ours']:.2f}x the time of eGeMAPSv02 "
        f"(eGeMAPSv02 / ours = {out['ratio_egemaps_over_ours']:.2f}). Accuracy of both: "
        "[`training/results/frontends.md`](../../training/results/frontends.md).",
        "",
        provenance(m, g),
        "",
    ])
    (args.out / "frontend.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
