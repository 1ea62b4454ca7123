"""What the Redis bus costs against the in-memory bus, measured in one run.

``python -m bench.bus`` starts, side by side, one ``realtime-ser serve`` on the in-memory bus
(the single node of today), and two nodes on a real ``redis-server`` (append-only file on, as
docs/deploy.md runs it): node A takes the calls, node B serves their subscribers, so every
event a subscriber gets went node A → Redis → node B. With bench.capacity's probe and rules
(RAVDESS and TESS clips streamed in real time to ``/ingest``, one subscriber per session; a
session count *holds* when no audio fell behind, nothing was dropped, no error came, every
subscriber got a gapless log through ``session.ended``, and p95 end of speech → event ≤ VAD
hangover + 250 ms) it finds the sessions each holds, then compares them at the same session
counts, the two buses probed in turn (so drift on a shared machine hits both):

- **publish → subscriber**: bench.capacity's *delivery* time of each utterance, from the
  server writing the event to the subscriber reading it (the event's own ``latency_ms.total``
  subtracted from the time the subscriber measured since the audio was sent). Target: the
  Redis bus's p95 at most 5 ms above the in-memory bus's.
- **sessions held per node**: the ingest node's capacity with the Redis bus over the
  in-memory bus's. Target: at least 95%.

It also records what Redis itself costs (CPU seconds per 1000 events, memory per session) and
what node B spends, for the capacity plan (``python -m bench.plan``).

Writes ``bus.json`` and ``bus.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.asr_compare import CORPORA
from bench.capacity import MARGIN_MS, Server, ServerMeter, _stat, clip_pool, probe_server, search, session_stream
from bench.latency import default_data_dir, git_info, machine, summarize, write_result
from bench.redis_server import RedisServer, have_redis

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_P95_MS = 5.0
TARGET_SESSIONS = 0.95


def _redis_info(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info()
        return {"used_memory": int(info["used_memory"]), "keys": int(client.dbsize()),
                "total_commands": int(info["total_commands_processed"])}
    finally:
        client.close()


class Setup:
    """One bus: where calls go, where their subscribers are, which processes to meter."""

    def __init__(self, name: str, ingest: Server, subscribe: Server | None = None,
                 redis: RedisServer | None = None) -> None:
        self.name, self.ingest, self.subscribe, self.redis = name, ingest, subscribe, redis

    @property
    def sub_url(self) -> str:
        return (self.subscribe or self.ingest).url

    def probe(self, streams: list[np.ndarray], hangover: float, max_lag: float) -> dict[str, Any]:
        others = {"subscriber_node": self.subscribe.proc.pid if self.subscribe else None,
                  "redis": self.redis.pid if self.redis else None}
        before = {k: ServerMeter(pid).snapshot()[0] if k == "subscriber_node" else _stat(pid)[0]
                  for k, pid in others.items() if pid}
        info0 = _redis_info(self.redis.url) if self.redis else None
        result = probe_server(self.ingest, streams, hangover, max_lag, sub_url=self.sub_url)
        for k, pid in others.items():
            if pid:
                now = ServerMeter(pid).snapshot()[0] if k == "subscriber_node" else _stat(pid)[0]
                result[f"{k}_cpu_seconds"] = round(now - before[k], 3)
        if self.redis and info0:
            info1 = _redis_info(self.redis.url)
            result["redis_commands"] = info1["total_commands"] - info0["total_commands"]
            result["redis_used_memory_mb"] = round(info1["used_memory"] / 2**20, 2)
            result["redis_keys"] = info1["keys"]
        result["bus"] = self.name
        return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = args.data or default_data_dir()
    if not all((data / c / "manifest.csv").is_file() for c in CORPORA):
        raise SystemExit(f"error: RAVDESS and TESS manifests not found under {data} (set --data or "
                         "REALTIME_SER_SHARED_DATA)")
    if not have_redis():
        raise SystemExit("error: redis-server is not installed (apt-get install redis-server)")
    pool = clip_pool(data, 24)
    hangover = float(args.hangover_ms)
    overrides = [f"vad.hangover_ms={int(args.hangover_ms)}", *args.set]

    def streams_for(n: int) -> list[np.ndarray]:
        seconds = args.seconds_one if n == 1 else args.seconds
        return [session_stream(pool, i, seconds, args.gap, args.seed)[0] for i in range(n)]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    result: dict[str, Any] = {"backend": args.backend, "buses": {}}
    with tempfile.TemporaryDirectory(prefix="rtser-bus-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis").start()
        servers: list[Server] = []
        try:
            memory = Server(args.backend, overrides, work / "memory.log")
            servers.append(memory)
            bus = [f"server.bus={redis.url}", "server.bus_prefix=bench"]
            node_a = Server(args.backend, [*overrides, *bus, "server.node=A"], work / "node-a.log")
            servers.append(node_a)
            node_b = Server("none", [*overrides, *bus, "server.node=B"], work / "node-b.log")
            servers.append(node_b)
            setups = {"memory": Setup("memory", memory), "redis": Setup("redis", node_a, node_b, redis)}
            result["commands"] = {"memory": " ".join(map(shlex.quote, memory.cmd[1:])),
                                  "redis_ingest": " ".join(map(shlex.quote, node_a.cmd[1:])),
                                  "redis_subscribers": " ".join(map(shlex.quote, node_b.cmd[1:])),
                                  "redis_server": " ".join(map(shlex.quote, redis.command()))}
            for setup in setups.values():  # models loaded, recognizer workers started, connections pooled
                print(f"[{setup.name}] warm-up", file=sys.stderr, flush=True)
                setup.probe(streams_for(2), hangover, args.max_lag)
            # What the cluster costs with no call at all (heartbeats, the lost-node check, the feed
            # reader's blocking reads), to tell it from what each event costs.
            meters = {"memory_node": ServerMeter(memory.proc.pid), "ingest_node": ServerMeter(node_a.proc.pid),
                      "subscriber_node": ServerMeter(node_b.proc.pid)}
            idle0 = {k: m.snapshot()[0] for k, m in meters.items()} | {"redis": _stat(redis.pid)[0]}
            time.sleep(args.idle_seconds)
            idle1 = {k: m.snapshot()[0] for k, m in meters.items()} | {"redis": _stat(redis.pid)[0]}
            result["idle_cpu_per_second"] = {k: round((idle1[k] - idle0[k]) / args.idle_seconds, 4) for k in idle0}
            for name, setup in setups.items():
                print(f"[{name}] sessions held", file=sys.stderr, flush=True)

                def probe(n: int, setup: Setup = setup) -> dict[str, Any]:
                    return setup.probe(streams_for(n), hangover, args.max_lag)

                def estimate(one: dict[str, Any]) -> float:
                    return 0.7 * cores / max(one["server_cpu_per_audio_second"], 1e-3)

                cap, probes = search(probe, estimate, args.max_sessions, args.max_probes)
                result["buses"][name] = {"capacity": cap, "probes": probes}
            caps = [result["buses"][b]["capacity"] for b in ("memory", "redis")]
            counts = sorted({1, max(1, min(caps))})
            print(f"comparing at {counts} sessions, {args.rounds} round(s), the buses in turn", file=sys.stderr,
                  flush=True)
            paired: dict[str, dict[str, list[dict[str, Any]]]] = {str(n): {"memory": [], "redis": []}
                                                                   for n in counts}
            for _ in range(args.rounds):
                for n in counts:
                    for name, setup in setups.items():
                        paired[str(n)][name].append(setup.probe(streams_for(n), hangover, args.max_lag))
            result["paired"] = paired
            result["redis_after"] = _redis_info(redis.url)
            print(f"throughput: {args.throughput_events} events", file=sys.stderr, flush=True)
            result["throughput"] = throughput(redis.url, redis.pid, args.throughput_events, 50)
        finally:
            for server in servers:
                server.close()
            redis.stop()
    return result


def _utterance(session: str, seq: int) -> dict[str, Any]:
    """An utterance event of typical size (about 1 KB)."""
    words: list[dict[str, Any]] = [
        {"word": w, "start": 0.3 * i, "end": 0.3 * i + 0.25, "conf": 0.9}
        for i, w in enumerate("I would like to check the status of my order please".split())]
    scores = {"neutral": 0.41, "happy": 0.12, "sad": 0.17, "angry": 0.30}
    return {"v": 1, "type": "utterance", "session": session, "seq": seq, "t": seq * 2.0, "utterance_id": f"ch0-{seq}",
            "speaker": "ch0", "channel": 0, "start": seq * 2.0 - 1.8, "end": seq * 2.0, "end_reason": "silence",
            "text": " ".join(w["word"] for w in words), "words": words,
            "emotion": {"label": "neutral", "scores": scores, "modalities": {"audio": scores, "text": scores},
                        "context_turns": 4, "model": {"name": "default", "version": "bench"}},
            "latency_ms": {"vad": 540.0, "queue": 0.1, "asr": 20.0, "emotion_wait": 0.1, "features": 26.0,
                           "text": 6.0, "model": 0.7, "emit": 33.0, "total": 600.0}}


def throughput(url: str, redis_pid: int, events: int, sessions: int) -> dict[str, Any]:
    """How fast one node writes events to Redis and another reads them back, and what each side
    costs: ``events`` utterance-sized events of ``sessions`` sessions published as fast as the
    writer takes them, three times (nodes in this process): the writer alone; the writer and a
    node that follows nothing (the feed read that every node of a cluster pays for every event);
    the writer and a node with an all-sessions subscriber (end to end)."""
    import json

    from realtime_ser.config import PipelineConfig, apply_overrides
    from realtime_ser.server.hub import Hub
    from realtime_ser.server.redis_bus import RedisBus

    cfg = apply_overrides(PipelineConfig(), [f"server.bus={url}", "server.bus_prefix=throughput"]).server
    # Each run's nodes close with their sessions open; the next run's nodes end those (node_lost)
    # and would say so for each.
    logging.getLogger("realtime_ser.server.redis_bus").setLevel(logging.ERROR)

    async def once(run: str, reader: bool, subscribed: bool) -> dict[str, Any]:
        writer_hub = Hub(cfg.log_events, cfg.retain_ended_s, 10, bus=RedisBus(cfg))
        await writer_hub.bus.start(f"throughput-writer-{run}")
        reader_hub = Hub(cfg.log_events, cfg.retain_ended_s, events + 10, bus=RedisBus(cfg)) if reader else None
        if reader_hub is not None:
            await reader_hub.bus.start(f"throughput-reader-{run}")
        sub = reader_hub.subscribe(None, None) if reader_hub is not None and subscribed else None
        names = [f"tp-{run}-{i}" for i in range(sessions)]
        for name in names:
            writer_hub.open(name)
        memory0 = _redis_info(url)["used_memory"]
        cpu0, redis0, t0 = time.process_time(), _stat(redis_pid)[0], time.monotonic()
        for k in range(events):
            writer_hub.publish(_utterance(names[k % sessions], k // sessions))
            if k % 50 == 49:
                await asyncio.sleep(0)  # the writer, the reader run in between, as with live sessions
        while writer_hub.bus._pending_total() and time.monotonic() - t0 < 120:  # type: ignore[attr-defined]
            await asyncio.sleep(0.005)
        written = time.monotonic()
        if sub is not None:
            while sub.queue.qsize() < events and time.monotonic() - t0 < 120:
                await asyncio.sleep(0.005)
        elif reader_hub is not None:
            await asyncio.sleep(1.0)  # the reader's last XREAD
        read = time.monotonic()
        cpu, redis_cpu = time.process_time() - cpu0, _stat(redis_pid)[0] - redis0
        memory1 = _redis_info(url)["used_memory"]
        if reader_hub is not None:
            await reader_hub.bus.close(1.0)  # first: it would end the writer's sessions for lost
        await writer_hub.bus.close(1.0)
        return {"cpu_ms_per_event": 1000 * cpu / events, "redis_cpu_ms_per_event": 1000 * redis_cpu / events,
                "written_seconds": written - t0, "read_seconds": read - t0,
                "received": sub.queue.qsize() if sub is not None else None,
                "redis_bytes_per_event": (memory1 - memory0) / events}

    async def main() -> dict[str, Any]:
        alone = await once("a", False, False)
        idle = await once("b", True, False)
        full = await once("c", True, True)
        return {"events": events, "sessions": sessions,
                "event_bytes": len(json.dumps(_utterance("tp-c-0", 0), separators=(",", ":"))),
                "received": full["received"], "written_seconds": round(full["written_seconds"], 3),
                "read_seconds": round(full["read_seconds"], 3),
                "events_per_second": round(events / max(full["read_seconds"], 1e-9)),
                "writer_cpu_ms_per_1000_events": round(1000 * alone["cpu_ms_per_event"], 1),
                "feed_reader_cpu_ms_per_1000_events": round(
                    1000 * max(0.0, idle["cpu_ms_per_event"] - alone["cpu_ms_per_event"]), 1),
                "nodes_cpu_ms_per_1000_events": round(1000 * full["cpu_ms_per_event"], 1),
                "redis_cpu_ms_per_1000_events": round(1000 * full["redis_cpu_ms_per_event"], 1),
                "redis_bytes_per_event": round(alone["redis_bytes_per_event"])}

    return asyncio.run(main())


def compare(result: dict[str, Any]) -> dict[str, Any]:
    """The two targets from the paired probes (all rounds pooled) and the search."""
    out: dict[str, Any] = {"latency": {}}
    for n, by_bus in result["paired"].items():
        row: dict[str, Any] = {}
        for name, probes in by_bus.items():
            delivery = [v for p in probes for v in p.get("samples_delivery_ms", [])]
            client = [v for p in probes for v in p.get("samples_client_ms", [])]
            row[name] = {"delivery_ms": summarize(delivery), "client_ms": summarize(client),
                         "holds": all(p["holds"] for p in probes), "utterances": sum(p["utterances"] for p in probes)}
        m, r = row["memory"]["delivery_ms"]["p95"], row["redis"]["delivery_ms"]["p95"]
        row["delta_p95_ms"] = round(r - m, 2) if m is not None and r is not None else None
        out["latency"][n] = row
    deltas = [v["delta_p95_ms"] for v in out["latency"].values() if v["delta_p95_ms"] is not None]
    out["worst_delta_p95_ms"] = max(deltas) if deltas else None
    mem, red = result["buses"]["memory"]["capacity"], result["buses"]["redis"]["capacity"]
    out["sessions_ratio"] = round(red / mem, 3) if mem else None
    out["latency_met"] = out["worst_delta_p95_ms"] is not None and out["worst_delta_p95_ms"] <= TARGET_P95_MS
    out["sessions_met"] = out["sessions_ratio"] is not None and out["sessions_ratio"] >= TARGET_SESSIONS
    redis_probes = [p for p in result["buses"]["redis"]["probes"] + [q for v in result["paired"].values()
                                                                      for q in v["redis"]] if p.get("redis_commands")]
    events = sum(p["events"] for p in redis_probes)
    audio = sum(p["audio_seconds"] for p in redis_probes)
    wall = sum(p["wall_seconds"] for p in redis_probes)
    idle = result["idle_cpu_per_second"]

    def per_1000(key: str, idle_key: str) -> float | None:
        if not events:
            return None
        busy = sum(p[key] for p in redis_probes) - idle[idle_key] * wall  # what the events added
        return round(1000 * max(busy, 0.0) / events * 1000, 1)

    out["redis"] = {
        "events": events,
        "events_per_session_second": round(events / audio, 3) if audio else None,
        "cpu_ms_per_1000_events": per_1000("redis_cpu_seconds", "redis"),
        "subscriber_node_cpu_ms_per_1000_events": per_1000("subscriber_node_cpu_seconds", "subscriber_node"),
        "commands_per_second_of_probe": round(sum(p["redis_commands"] for p in redis_probes) / wall, 1)
        if wall else None,
        "idle_cpu_ms_per_second": {k: round(1000 * v, 2) for k, v in idle.items()},
        "used_memory_mb_after": round(result["redis_after"]["used_memory"] / 2**20, 1),
    }
    return out


def markdown(result: dict[str, Any]) -> str:
    c = result["comparison"]
    hang = result["hangover_ms"]

    def f(v: Any, d: int = 1) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    lines = [
        "# The Redis bus against the in-memory bus",
        "",
        f"`{result['command']}`{' (short mode: a quick check, not the figures)' if result['short'] else ''}: "
        f"recognizer {result['backend']}; one node on the in-memory bus, and two nodes on a real redis-server "
        "(append-only file on): node A takes the calls, node B serves their subscribers, so every event went "
        "A → Redis → B. Calls: bench.capacity's (RAVDESS and TESS clips, "
        f"{result['seconds']:.0f} s per session, real time), one subscriber per session, the same rules for a session "
        f"count to hold (p95 end of speech → event ≤ {hang + MARGIN_MS:.0f} ms, no audio behind, nothing dropped, "
        "gapless logs). *Publish → subscriber* is the delivery time of each utterance event: from the server writing "
        "it to the subscriber reading it.",
        "",
        "| target | memory | redis | measured | |",
        "|---|---:|---:|---:|---|",
        f"| publish → subscriber p95 ≤ in-memory + {TARGET_P95_MS:.0f} ms (worst of the compared counts) | "
        + " | ".join(f(c["latency"][n][b]["delivery_ms"]["p95"]) for n in list(c["latency"])[-1:] for b in
                     ("memory", "redis"))
        + f" | {f(c['worst_delta_p95_ms'], 2)} ms | **{'met' if c['latency_met'] else 'not met'}** |",
        f"| sessions held per node ≥ {TARGET_SESSIONS:.0%} of in-memory | {result['buses']['memory']['capacity']} | "
        f"{result['buses']['redis']['capacity']} | {f(c['sessions_ratio'], 2)} | "
        f"**{'met' if c['sessions_met'] else 'not met'}** |",
        "",
        "## Publish → subscriber at the same session counts",
        "",
        f"The buses probed in turn, {result['rounds']} round(s); all utterances of a count pooled. ms.",
        "",
        "| sessions | bus | delivery p50 / p95 / p99 / max | end of speech → event p50 / p95 | utterances | held |",
        "|---:|---|---|---|---:|---|",
    ]
    for n, row in c["latency"].items():
        for b in ("memory", "redis"):
            d, e = row[b]["delivery_ms"], row[b]["client_ms"]
            lines.append(f"| {n} | {b} | {f(d['p50'], 2)} / {f(d['p95'], 2)} / {f(d['p99'], 2)} / {f(d['max'], 2)} | "
                         f"{f(e['p50'], 0)} / {f(e['p95'], 0)} | {row[b]['utterances']} | "
                         f"{'yes' if row[b]['holds'] else 'no'} |")
        lines.append(f"| {n} | Δ p95 | {f(row['delta_p95_ms'], 2)} | | | |")
    lines += ["", "## Sessions held (bench.capacity's search)", "",
              "| bus | sessions | p50 / p95 end of speech → event (ms) | delivery p95 (ms) | node CPU / audio s | "
              "node B CPU s | Redis CPU s | why not |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for b in ("memory", "redis"):
        for p in result["buses"][b]["probes"]:
            lines.append(f"| {b} | {p['sessions']} | {f(p['client_ms']['p50'], 0)} / {f(p['client_ms']['p95'], 0)} | "
                         f"{f(p['stages']['delivery_ms']['p95'], 2)} | {p['server_cpu_per_audio_second']:.3f} | "
                         f"{f(p.get('subscriber_node_cpu_seconds'), 2)} | {f(p.get('redis_cpu_seconds'), 2)} | "
                         f"{'; '.join(p['why_not'])} |")
    r = c["redis"]
    tp = result["throughput"]
    idle = r["idle_cpu_ms_per_second"]
    lines += ["", "## What Redis costs", "",
              f"- {r['events']} events through Redis in the Redis probes: {f(r['events_per_session_second'], 2)} "
              "events per session-second of call.",
              f"- With no call at all (heartbeats, the lost-node check, the feed reader), CPU ms per second: "
              f"redis-server {f(idle['redis'], 2)}, node A {f(idle['ingest_node'], 2)}, node B "
              f"{f(idle['subscriber_node'], 2)}; the in-memory node {f(idle['memory_node'], 2)}.",
              f"- What the events add: redis-server {f(r['cpu_ms_per_1000_events'])} ms of CPU per 1000 events, "
              f"node B (the subscribers' node) {f(r['subscriber_node_cpu_ms_per_1000_events'])} ms per 1000 events; "
              f"{f(r['commands_per_second_of_probe'], 0)} Redis commands per second during the probes (coarse: "
              "the probes carry few events; the throughput run below is the figure to plan with).",
              f"- Throughput (one node writing {tp['events']} utterance-sized events of {tp['event_bytes']} bytes, "
              f"{tp['sessions']} sessions, as fast as it can; another reading them all back, both in one process): "
              f"{tp['events_per_second']} events/s end to end ({tp['received']} of {tp['events']} received); "
              f"redis-server {f(tp['redis_cpu_ms_per_1000_events'])} ms of CPU per 1000 events; the writing node "
              f"{f(tp['writer_cpu_ms_per_1000_events'])} ms per 1000 events (publishing included); following the "
              f"feed, which every node does for every event of the cluster, "
              f"{f(tp['feed_reader_cpu_ms_per_1000_events'])} ms per 1000 events; Redis memory "
              f"{tp['redis_bytes_per_event']} bytes per event (its session's stream and the feed).",
              f"- Redis memory after the run: {f(r['used_memory_mb_after'])} MB (every session of the run retained "
              "for server.retain_ended_s, each stream capped at server.log_events).", ""]
    m, g = result["machine"], result["git"]
    lines += [f"Machine: {m.get('cpu_model')}, {m.get('cpu_affinity')} CPUs, Python {m.get('python')}; servers, "
              "Redis and the clients share the cores. "
              f"Commit {g.get('commit')}{' (dirty working tree)' if g.get('dirty') else ''}. "
              f"Whole benchmark: {result['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bus", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--backend", default="pocketsphinx", help="recognizer of the ingest nodes (default pocketsphinx)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per session and probe, s (default 20)")
    p.add_argument("--seconds-one", type=float, default=30.0, help="audio of one-session probes, s (default 30)")
    p.add_argument("--gap", type=float, default=1.0)
    p.add_argument("--max-sessions", type=int, default=48)
    p.add_argument("--max-probes", type=int, default=6, help="probes per bus in the search (default 6)")
    p.add_argument("--rounds", type=int, default=2, help="paired rounds at the compared counts (default 2)")
    p.add_argument("--throughput-events", type=int, default=50000,
                   help="events of the Redis throughput run (default 50000)")
    p.add_argument("--idle-seconds", type=float, default=20.0,
                   help="how long the cluster's own cost is measured with no call (default 20)")
    p.add_argument("--max-lag", type=float, default=0.5)
    p.add_argument("--hangover-ms", type=float, default=None,
                   help="the nodes' vad.hangover_ms (default: the configuration's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every node (repeatable)")
    p.add_argument("--short", action="store_true",
                   help="a quick check that it runs (about 2 minutes): --backend none, 6 s per session, at most 3 "
                        "sessions, 2 probes, 1 round, 3 s idle; results under --out still")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.hangover_ms is None:
        from realtime_ser.config import PipelineConfig

        args.hangover_ms = float(PipelineConfig().vad.hangover_ms)
    if args.short:
        args.backend, args.seconds, args.seconds_one = "none", 6.0, 6.0
        args.max_sessions, args.max_probes, args.rounds, args.idle_seconds = 3, 2, 1, 3.0
        args.throughput_events = 5000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    result = run(args)
    for bus in result["buses"].values():
        for p in bus["probes"]:
            p.pop("samples_stages", None)
    result.update({"benchmark": "bus", "command": " ".join(["python -m bench.bus", *map(shlex.quote, argv or
                                                                                     sys.argv[1:])]),
                   "short": args.short, "machine": machine(), "git": git_info(), "seconds": args.seconds,
                   "hangover_ms": args.hangover_ms, "rounds": args.rounds, "overrides": args.set,
                   "wall_seconds": round(time.monotonic() - t0, 1)})
    result["comparison"] = compare(result)
    write_result(args.out, "bus", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
