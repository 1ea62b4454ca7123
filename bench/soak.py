"""Soak: many sessions for a long time through the real server, subscribers coming and going.

``python -m bench.soak`` starts ``realtime-ser serve`` in its own process and streams, from
``--sessions`` concurrent clients, ``--seconds`` of conversation-like speech each (RAVDESS and
TESS clips joined with pauses; every session the same recording after its own lead-in of
silence, a whole number of frames, so that one single-session run is the reference for all),
faster than real time (``--speed``). Every session has a *steady* subscriber, connected from
the start to the end, and a *flaky* one that connects with ``since=`` the next sequence number
it needs, stays for a random 0.3-3 s, and leaves, half the time without a close frame.

It checks, and the exit status says (0: every check passed):

- every utterance that a single-session run of the same audio produces (the pipeline in this
  process, same settings) reaches the steady subscriber of every session exactly once, in
  order, with the same text and times (shifted by the lead-in), and nothing else does;
- the flaky subscriber's events, joined over all its connections, equal the steady one's;
- the server's resident memory (with its recognizer workers) grows by less than 5% from just
  after the warm-up (mean over the 20-30% tenth of the run) to the end of the streaming (mean
  over the last tenth);
- after the sessions end and the clients leave, the server holds no more threads and file
  descriptors than after a warm-up wave of as many short sessions (plus ``--slack``).

Writes ``soak.json`` and ``soak.md`` under ``--out``. ``make soak`` runs the long version;
``tests/test_soak.py`` a short one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.capacity import RATE, Server, ServerMeter, clip_pool
from bench.latency import default_data_dir, git_info, machine, write_result

REPO_ROOT = Path(__file__).resolve().parent.parent
FRAME = RATE * 30 // 1000


def base_stream(pool: list[dict[str, Any]], seconds: float, gap: float) -> np.ndarray:
    parts, n, k = [np.zeros(int(gap * RATE), dtype=np.int16)], int(gap * RATE), 0
    while n < seconds * RATE:
        x = pool[k % len(pool)]["samples"]
        parts += [x, np.zeros(int(gap * RATE), dtype=np.int16)]
        n += len(x) + int(gap * RATE)
        k += 1
    return np.concatenate(parts)


def reference(pcm: np.ndarray, backend: str, overrides: list[str]) -> list[dict[str, Any]]:
    """The utterances of a single-session run of ``pcm`` (in process, as fast as it goes)."""
    from bench.asr_compare import vosk_model
    from realtime_ser.asr import create_backend
    from realtime_ser.config import PipelineConfig, apply_overrides
    from realtime_ser.pipeline import Pipeline
    from realtime_ser.sources import ArraySource

    extra = [f"asr.vosk_model={vosk_model()}"] if backend == "vosk" else []
    cfg = apply_overrides(PipelineConfig(), [f"asr.backend={backend}", *extra, *overrides])
    events: list[dict[str, Any]] = []
    Pipeline(cfg, ArraySource(pcm, RATE, cfg.source), [events.append], backend=create_backend(cfg.asr)).run()
    return [e for e in events if e["type"] == "utterance"]


def _key(u: dict[str, Any], shift: float) -> tuple[str, float, float]:
    return (u.get("text", ""), round(float(u["start"]) - shift, 2), round(float(u["end"]) - shift, 2))


def _proc_counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of one process."""
    threads = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return threads, fds


async def _session(url: str, name: str, pcm: np.ndarray, speed: float, rng: random.Random,
                   stats: dict[str, Any]) -> dict[str, Any]:
    import websockets

    chunk = RATE // 10
    steady: list[dict[str, Any]] = []
    flaky: list[dict[str, Any]] = []
    async with websockets.connect(f"{url}/ingest", max_size=None) as ingest:
        await ingest.send(json.dumps({"type": "start", "session": name, "sample_rate": RATE, "events": False}))
        json.loads(await ingest.recv())

        async def follow_steady() -> None:
            async with websockets.connect(f"{url}/subscribe?session={name}&since=0", max_size=None) as sub:
                async for m in sub:
                    ev = json.loads(m)
                    steady.append(ev)
                    if ev["type"] == "session.ended":
                        return

        async def follow_flaky() -> None:
            while True:
                since = flaky[-1]["seq"] + 1 if flaky else 0
                ws = await websockets.connect(f"{url}/subscribe?session={name}&since={since}", max_size=None)
                stats["flaky_connections"] += 1
                stay = rng.uniform(0.3, 3.0)
                ended = False
                try:
                    async with asyncio.timeout(stay):
                        async for m in ws:
                            ev = json.loads(m)
                            flaky.append(ev)
                            if ev["type"] == "session.ended":
                                ended = True
                                break
                except TimeoutError:
                    pass
                except websockets.ConnectionClosed:
                    pass
                if rng.random() < 0.5 and not ended:
                    ws.transport.abort()  # gone without a close frame
                    stats["flaky_aborts"] += 1
                else:
                    await ws.close()
                if ended:
                    return
                await asyncio.sleep(rng.uniform(0.0, 1.0))

        tasks = [asyncio.create_task(follow_steady()), asyncio.create_task(follow_flaky())]
        t0 = time.monotonic()
        for k in range(0, len(pcm), chunk):
            due = t0 + k / RATE / speed
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await ingest.send(pcm[k:k + chunk].tobytes())
        await ingest.send(json.dumps({"type": "eof"}))
        try:
            async for _ in ingest:
                pass
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    return {"session": name, "steady": steady, "flaky": flaky, "seconds": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--sessions", type=int, default=9, help="concurrent sessions (default 9: the capacity "
                   "benchmark's figure for pocketsphinx)")
    p.add_argument("--seconds", type=float, default=1800.0, help="audio per session, s (default 1800)")
    p.add_argument("--speed", type=float, default=3.0, help="times real time the clients send at (default 3)")
    p.add_argument("--asr", default="pocketsphinx", help="recognizer (default pocketsphinx)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slack", type=int, default=4, help="threads / fds tolerated above the baseline (default 4)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    data = args.data or default_data_dir()
    if not all((data / c / "manifest.csv").is_file() for c in ("ravdess", "tess")):
        print(f"error: RAVDESS and TESS not found under {data} (give --data)", file=sys.stderr)
        return 2
    t_all = time.monotonic()
    rng = random.Random(args.seed)
    base = base_stream(clip_pool(data, 24), args.seconds, 1.0)
    leads = [FRAME * rng.randint(0, 60) for _ in range(args.sessions)]
    print(f"reference: one session of {len(base) / RATE:.0f} s in process ...", file=sys.stderr, flush=True)
    ref = reference(base, args.asr, args.set)
    overrides = [*args.set, "server.log_events=100000", "server.subscriber_queue=100000"]
    result: dict[str, Any] = {
        "benchmark": "soak", "command": " ".join(["python -m bench.soak", *map(shlex.quote, argv or sys.argv[1:])]),
        "machine": machine(), "git": git_info(), "sessions": args.sessions, "audio_seconds_per_session":
        round(len(base) / RATE, 1), "speed": args.speed, "asr": args.asr, "overrides": overrides,
        "reference_utterances": len(ref),
    }
    with tempfile.TemporaryDirectory(prefix="rtser-soak-") as tmp:
        server = Server(args.asr, overrides, Path(tmp) / "server.log")
        try:
            meter = ServerMeter(server.proc.pid)
            stats = {"flaky_connections": 0, "flaky_aborts": 0}
            # Warm-up wave, as many sessions as the run: models loaded, the emotion worker and the
            # recognizer worker pool started. Threads and fds are counted after it.
            warm = base[: 6 * RATE]

            async def warm_up() -> None:
                await asyncio.gather(*(_session(server.url, f"warm{i:02d}", warm, 8.0, random.Random(i),
                                                {"flaky_connections": 0, "flaky_aborts": 0})
                                       for i in range(args.sessions)))

            asyncio.run(warm_up())
            time.sleep(2.0)
            threads0, fds0 = _proc_counts(server.proc.pid)
            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append((time.monotonic(), meter.snapshot()[1]))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()

            async def run_all() -> list[dict[str, Any]]:
                return await asyncio.gather(*(
                    _session(server.url, f"soak{i:02d}", np.concatenate([np.zeros(lead, np.int16), base]),
                             args.speed, random.Random(args.seed * 100 + i), stats)
                    for i, lead in enumerate(leads)))

            sessions = asyncio.run(run_all())
            t1 = time.monotonic()
            stop.set()
            sampler.join()
            time.sleep(2.0)  # let the server close what the clients left
            threads1, fds1 = _proc_counts(server.proc.pid)
        finally:
            server.close()
    checks: dict[str, Any] = {}
    ref_keys = [_key(u, 0.0) for u in ref]
    mismatched = []
    for s, lead in zip(sessions, leads, strict=True):
        got = [_key(e, lead / RATE) for e in s["steady"] if e["type"] == "utterance"]
        seqs = [e["seq"] for e in s["steady"]]
        ok = got == ref_keys and seqs == list(range(len(seqs))) and s["steady"][-1]["type"] == "session.ended"
        if not ok:
            missing = [k for k in ref_keys if k not in got][:3]
            extra = [k for k in got if k not in ref_keys][:3]
            mismatched.append({"session": s["session"], "utterances": len(got), "missing": missing, "extra": extra})
    checks["every_reference_utterance_once_in_order"] = {"ok": not mismatched, "mismatched": mismatched}
    flaky_bad = [s["session"] for s in sessions if s["flaky"] != s["steady"]]
    checks["flaky_subscriber_equals_steady"] = {"ok": not flaky_bad, "sessions_differing": flaky_bad,
                                                **stats}
    # Resident memory moves by tens of MB from second to second (decoders, batches, buffers), so
    # single samples make a poor comparison: compare the mean of the tenth of the run right after
    # the warm-up (the first fifth) with the mean of the last tenth.
    span = t1 - t0
    early = [kb for t, kb in samples if t0 + 0.2 * span <= t < t0 + 0.3 * span]
    late = [kb for t, kb in samples if t >= t0 + 0.9 * span]
    growth = float((np.mean(late) - np.mean(early)) / np.mean(early)) if early and late else None
    checks["memory_growth_after_warm_up"] = {
        "ok": growth is not None and growth < 0.05, "growth": None if growth is None else round(growth, 4),
        "rss_mb_after_warm_up": round(float(np.mean(early)) / 1024, 1) if early else None,
        "rss_mb_end": round(float(np.mean(late)) / 1024, 1) if late else None,
        "rss_mb_peak": round(max(kb for _, kb in samples) / 1024, 1) if samples else None,
        "release_memory_s": next((o.split("=", 1)[1] for o in reversed(overrides)
                                  if o.startswith("server.release_memory_s=")), "30 (default)")}
    checks["no_thread_or_fd_leak"] = {"ok": threads1 <= threads0 + args.slack and fds1 <= fds0 + args.slack,
                                      "threads_before": threads0, "threads_after": threads1,
                                      "fds_before": fds0, "fds_after": fds1}
    result |= {"streaming_seconds": round(t1 - t0, 1), "checks": checks,
               "utterances_delivered": sum(sum(1 for e in s["steady"] if e["type"] == "utterance") for s in sessions),
               "rss_mb_samples": [round(kb / 1024, 1) for _, kb in samples[:: max(1, len(samples) // 200)]],
               "wall_seconds": round(time.monotonic() - t_all, 1)}
    result["passed"] = all(c["ok"] for c in checks.values())
    write_result(args.out, "soak", result, render(result))
    return 0 if result["passed"] else 1


def render(r: dict[str, Any]) -> str:
    c = r["checks"]
    m, g = r["machine"], r["git"]
    mem, leak, fl = c["memory_growth_after_warm_up"], c["no_thread_or_fd_leak"], c["flaky_subscriber_equals_steady"]
    yes = {True: "**passed**", False: "**failed**"}
    return "\n".join([
        "# Soak",
        "",
        f"`{r['command']}`: {r['sessions']} concurrent sessions through the real server, "
        f"{r['audio_seconds_per_session']:.0f} s of speech each ({r['asr']}, emotion on), sent at up to "
        f"{r['speed']:g}x real time; streaming took {r['streaming_seconds']:.0f} s. Each session had a steady "
        f"subscriber and a flaky one ({fl['flaky_connections']} connections in all, {fl['flaky_aborts']} of them "
        "dropped without a close frame, each back with `since=`).",
        "",
        "| check | result | figures |",
        "|---|---|---|",
        f"| every utterance of the single-session run reaches every session's subscriber exactly once, in order "
        f"| {yes[c['every_reference_utterance_once_in_order']['ok']]} | {r['reference_utterances']} utterances per "
        f"session, {r['utterances_delivered']} delivered in all |",
        f"| the flaky subscriber's events equal the steady one's | {yes[fl['ok']]} | |",
        f"| memory grows < 5% after the warm-up (mean of the 20-30% tenth of the run → mean of the last tenth) "
        f"| {yes[mem['ok']]} | {mem['rss_mb_after_warm_up']} → {mem['rss_mb_end']} MB "
        f"({100 * (mem['growth'] or 0):+.1f}%), peak {mem['rss_mb_peak']} MB |",
        f"| no thread or file-descriptor leak | {yes[leak['ok']]} | threads {leak['threads_before']} → "
        f"{leak['threads_after']}, fds {leak['fds_before']} → {leak['fds_after']} |",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cpu_affinity')} CPUs. Commit {g.get('commit')}"
        f"{' (dirty working tree)' if g.get('dirty') else ''}. Whole run {r['wall_seconds']:.0f} s.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
