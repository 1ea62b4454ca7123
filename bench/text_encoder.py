"""Text encoder speed: the runtime's ONNX path against the same model in PyTorch/transformers.

The live pipeline embeds each transcript as its utterance ends, so what matters is the time of
one call at batch 1 (one utterance) and, for catching up after a burst, batch 8; training encodes
whole corpora in one call, where sorting by length keeps padding low (the "whole set" figure).
Both sides do the whole job: tokenize, run the encoder, mean-pool over the mask, L2-normalise;
both get the same number of threads. Calls alternate between the two so that a neighbour's
load on a shared machine hits both alike. Sentences are IEMOCAP transcripts, in corpus order.

Usage, from the repository root::

    python -m bench.text_encoder                 # 200 sentences, 1 thread
    python -m bench.text_encoder --threads 2 --sentences 100

Prepares the encoder into the model cache first if it is not there (timed). Writes
``text_encoder.json`` (machine, commit, settings, every figure) and ``text_encoder.md``
(a table, also printed) under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser import prepare
from realtime_ser.errors import ModelError
from realtime_ser.features.text import TextEncoder, default_encoder_dir, prepare_text_encoder

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_DATA = "REALTIME_SER_SHARED_DATA"
WARMUP = 10
TARGET_SPEEDUP = 1.5
BULK_BATCH = 32
BULK_REPEATS = 3


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA)
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


def load_sentences(data: Path, n: int) -> list[str] | None:
    """``n`` non-empty transcripts spread evenly over ``iemocap_text/utterances.csv``, or None if absent."""
    path = data / "iemocap_text" / "utterances.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "text" not in (reader.fieldnames or []):
            return None
        texts = [row["text"].strip() for row in reader if row["text"].strip()]
    if not texts:
        return None
    step = max(1, len(texts) // n)
    return texts[::step][:n]


class TorchEncoder:
    """The reference: transformers' fast tokenizer and BertModel (default attention), pooled as the runtime does."""

    def __init__(self, source: str, max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.model = AutoModel.from_pretrained(source, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1).numpy()

    def encode_sorted(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Batches of texts of similar length, as :meth:`TextEncoder.encode` forms them, in the order given."""
        lengths = [
            len(ids) for ids in self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        ]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.encode([texts[i] for i in chunk])
        return out


def stats(ms: list[float], per: int) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "calls": len(ms),
        "median_ms": round(float(np.median(a)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "median_ms_per_sentence": round(float(np.median(a)) / per, 3),
    }


def time_interleaved(
    backends: Mapping[str, Callable[[list[str]], np.ndarray]], batches: list[list[str]]
) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """Per-call wall ms for each backend; each batch goes to every backend in turn before the next batch."""
    for batch in batches[:WARMUP]:
        for fn in backends.values():
            fn(batch)
    times: dict[str, list[float]] = {name: [] for name in backends}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in backends}
    for batch in batches:
        for name, fn in backends.items():
            t0 = time.perf_counter()
            out = fn(batch)
            times[name].append((time.perf_counter() - t0) * 1000)
            outputs[name].append(out)
    return times, outputs


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": None,
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def versions() -> dict[str, str]:
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    return {
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Text encoder: ONNX runtime vs PyTorch",
        "",
        f"{result['encoder']['name']} ({result['encoder']['dim']} dims, mean pooling, L2-normalised), "
        f"{s['sentences']} IEMOCAP transcripts (median {result['tokens']['median']} tokens, "
        f"max {result['tokens']['max']}), {s['threads']} thread(s) on each side, {WARMUP} warm-up calls. "
        "Each call tokenizes, encodes, pools and normalises. ms per call:",
        "",
        "| batch | backend | median | p95 | mean | median / sentence | speedup (median) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for b in result["batches"]:
        for name in ("onnx", "torch"):
            r = b[name]
            speed = f"{b['speedup_median']:.2f}x" if name == "onnx" else ""
            lines.append(
                f"| {b['batch_size']} | {name} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['mean_ms']:.2f} "
                f"| {r['median_ms_per_sentence']:.2f} | {speed} |"
            )
    st = result["static"]
    bulk = result["bulk_ms_per_sentence"]
    lines += [
        "",
        f"Whole set in one call (sorted by length, batches of {bulk['batch_size']}, median of {bulk['repeats']}): "
        f"onnx {bulk['onnx']:.2f}, torch {bulk['torch']:.2f} ms per sentence ({bulk['speedup']:.2f}x).",
        f"Static word-vector kind (no encoder run), batch 1: median {st['median_ms']:.3f} ms, "
        f"p95 {st['p95_ms']:.3f} ms.",
        f"Largest |ONNX - torch| over all benched vectors: {result['max_abs_diff']:.2e} (tolerance 1e-4).",
        f"Target: ONNX at least {TARGET_SPEEDUP}x faster than torch at batch 1: "
        f"{'met' if result['target_met'] else 'NOT met'}.",
        "",
        f"Prepare: {result['prepare']['note']}. Load of the prepared encoder (hash check + session): "
        f"{result['load_seconds']:.2f} s.",
        "",
        f"Machine: {result['machine']['cpu_model']}, {result['machine']['cpu_count']} CPUs, "
        f"{result['machine']['platform']}, load average {result['machine']['loadavg']}. "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        f"Commit {result['git']['commit']}{' (dirty working tree)' if result['git']['dirty'] else ''}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.text_encoder", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=None, help=f"shared data folder (default ${ENV_DATA} or ../shared/data)"
    )
    p.add_argument("--sentences", type=int, default=200, help="transcripts to encode (default 200)")
    p.add_argument("--threads", type=int, default=1, help="threads for onnxruntime and torch alike (default 1)")
    p.add_argument("--cache", type=Path, default=None, help="model cache (default: realtime-ser's)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="where the results go")
    args = p.parse_args(argv)
    if args.sentences < 8 + WARMUP:
        p.error(f"--sentences must be at least {8 + WARMUP}")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = (args.data or default_data_dir()).expanduser()
    sentences = load_sentences(data, args.sentences)
    if sentences is None:
        print(f"skipped: no transcripts in {data / 'iemocap_text' / 'utterances.csv'} (column 'text')", file=sys.stderr)
        return 0
    try:
        import torch
    except ImportError:
        print(
            "skipped: the comparison needs torch and transformers: pip install 'realtime-ser[train]'", file=sys.stderr
        )
        return 0

    cache = (args.cache or prepare.cache_dir()).expanduser()
    t0 = time.perf_counter()
    directory = prepare_text_encoder(prepare.PrepareOptions(cache=cache))
    prepare_wall = time.perf_counter() - t0
    assert directory == default_encoder_dir(cache)
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    export_s = meta.get("prepare_seconds")
    note = (
        f"export + verification took {export_s} s when the cache was built; "
        f"this run's prepare call took {prepare_wall:.2f} s"
    )
    if prepare_wall < (export_s or 0):
        note += " (already prepared: hash check only)"

    torch.set_num_threads(args.threads)
    try:
        t0 = time.perf_counter()
        onnx = TextEncoder.load(directory, threads=args.threads)
        load_s = time.perf_counter() - t0
        static = TextEncoder.load(directory, kind="static")
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ref = TorchEncoder(meta["source"], onnx.max_length)
    tokens = [len(ref.tokenizer(t, truncation=True, max_length=onnx.max_length)["input_ids"]) for t in sentences]

    backends = {"onnx": onnx.encode, "torch": ref.encode}
    result_batches = []
    max_diff = 0.0
    for size in (1, 8):
        batches = [sentences[i : i + size] for i in range(0, len(sentences) - size + 1, size)]
        times, outputs = time_interleaved(backends, batches)
        diff = float(np.abs(np.concatenate(outputs["onnx"]) - np.concatenate(outputs["torch"])).max())
        max_diff = max(max_diff, diff)
        entry: dict[str, Any] = {"batch_size": size, **{name: stats(times[name], size) for name in backends}}
        entry["speedup_median"] = round(entry["torch"]["median_ms"] / entry["onnx"]["median_ms"], 2)
        entry["speedup_p95"] = round(entry["torch"]["p95_ms"] / entry["onnx"]["p95_ms"], 2)
        entry["max_abs_diff"] = diff
        result_batches.append(entry)
        print(
            f"batch {size}: onnx {entry['onnx']['median_ms']:.2f} ms, torch {entry['torch']['median_ms']:.2f} ms "
            f"(x{entry['speedup_median']})",
            file=sys.stderr,
        )
    # Training encodes whole corpora in one call; there the sorting by length removes most padding.
    bulk_fns = {
        "onnx": lambda b: onnx.encode(b, batch_size=BULK_BATCH),
        "torch": lambda b: ref.encode_sorted(b, BULK_BATCH),
    }
    bulk_times: dict[str, list[float]] = {name: [] for name in bulk_fns}
    for _ in range(BULK_REPEATS):
        for name, fn in bulk_fns.items():
            t0 = time.perf_counter()
            fn(sentences)
            bulk_times[name].append((time.perf_counter() - t0) * 1000)
    bulk: dict[str, Any] = {
        "batch_size": BULK_BATCH,
        "repeats": BULK_REPEATS,
        **{name: round(float(np.median(t)) / len(sentences), 3) for name, t in bulk_times.items()},
    }
    bulk["speedup"] = round(bulk["torch"] / bulk["onnx"], 2)
    static_times, _ = time_interleaved({"static": static.encode}, [[s] for s in sentences])

    result: dict[str, Any] = {
        "benchmark": "text_encoder",
        "command": " ".join(["python -m bench.text_encoder", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "sentences": len(sentences),
            "threads": args.threads,
            "warmup_calls": WARMUP,
            "data": str(data / "iemocap_text" / "utterances.csv"),
            "cache": str(cache),
        },
        "encoder": {
            "name": onnx.name,
            "dim": onnx.dim,
            "max_length": onnx.max_length,
            "key": onnx.key(),
            "source": meta["source"],
            "opset": meta.get("opset"),
        },
        "tokens": {"median": int(np.median(tokens)), "p95": int(np.percentile(tokens, 95)), "max": max(tokens)},
        "batches": result_batches,
        "bulk_ms_per_sentence": bulk,
        "static": stats(static_times["static"], 1),
        "max_abs_diff": max_diff,
        "target_speedup_batch1": TARGET_SPEEDUP,
        "target_met": result_batches[0]["speedup_median"] >= TARGET_SPEEDUP,
        "prepare": {"export_seconds": export_s, "this_run_seconds": round(prepare_wall, 2), "note": note},
        "load_seconds": round(load_s, 3),
        "machine": machine(),
        "versions": versions(),
        "git": git_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_encoder.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = markdown(result)
    (args.out / "text_encoder.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
