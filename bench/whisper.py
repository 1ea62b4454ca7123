"""Whisper on CTranslate2: what each encoder window, batching, word-time mode and partial pass costs.

The recognizer (:mod:`realtime_ser.asr.whisper_backend`) encodes each utterance on a 10, 15 or
30 s window and decodes it from there; this benchmark measures the trade on real speech,
calling the decoding engine directly (no pipeline, no server) on exactly the audio the live
segmenter hands it:

- **windows**: word error rate and decode time (encoder + decoder + word times) per window
  policy: always 10, 15 or 30 s, and per utterance (the default), on RAVDESS and TESS clips cut
  by the default segmenter (*short*, 2-4 s) and on *long* utterances of 5-14 s (three to five
  cut TESS or CREMA-D clips with different sentences joined with 0.25 s pauses); how often the
  guard sent a decode to 30 s;
- **batching**: N final utterances waiting at once, decoded as one batch against one at a
  time (N = 1, 4, 8): time until the last is done and utterances per second;
- **word times**: ``timestamps`` (from the decode) against ``align`` (a forced second pass):
  the extra time per utterance and how far the word times move between the two;
- **partial passes**: the cost of one pass over a growing utterance (greedy, 10 s window).

``--model DIR`` adds another CTranslate2 Whisper model (e.g. Whisper small) to the window
table.

Usage, from the repository root::

    python -m bench.whisper                        # 30 clips per corpus, ~6 minutes on 2 cores
    python -m bench.whisper --clips 4 --long 2     # a quick check

Writes ``whisper.json`` and ``whisper.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import os
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.asr_compare import word_errors
from bench.latency import default_data_dir, git_info, machine, select_clips, summarize, write_result
from realtime_ser.asr import whisper_backend as wb
from realtime_ser.config import AsrConfig, PipelineConfig
from realtime_ser.features.segment import utterance_audio

REPO_ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
CORPORA = ("ravdess", "tess")
POLICIES = (("per utterance", 0), ("10 s", 10), ("15 s", 15), ("30 s", 30))


def _request(x: np.ndarray, final: bool = True) -> Any:
    return wb._Request(x, final, concurrent.futures.Future(), 0)


def _cut(data: Path, corpus: str, n: int, by_sentence: bool = False) -> list[dict[str, Any]]:
    with (data / corpus / "manifest.csv").open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("silent") != "1"]
    if by_sentence:  # every sentence of the corpus in turn, each from a different speaker
        groups: dict[str, list[dict[str, str]]] = {}
        for r in sorted(rows, key=lambda r: r["path"]):
            groups.setdefault(r["transcript"], []).append(r)
        keys = sorted(groups)
        chosen = [groups[keys[i % len(keys)]][(i * 37) % len(groups[keys[i % len(keys)]])] for i in range(n)]
    else:
        chosen = select_clips(rows, n)
    out = []
    for r in chosen:
        cuts = utterance_audio(data / corpus / r["path"])
        if cuts:
            out.append({"corpus": corpus, "path": r["path"], "ref": r["transcript"], "audio": np.concatenate(cuts)})
    return out


def load_items(data: Path, per_corpus: int, n_long: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Short items (one clip each, cut by the default segmenter) and long ones: three to five cut
    clips of TESS or CREMA-D with different sentences, joined with 0.25 s pauses (RAVDESS has two
    sentences only, and Whisper drops a sentence said twice in a row)."""
    short = [it for corpus in CORPORA for it in _cut(data, corpus, per_corpus)]
    pools = {"tess": [s for s in short if s["corpus"] == "tess"]}
    if n_long and (data / "crema_d" / "manifest.csv").is_file():
        pools["crema_d"] = _cut(data, "crema_d", max(12, 2 * n_long), by_sentence=True)
    long_items: list[dict[str, Any]] = []
    pause = np.zeros(RATE // 4, np.int16)
    names = sorted(pools)
    for k in range(n_long):
        pool = pools[names[k % len(names)]]
        take = 3 + k % 3
        parts: list[dict[str, Any]] = []
        j = k * 7
        while len(parts) < take and j < k * 7 + 4 * len(pool):
            cand = pool[j % len(pool)]
            if all(cand["ref"] != q["ref"] for q in parts):
                parts.append(cand)
            j += 1
        audio = np.concatenate([p for it in parts for p in (it["audio"], pause)])
        long_items.append({"corpus": parts[0]["corpus"], "path": "+".join(it["path"] for it in parts),
                           "ref": " ".join(it["ref"] for it in parts), "audio": audio})
    return short, long_items


def run_policy(engine: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    errors = words = 0
    ms: list[float] = []
    fallbacks0 = engine.stats["fallbacks"]
    hyps = []
    for it in items:
        t0 = time.perf_counter()
        (t,) = engine.run([_request(it["audio"])])
        ms.append((time.perf_counter() - t0) * 1000)
        e, w = word_errors(it["ref"], t.text)
        errors, words = errors + e, words + w
        hyps.append(t.text)
    return {"items": len(items), "seconds": summarize([len(i["audio"]) / RATE * 1000 for i in items]),
            "wer": round(errors / max(words, 1), 4), "words": words, "decode_ms": summarize(ms),
            "fallbacks": engine.stats["fallbacks"] - fallbacks0, "hyps": hyps}


def run_batching(engine: Any, items: list[dict[str, Any]], sizes: tuple[int, ...], rounds: int) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        together, apart = [], []
        for r in range(rounds):
            batch = [items[(r * n + j) % len(items)]["audio"] for j in range(n)]
            t0 = time.perf_counter()
            engine.run([_request(x) for x in batch])
            together.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            for x in batch:
                engine.run([_request(x)])
            apart.append((time.perf_counter() - t0) * 1000)
        out.append({"waiting": n, "batched_ms": summarize(together), "one_at_a_time_ms": summarize(apart),
                    "utterances_per_s_batched": round(n * 1000 / float(np.median(together)), 2),
                    "utterances_per_s_one_at_a_time": round(n * 1000 / float(np.median(apart)), 2)})
    return out


def run_word_times(ts_engine: Any, al_engine: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    ts_ms, al_ms, moved_start, moved_end = [], [], [], []
    same_text = 0
    for it in items:
        t0 = time.perf_counter()
        (a,) = ts_engine.run([_request(it["audio"])])
        ts_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        (b,) = al_engine.run([_request(it["audio"])])
        al_ms.append((time.perf_counter() - t0) * 1000)
        if [w.word for w in a.words] == [w.word for w in b.words]:
            same_text += 1
            moved_start += [abs(x.start - y.start) * 1000 for x, y in zip(a.words, b.words, strict=True)]
            moved_end += [abs(x.end - y.end) * 1000 for x, y in zip(a.words, b.words, strict=True)]
    return {"items": len(items), "timestamps_ms": summarize(ts_ms), "align_ms": summarize(al_ms),
            "same_words": same_text, "moved_start_ms": summarize(moved_start), "moved_end_ms": summarize(moved_end)}


def run_partials(engine: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    ms = []
    for it in items:
        x = it["audio"]
        for cut in range(RATE, min(len(x), 8 * RATE) + 1, RATE):
            t0 = time.perf_counter()
            engine.run([_request(x[:cut], final=False)])
            ms.append((time.perf_counter() - t0) * 1000)
    return {"passes": len(ms), "pass_ms": summarize(ms)}


def _f(v: Any, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Whisper on CTranslate2: windows, batching, word times, partial passes",
        "",
        f"`{result['command']}`: the decoding engine called directly on the audio the default segmenter "
        f"cuts ({result['config']['vad']['detector']}, hangover {result['config']['vad']['hangover_ms']} ms, "
        f"padding {result['config']['vad']['start_padding_ms']} / {result['config']['vad']['end_padding_ms']} ms): "
        f"{result['short_items']} RAVDESS and TESS clips (*short*) and {result['long_items']} *long* utterances "
        "(three to five cut TESS or CREMA-D clips with different sentences joined with 0.25 s pauses). "
        "Greedy decoding (beam "
        f"{result['config']['asr']['whisper_beam_size']}), int8, {result['threads']} threads, one decode at a time.",
        "",
        "## Window size",
        "",
        "| model | window | set | utterance s p50 / max | WER | decode ms p50 / p95 | sent to 30 s by the guard |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in result["windows"]:
        for name in ("short", "long"):
            r = row.get(name)
            if not r or not r["items"]:
                continue
            d, sec = r["decode_ms"], r["seconds"]
            lines.append(f"| {row['model']} | {row['policy']} | {name} | {sec['p50'] / 1000:.1f} / "
                         f"{sec['max'] / 1000:.1f} | {r['wer']:.3f} | {_f(d['p50'])} / {_f(d['p95'])} | "
                         f"{r['fallbacks']} |")
    lines += ["", "*decode ms*: encoder, decoder, guard (and the 30 s decode where it sent one) and word times, "
              "wall time of one utterance alone.", "", "## Batching across sessions", "",
              "N final utterances waiting at once (short clips), decoded as one batch or one after another:", "",
              "| waiting | one batch: ms until all done p50 | one at a time p50 | utterances/s batched | "
              "one at a time |", "|---:|---:|---:|---:|---:|"]
    for b in result["batching"]:
        lines.append(f"| {b['waiting']} | {_f(b['batched_ms']['p50'])} | {_f(b['one_at_a_time_ms']['p50'])} | "
                     f"{b['utterances_per_s_batched']:.2f} | {b['utterances_per_s_one_at_a_time']:.2f} |")
    w = result["word_times"]
    lines += ["", "## Word times", "",
              f"Over {w['items']} short utterances: with times from the timestamp tokens a decode took "
              f"{_f(w['timestamps_ms']['p50'])} ms (p50), with the alignment pass {_f(w['align_ms']['p50'])} ms. "
              f"Where both gave the same words ({w['same_words']} utterances), word starts moved "
              f"{_f(w['moved_start_ms']['p50'])} ms (p50) / {_f(w['moved_start_ms']['p95'])} ms (p95) between the two, "
              f"ends {_f(w['moved_end_ms']['p50'])} / {_f(w['moved_end_ms']['p95'])} ms.", "",
              "## Partial passes", "",
              f"One pass over the first 1..8 s of an utterance (greedy, 10 s window, no word times): "
              f"{_f(result['partials']['pass_ms']['p50'])} ms p50, {_f(result['partials']['pass_ms']['p95'])} ms p95 "
              f"({result['partials']['passes']} passes).", ""]
    m, g = result["machine"], result["git"]
    lines += [f"Machine: {m.get('cpu_model')}, {m.get('cpu_affinity')} CPUs, Python {m.get('python')}, load "
              f"average {result['loadavg'][0]:.2f} → {result['loadavg'][1]:.2f}. Commit {g.get('commit')}"
              f"{' (dirty working tree)' if g.get('dirty') else ''}. Whole benchmark: {result['wall_seconds']:.0f} s.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.whisper", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--clips", type=int, default=30, help="clips per corpus (default 30)")
    p.add_argument("--long", type=int, default=12, help="long utterances (default 12)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per batch size (default 4)")
    p.add_argument("--threads", type=int, default=2, help="CTranslate2 threads (default 2)")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="another CTranslate2 Whisper model to put in the window table (repeatable)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    data = (args.data or default_data_dir()).expanduser()
    if not all((data / c / "manifest.csv").is_file() for c in CORPORA):
        print(f"error: needs {data}/ravdess and {data}/tess with manifest.csv (pass --data DIR)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    short, long_items = load_items(data, args.clips, args.long)
    print(f"{len(short)} short and {len(long_items)} long utterances", file=sys.stderr, flush=True)
    base = AsrConfig(backend="whisper", whisper_threads=args.threads)
    windows = []
    models = [("whisper-base", "")] + [(Path(m).name, m) for m in args.model]
    for name, directory in models:
        for label, window in POLICIES if not directory else POLICIES[:2]:
            engine = wb.Engine(Path(directory) if directory else wb.default_model_dir(),
                               replace(base, whisper_window_s=window, whisper_model=directory))
            engine.run([_request(np.zeros(RATE, np.int16))])
            row = {"model": name, "policy": label, "window_s": window,
                   "short": run_policy(engine, short), "long": run_policy(engine, long_items)}
            windows.append(row)
            print(f"[{name} {label}] WER short {row['short']['wer']} long {row['long']['wer']}, decode p50 "
                  f"{row['short']['decode_ms']['p50']} / {row['long']['decode_ms']['p50']} ms", file=sys.stderr,
                  flush=True)
    engine = wb.Engine(wb.default_model_dir(), base)
    batching = run_batching(engine, short, (1, 4, 8), args.rounds)
    print(f"batching: {[(b['waiting'], b['utterances_per_s_batched']) for b in batching]}", file=sys.stderr)
    align = wb.Engine(wb.default_model_dir(), replace(base, whisper_word_times="align"))
    word_times = run_word_times(engine, align, short)
    partials = run_partials(engine, short[: max(4, len(short) // 4)])
    cfg = PipelineConfig()
    result = {
        "benchmark": "whisper",
        "command": " ".join(["python -m bench.whisper", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "git": git_info(), "threads": args.threads,
        "config": {"vad": asdict(cfg.vad), "asr": asdict(base)},
        "short_items": len(short), "long_items": len(long_items),
        "clips": [s["path"] for s in short], "long": [s["path"] for s in long_items],
        "windows": windows, "batching": batching, "word_times": word_times, "partials": partials,
        "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    write_result(args.out, "whisper", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
