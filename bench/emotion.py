"""Compute latency the emotion stage adds per utterance, and what batching across sessions buys.

Replays real utterances (RAVDESS clips, cut by the live segmenter, with their reference
transcripts) through the shared :class:`~realtime_ser.emotion.service.EmotionService` of
the packaged default model:

- **one session**: utterances one after another, each with the dialogue context the
  session has built so far (up to the model's window); per utterance the acoustic
  features, the text embedding, the model call, and their sum (the compute the emotion
  stage adds to an utterance's latency), in two settings: the emotion stage runs the
  speech encoder itself (the recognizer is pocketsphinx, vosk or none), and the recognizer
  (Whisper) already ran it, so the emotion stage only pools its output (one shared pass);
- **N sessions at once** (1, 4, 16): every session submits one utterance at the same
  moment, with the shared worker batching what is waiting (``max_batch``) against
  the same work done one request at a time (``max_batch=1``); time until the last
  session has its result, per round.

Usage: ``python -m bench.emotion [--clips 60] [--rounds 20]``. Writes
``bench/results/emotion.json`` and ``emotion.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.emotion.service import EmotionService, Turn, packaged_model
from realtime_ser.features.segment import utterance_audio

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("REALTIME_SER_SHARED_DATA", REPO.parent / "shared" / "data"))


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"n": int(len(a)), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def load_clips(n: int) -> list[tuple[np.ndarray, str]]:
    manifest = DATA / "ravdess" / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"needs {manifest} (the shared data); set REALTIME_SER_SHARED_DATA")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // n)
    clips = []
    for r in rows[::step][:n]:
        segments = utterance_audio(DATA / "ravdess" / r["path"])
        if segments:
            clips.append((np.concatenate(segments), r["transcript"]))
    return clips


def one_session(service: EmotionService, clips: list[tuple[np.ndarray, str]], shared: bool = False) -> dict[str, Any]:
    """Per-utterance latencies; ``shared``: the speech encoder's output is handed in, as a Whisper
    recognizer hands it over (encoded before the clock starts, as the recognizer did)."""
    window = service.model.card.max_turns - 1
    context: list[Turn] = []
    per: dict[str, list[float]] = {"features": [], "text": [], "model": [], "compute": [], "wall": []}
    speech = service.audio.speech if service.audio is not None else None
    for i, (samples, text) in enumerate(clips):
        encoded = speech.encode([samples], keep_windows=True)[0] if shared and speech is not None else None
        t0 = time.perf_counter()
        res = service.submit(samples, text, context[-window:] if window > 0 else [], encoded).result(30)
        wall = (time.perf_counter() - t0) * 1000
        lat = res["latency_ms"]
        compute = lat["features"] + lat["text"] + lat["model"]
        for k in ("features", "text", "model"):
            per[k].append(lat[k])
        per["compute"].append(compute)
        per["wall"].append(wall)
        context.append(Turn("A", i, i + 1, res["vectors"]))
    return {k: _stats(v) for k, v in per.items()} | {
        "audio_seconds_mean": float(np.mean([len(s) / 16000 for s, _ in clips]))}


def concurrent(model_dir: Path, clips: list[tuple[np.ndarray, str]], sessions: int, rounds: int,
               max_batch: int) -> dict[str, Any]:
    service = EmotionService(model_dir, max_batch=max_batch)
    try:
        service.submit(*clips[0], []).result(30)  # warm up
        per_round = []
        batches0 = service.batches
        for r in range(rounds):
            barrier = threading.Barrier(sessions + 1)
            done: list[float] = [0.0] * sessions

            def run(i: int, r: int = r, barrier: threading.Barrier = barrier, done: list[float] = done) -> None:
                samples, text = clips[(r * sessions + i) % len(clips)]
                barrier.wait()
                service.submit(samples, text, []).result(60)
                done[i] = time.perf_counter()

            threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join(60)
            per_round.append((max(done) - t0) * 1000)
        return {"sessions": sessions, "max_batch": max_batch, "rounds": rounds,
                "last_result_ms": _stats(per_round), "model_calls_per_round": (service.batches - batches0) / rounds}
    finally:
        service.close()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.emotion", description=__doc__)
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--model", type=Path, default=packaged_model("default"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    clips = load_clips(args.clips)
    service = EmotionService(args.model)
    try:
        service.submit(*clips[0], []).result(30)  # warm up
        single = one_session(service, clips)
        shared = one_session(service, clips, shared=True) if service.audio and service.audio.speech else None
    finally:
        service.close()
    batching = []
    for n in (1, 4, 16):
        for mb in (64, 1):
            batching.append(concurrent(args.model, clips, n, args.rounds, mb))
            b = batching[-1]
            print(f"{n:2d} sessions, max_batch {mb:2d}: last result p50 {b['last_result_ms']['p50']:.1f} ms, "
                  f"p95 {b['last_result_ms']['p95']:.1f} ms, {b['model_calls_per_round']:.1f} model calls per round")
    doc: dict[str, Any] = {
        "command": "python -m bench.emotion " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git_commit": _commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "clips": len(clips),
        "one_session_ms": single,
        "one_session_shared_encoder_ms": shared,
        "audio_front_end": service.audio.kind if service.audio is not None else None,
        "batching": batching,
        "target": "emotion compute p95, one session: <= 250 ms with the emotion stage's own speech-encoder pass, "
                  "<= 60 ms when the Whisper recognizer's encoder pass is shared",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emotion.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = [
        "# Emotion stage latency", "",
        f"`{doc['command']}` at commit `{doc['git_commit'][:10]}`, {doc['machine']['cpus']} CPUs. "
        f"{len(clips)} RAVDESS utterances (mean {single['audio_seconds_mean']:.1f} s), reference transcripts, "
        "one session with its dialogue context.", "",
    ]
    settings = [("own speech-encoder pass (recognizer: pocketsphinx, vosk or none)", single, 250.0)]
    if shared is not None:
        settings.append(("encoder pass shared with the Whisper recognizer", shared, 60.0))
    for title, res, bound in settings:
        md += [f"**{title}**", "", "| per utterance, ms | p50 | p95 | p99 | max |", "|---|---|---|---|---|"]
        for k, name in (("features", "acoustic features (encoder + pooling)"), ("text", "text embedding"),
                        ("model", "dialogue model"), ("compute", "**emotion compute (sum)**"),
                        ("wall", "submit to result (wall)")):
            s = res[k]
            md.append(f"| {name} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
        ok = res["compute"]["p95"] <= bound
        md += ["", f"Target p95 <= {bound:.0f} ms: **{'met' if ok else 'missed'}** ({res['compute']['p95']:.1f} ms).",
               ""]
    md += [
           "## Batching across sessions", "",
           "Every session submits one utterance at the same moment; time until the last has its result.", "",
           "| sessions | batched p50 / p95 ms | one at a time p50 / p95 ms | model calls per round (batched) |",
           "|---|---|---|---|"]
    for n in (1, 4, 16):
        b = next(x for x in batching if x["sessions"] == n and x["max_batch"] == 64)
        u = next(x for x in batching if x["sessions"] == n and x["max_batch"] == 1)
        md.append(f"| {n} | {b['last_result_ms']['p50']:.1f} / {b['last_result_ms']['p95']:.1f} | "
                  f"{u['last_result_ms']['p50']:.1f} / {u['last_result_ms']['p95']:.1f} | "
                  f"{b['model_calls_per_round']:.1f} |")
    (args.out / "emotion.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
