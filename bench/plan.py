"""The capacity plan of docs/deploy.md, computed from the measured figures.

``python -m bench.plan`` reads ``bench/results/capacity.json`` (live calls one 2-core node
holds per recognizer, through the real server), ``bus.json`` (what the Redis bus costs a node,
and Redis itself, when it was measured in full) and ``asr_compare.json`` (Whisper's CPU per
audio second, for its estimate), and writes ``plan.md`` / ``plan.json`` beside them and the
plan's table into docs/deploy.md (between its ``plan`` markers). It runs nothing itself.

The rules, so the figures can be checked by hand:

- **Calls per node** = the capacity measured on the benchmark's node (its cores), times the
  Redis bus's measured sessions ratio (``bus.json``; until that was measured in full: its
  target, 0.95), times ``HEADROOM`` (0.8: the measured capacity is where p95 latency reaches
  the limit; a node planned at it has no margin for a burst), rounded down.
- **Nodes** = calls / calls per node, rounded up, plus spares: one node in ten, at least
  one, so a lost node's calls (their callers dial again) fit on the others.
- **Cores** = nodes times the benchmark node's cores (the plan is in nodes of the size that was
  measured; capacity on larger nodes was not measured).
- **Redis**: events per call-second (``bus.json``, else ``DEFAULT_EVENT_RATE``) times the calls
  gives its event rate; its CPU per 1000 events and memory per event (``bus.json``'s throughput
  run) give the cores and memory it needs for calls of ``HANDLE_S`` seconds kept for
  ``server.retain_ended_s`` after they end.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from bench.latency import write_result

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"
CALLS = (100, 1000)
HEADROOM = 0.8
SPARE = 0.1
BUS_TARGET = 0.95
DEFAULT_EVENT_RATE = 1.0
"""Events per call-second assumed before bench.bus measured it (partials make pocketsphinx's higher)."""
HANDLE_S = 300.0
"""An average call of five minutes, for Redis memory."""
RETAIN_S = 600.0
BEGIN, END = "<!-- plan:begin (python -m bench.plan writes this) -->", "<!-- plan:end -->"


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def nodes_for(calls: int, per_node: int) -> tuple[int, int]:
    """(nodes carrying calls, spares)."""
    base = math.ceil(calls / per_node)
    return base, max(1, math.ceil(SPARE * base))


def compute(out: Path) -> dict[str, Any]:
    cap = _load(out, "capacity")
    if cap is None:
        raise SystemExit(f"error: {out / 'capacity.json'} is missing; run python -m bench.capacity first")
    bus = _load(out, "bus")
    asr = _load(out, "asr_compare")
    cores = int(cap["machine"].get("cpu_affinity") or cap["machine"].get("cpu_count") or 1)
    measured_bus = bus is not None and not bus.get("short")
    ratio = min(1.0, float(bus["comparison"]["sessions_ratio"])) if measured_bus and bus else BUS_TARGET
    rows: list[dict[str, Any]] = []
    for name, r in cap["backends"].items():
        if "pipeline" not in r or "baseline" in name:  # an older commit measured for comparison, not a plan
            continue
        held = int(r["pipeline"]["capacity"])
        rows.append({"recognizer": name, "measured": held, "lower_bound": held >= int(cap["max_sessions"]),
                     "estimated": False, "rss_mb_idle": r["pipeline"]["probes"][0]["server_rss_mb_idle"],
                     "rss_mb_per_session": r["pipeline"].get("rss_mb_per_added_session")})
    ps = next((r for r in rows if r["recognizer"] == "pocketsphinx"), None)
    measured_whisper = any(r["recognizer"] == "whisper" for r in rows)
    if not measured_whisper and asr and ps and "whisper" in asr.get("runs", {}) and "pocketsphinx" in asr["runs"]:
        w = asr["runs"]["whisper"]["accuracy"]["cpu_per_audio_second"]
        p = asr["runs"]["pocketsphinx"]["accuracy"]["cpu_per_audio_second"]
        rows.append({"recognizer": "whisper", "measured": round(ps["measured"] * p / w, 1), "lower_bound": False,
                     "estimated": True, "cpu_ratio": round(w / p, 2), "rss_mb_idle": None,
                     "rss_mb_per_session": None})
    for row in rows:
        # a node that held too few calls to plan one with headroom gets no plan (0), not a made-up 1
        per_node = math.floor(row["measured"] * ratio * HEADROOM)
        row["per_node"] = per_node
        for calls in CALLS:
            nodes = spare = None
            if per_node:
                base, spare = nodes_for(calls, per_node)
                nodes = base + spare
            row[f"nodes_{calls}"] = nodes
            row[f"spare_{calls}"] = spare
            row[f"cores_{calls}"] = nodes * cores if nodes is not None else None
    rate = DEFAULT_EVENT_RATE
    redis: dict[str, Any] = {"measured": measured_bus}
    if measured_bus and bus:
        rate = float(bus["comparison"]["redis"]["events_per_session_second"] or DEFAULT_EVENT_RATE)
        tp = bus["throughput"]
        redis.update({"cpu_ms_per_1000_events": tp["redis_cpu_ms_per_1000_events"],
                      "bytes_per_event": tp["redis_bytes_per_event"]})
    redis["events_per_call_second"] = rate
    for calls in CALLS:
        events = calls * rate
        entry: dict[str, Any] = {"events_per_second": round(events)}
        if "cpu_ms_per_1000_events" in redis:
            entry["cpu_cores"] = round(events * redis["cpu_ms_per_1000_events"] / 1000 / 1000, 3)
            held_calls = calls * (1 + RETAIN_S / HANDLE_S)  # live ones and those still retained
            entry["memory_mb"] = round(held_calls * HANDLE_S * rate * redis["bytes_per_event"] / 2**20)
        redis[str(calls)] = entry
    return {"benchmark": "plan", "node_cores": cores, "bus_ratio": ratio, "bus_measured": measured_bus,
            "headroom": HEADROOM, "spare": SPARE, "rows": rows, "redis": redis,
            "sources": {"capacity": cap.get("git", {}).get("commit"), "bus": (bus or {}).get("git", {}).get("commit"),
                        "asr_compare": (asr or {}).get("git", {}).get("commit")}}


def table(plan: dict[str, Any]) -> str:
    cores = plan["node_cores"]
    bus = (f"× {plan['bus_ratio']:.2f} (the Redis bus's sessions ratio, measured by bench.bus)"
           if plan["bus_measured"] else
           f"× {plan['bus_ratio']:.2f} (the Redis bus's target; bench.bus has not been run in full yet)")
    lines = [f"Nodes of {cores} cores, as measured. Calls per node = measured capacity {bus} × {plan['headroom']} "
             f"headroom, rounded down; nodes include spares (one in ten, at least one) for a lost node's calls.", "",
             "| recognizer | calls one node held (measured) | planned per node | 100 calls: nodes (spares) / cores | "
             "1000 calls: nodes (spares) / cores | memory per node |", "|---|---:|---:|---:|---:|---|"]
    for r in plan["rows"]:
        held = (f"~{r['measured']} (estimated ¹)" if r["estimated"] else
                f"{r['measured']}{'+ (the most tried)' if r['lower_bound'] else ''}")
        if not r["per_node"]:
            lines.append(f"| {r['recognizer']} | {held} | 0 ² | – | – | – |")
            continue
        mem = "–"
        if r["rss_mb_idle"] is not None and r["rss_mb_per_session"] is not None:
            mem = f"{(r['rss_mb_idle'] + r['per_node'] * r['rss_mb_per_session']) / 1024:.1f} GB"
        lines.append(f"| {r['recognizer']} | {held} | {r['per_node']} | {r['nodes_100']} ({r['spare_100']}) / "
                     f"{r['cores_100']} | {r['nodes_1000']} ({r['spare_1000']}) / {r['cores_1000']} | {mem} |")
    red = plan["redis"]
    lines += [""]
    if any(r["estimated"] for r in plan["rows"]):
        w = next(r for r in plan["rows"] if r["estimated"])
        lines += [f"¹ Whisper was not measured through the server (its finals come about 2.3 s after the end of "
                  f"speech, beyond the capacity rule's 750 ms at any count): its CPU per audio second is "
                  f"{w['cpu_ratio']}× pocketsphinx's (bench/results/asr_compare.md), so it is pocketsphinx's measured "
                  "capacity divided by that. Measure it before buying machines for it.", ""]
    if any(not r["per_node"] for r in plan["rows"]):
        lines += ["² Held too few calls within the capacity rule's latency bound to plan one per node with the "
                  "headroom: no plan for it (bench/results/capacity.md says what bound it missed by how much).", ""]
    if red["measured"]:
        lines.append(f"Redis: {red['events_per_call_second']:.2f} events per call-second (measured); "
                     f"100 calls: {red['100']['events_per_second']} events/s, {red['100']['cpu_cores']} of a core, "
                     f"~{red['100']['memory_mb']} MB; 1000 calls: {red['1000']['events_per_second']} events/s, "
                     f"{red['1000']['cpu_cores']} of a core, ~{red['1000']['memory_mb']} MB (calls of "
                     f"{HANDLE_S / 60:.0f} minutes, kept {RETAIN_S / 60:.0f} minutes after they end). One Redis "
                     "is far from its limits at either size.")
    else:
        lines.append(f"Redis: about {red['events_per_call_second']:.0f} event per call-second (assumed until "
                     f"`python -m bench.bus` runs in full): 100 calls, {red['100']['events_per_second']} events/s; "
                     f"1000 calls, {red['1000']['events_per_second']} events/s. Its CPU and memory per event come "
                     "from bench.bus's throughput run.")
    return "\n".join(lines)


def update_doc(block: str, path: Path = DEPLOY_DOC) -> bool:
    """Put ``block`` between the plan markers of docs/deploy.md; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {path} has no plan markers ({BEGIN} ... {END})")
    new = pattern.sub(lambda _m: f"{BEGIN}\n{block}\n{END}", text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="where the results are (and plan.* go)")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/deploy.md's table")
    args = p.parse_args(argv)
    plan = compute(args.out)
    block = table(plan)
    md = "# Capacity plan\n\nComputed by `python -m bench.plan` from the results beside it (rules: " \
         "bench/plan.py).\n\n" + block + "\n"
    write_result(args.out, "plan", plan, md)
    if not args.no_doc:
        update_doc(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
