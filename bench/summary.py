"""One page over every benchmark result: the targets, the ratios, the floor.

``python -m bench.summary`` reads the JSON files the benchmarks wrote under ``bench/results``
(``latency``, ``emotion``, ``text_encoder``, ``frontend``, ``capacity``, ``asr_compare``, ``bus``) and
writes ``bench/results/README.md``. It runs nothing itself; ``make bench`` runs the standard
set and then this.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _commit(r: dict[str, Any]) -> str:
    g = r.get("git") or {}
    commit = g.get("commit") or r.get("git_commit") or "?"
    return f"`{commit[:10]}`" + (" (dirty)" if g.get("dirty") else "")


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


def render(out: Path) -> str:
    lat, emo, txt = _load(out, "latency"), _load(out, "emotion"), _load(out, "text_encoder")
    fe, cap, asr = _load(out, "frontend"), _load(out, "capacity"), _load(out, "asr_compare")
    bus = _load(out, "bus")
    lines = ["# Benchmark results", "",
             "Written by `python -m bench.summary` from the JSON files beside it; `make bench` reruns the standard "
             "set (latency, emotion, text encoder, front end, capacity; about 25 minutes on 2 cores) and then this "
             "page. Each benchmark's own page has its method, every figure and the command that made it.", "",
             "Absolute times on shared 2-core machines move between runs (the differences measured between runs "
             "are in the README's *Measured* section); ratios measured within one run hold better.", "",
             "## Targets", "",
             "| target | measured | | source |", "|---|---|---|---|"]
    if emo:
        own = emo["one_session_ms"]["compute"]["p95"]
        shared = emo.get("one_session_shared_encoder_ms", {}).get("compute", {}).get("p95")
        if shared is not None:
            lines.append(f"| emotion stage ≤ 60 ms at p95, one session, pooling the Whisper recognizer's encoder pass "
                         f"| {shared:.1f} ms | {_verdict(shared <= 60)} | [emotion.md](emotion.md), {_commit(emo)} |")
        lines.append(f"| emotion stage ≤ 250 ms at p95, one session, its own speech-encoder pass (pocketsphinx, vosk, "
                     f"none) | {own:.1f} ms | {_verdict(own <= 250)} | [emotion.md](emotion.md), {_commit(emo)} |")
    if cap:
        for name, r in cap["backends"].items():
            ratio = r.get("capacity_ratio")
            if ratio is None:
                continue
            lines.append(f"| pipeline holds ≥ 85% of the sessions the bare recognizer holds ({name}) | "
                         f"{r['pipeline']['capacity']} of {r['floor']['capacity']} = {100 * ratio:.0f}% | "
                         f"{_verdict(ratio >= 0.85)} | [capacity.md](capacity.md), {_commit(cap)} |")
    wh = (cap or {}).get("backends", {}).get("whisper", {})
    if cap and wh.get("pipeline"):
        one = wh["pipeline"]["probes"][0]["client_ms"]
        ok = one["p50"] is not None and one["p50"] <= 900 and one["p95"] <= 1200
        lines.append(f"| whisper base, one live session: end of speech → utterance p50 ≤ 900 ms, p95 ≤ 1200 ms | "
                     f"{one['p50']:.0f} / {one['p95']:.0f} ms | {_verdict(ok)} | [capacity.md](capacity.md), "
                     f"{_commit(cap)} |")
        held = wh["pipeline"]["capacity"]
        bound = wh.get("hangover_ms", 0) + wh.get("margin_ms", 0)
        lines.append(f"| whisper base: ≥ 4 live sessions on 2 cores (p95 ≤ hangover + 700 = {bound:.0f} ms) | {held} | "
                     f"{_verdict(held >= 4)} | [capacity.md](capacity.md), {_commit(cap)} |")
    if asr and "whisper" in asr.get("runs", {}) and "accuracy" in asr["runs"]["whisper"]:
        wer = asr["runs"]["whisper"]["accuracy"]["wer"]
        before = {"ravdess": 0.014, "tess": 0.042}  # whisper before the CTranslate2 decoder (commit be4c955)
        cells = [f"{c} {wer[c]['wer']:.3f} (was {b:.3f})" for c, b in before.items() if c in wer]
        ok = all(wer[c]["wer"] <= b + 0.01 for c, b in before.items() if c in wer)
        lines.append(f"| whisper WER within +0.01 of before (asr_compare clips) | {', '.join(cells)} | "
                     f"{_verdict(ok)} | [asr_compare.md](asr_compare.md), {_commit(asr)} |")
    if bus and not bus.get("short"):
        c = bus["comparison"]
        lines.append(f"| Redis bus: publish → subscriber p95 ≤ in-memory + 5 ms ({bus['backend']}) | "
                     f"{c['worst_delta_p95_ms']:+.2f} ms | {_verdict(c['latency_met'])} | [bus.md](bus.md), "
                     f"{_commit(bus)} |")
        lines.append(f"| Redis bus: sessions held per node ≥ 95% of in-memory ({bus['backend']}) | "
                     f"{bus['buses']['redis']['capacity']} of {bus['buses']['memory']['capacity']} = "
                     f"{100 * c['sessions_ratio']:.0f}% | {_verdict(c['sessions_met'])} | [bus.md](bus.md), "
                     f"{_commit(bus)} |")
    if txt:
        b1 = next((b for b in txt["batches"] if b["batch_size"] == 1), None)
        if b1:
            lines.append(f"| ONNX text encoder ≥ 1.5x faster than PyTorch at batch 1 | {b1['speedup_median']:.2f}x "
                         f"(median) | {_verdict(b1['speedup_median'] >= 1.5)} | [text_encoder.md](text_encoder.md), "
                         f"{_commit(txt)} |")
    lines += ["", "## Ratios measured in one run", "", "| comparison | ratio | source |", "|---|---|---|"]
    if cap:
        for name, r in cap["backends"].items():
            if "cpu_per_utterance_ratio" in r:
                lines.append(f"| CPU time per utterance, full pipeline / {name} alone (1 session) | "
                             f"{r['cpu_per_utterance_ratio']:.2f} | [capacity.md](capacity.md) |")
            if "capacity_ratio" in r:
                lines.append(f"| sessions held, full pipeline / {name} alone | {r['capacity_ratio']:.2f} | "
                             "[capacity.md](capacity.md) |")
    if txt:
        for b in txt["batches"]:
            lines.append(f"| text encoder time, PyTorch / ONNX, batch {b['batch_size']} | {b['speedup_median']:.2f} "
                         "| [text_encoder.md](text_encoder.md) |")
    if fe:
        lines.append(f"| acoustic front end time per audio second, openSMILE eGeMAPSv02 / ours | "
                     f"{fe['ratio_egemaps_over_ours']:.2f} ({fe['frontends']['ours']['ms_per_audio_s']['median']:.1f}"
                     f" vs {fe['frontends']['egemaps']['ms_per_audio_s']['median']:.1f} ms) | "
                     "[frontend.md](frontend.md) |")
    if emo:
        by = {(b["sessions"], b["max_batch"] > 1): b for b in emo["batching"]}
        for n in sorted({b["sessions"] for b in emo["batching"]}):
            if (n, True) in by and (n, False) in by:
                bat, one = by[(n, True)]["last_result_ms"], by[(n, False)]["last_result_ms"]
                lines.append(f"| emotion model, time to the last result, unbatched / batched, {n} sessions at once | "
                             f"{one['p50'] / bat['p50']:.2f} (p50 {one['p50']:.0f} vs {bat['p50']:.0f} ms) | "
                             "[emotion.md](emotion.md) |")
    lines += ["", "## The floor and how far above it we are", ""]
    if lat:
        f = lat["floor"]
        lines.append(f"- **End-of-speech decision**: the VAD waits {f['hangover_ms']} ms of silence "
                     f"({f['effective_hangover_ms']} ms in whole {f['frame_ms']} ms frames) before it ends an "
                     "utterance; no system that segments live speech can emit before that. One session in process "
                     f"([latency.md](latency.md)): the utterance event is written {f['total_p50_above_floor_ms']:.0f} "
                     f"ms (p50) / {f['total_p95_above_floor_ms']:.0f} ms (p95) after it.")
    if cap:
        for name, r in cap["backends"].items():
            if "pipeline" not in r:
                continue
            p1 = r["pipeline"]["probes"][0]
            s = p1["stages"]
            fl = (r.get("floor") or {}).get("probes", [{}])[0].get("final_ms")
            parts = ", ".join(f"{k.replace('_', ' ')} {s[k]['p50']:.0f}" for k in
                              ("asr", "emotion_wait", "features", "text", "model", "output", "delivery_ms")
                              if s.get(k, {}).get("p50") is not None)
            floor_txt = (f"; the recognizer alone finalizes a clip {fl['p50']:.0f} ms (p50) / {fl['p95']:.0f} ms "
                         "(p95) after its end" if fl else "")
            lines.append(f"- **{name}, through the server to a subscriber, one session**: p50 "
                         f"{p1['client_ms']['p50']:.0f} ms, p95 {p1['client_ms']['p95']:.0f} ms after the end of "
                         f"speech, {p1['client_ms']['p50'] - cap['hangover_ms']:.0f} ms (p50) above the hangover; "
                         f"stages beyond the VAD, p50 ms: {parts}{floor_txt}.")
    if asr:
        lines.append("- **Recognizers** ([asr_compare.md](asr_compare.md), not in the standard set: about 10 "
                     "minutes): " + "; ".join(
                         f"{n} {r['latency']['total_ms']['p50']:.0f} ms end of speech → final (p50)"
                         for n, r in asr["runs"].items() if "latency" in r) + ".")
    vosk = (cap or {}).get("backends", {}).get("vosk", {})
    if "floor" in vosk and "pipeline" in vosk and vosk["pipeline"]["capacity"] > vosk["floor"]["capacity"]:
        lines += ["", "**Why vosk holds more sessions in the pipeline than alone.** The floor feeds the recognizer "
                  "whole clips, their leading and trailing silence included, while the pipeline gives it only the "
                  "speech the VAD cut (with 300/200 ms of padding); and the floor's rule also fails a count when a "
                  "feeding thread is 0.5 s behind its schedule, which vosk's bursty decoding calls (up to 0.2 s at "
                  "one session) reach first."]
    if cap:
        lines += ["", "## Capacity", "", "| recognizer | sessions held | recognizer alone | per added session (MB) |",
                  "|---|---:|---:|---:|"]
        for name, r in cap["backends"].items():
            if "pipeline" in r:
                lines.append(f"| {name} | {r['pipeline']['capacity']} | "
                             f"{(r.get('floor') or {}).get('capacity', '–')} | "
                             f"{r['pipeline'].get('rss_mb_per_added_session', '–')} |")
        lines += ["", "![latency against sessions](capacity_latency.png)", "", "![stages](capacity_stages.png)"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    text = render(args.out)
    (args.out / "README.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
