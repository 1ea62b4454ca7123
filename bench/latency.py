"""End-of-speech-to-event latency of the live pipeline, on RAVDESS replayed in real time.

Joins a deterministic spread of RAVDESS clips into one conversation-like
stream (clips separated by ``--gap`` seconds of silence), feeds it through one
:class:`~realtime_ser.pipeline.Pipeline` paced in real time
(``source.realtime=true``) and reports, from the ``utterance`` events'
``latency_ms``, how long after the end of speech each utterance event is
written, stage by stage, against the physical floor (the VAD hangover: no
system can emit before it has decided that speech ended). A second run with
``asr.backend=none`` on the same stream gives the VAD-only floor.

Usage, from the repository root::

    python -m bench.latency                 # 40 clips, pocketsphinx, plus the VAD-only run
    python bench/latency.py --clips 10 --no-floor

Writes ``latency.json`` (machine, commit, command, config, clips, every
figure) and ``latency.md`` (a summary, also printed) under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from realtime_ser.asr import create_backend
from realtime_ser.config import PipelineConfig, apply_overrides, load, to_dict
from realtime_ser.errors import RealtimeSerError
from realtime_ser.frames import SAMPLE_RATE, AudioFrame
from realtime_ser.pipeline import Pipeline
from realtime_ser.sources import ArraySource

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("total", "vad", "queue", "asr", "emit", "total_minus_vad")
SCHEDULE = ("total_from_schedule", "end_capture_lateness")
ENV_DATA = "REALTIME_SER_SHARED_DATA"


@dataclass
class Clip:
    index: int
    path: str
    speaker: str
    emotion: str
    transcript: str
    duration: float
    offset: float = 0.0
    """Stream seconds where the clip starts."""

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "speaker": self.speaker, "emotion": self.emotion,
                "transcript": self.transcript, "duration": round(self.duration, 3),
                "offset": round(self.offset, 3)}


# -- data ------------------------------------------------------------------------------


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA)
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


def find_ravdess(data: Path) -> Path | None:
    """``DATA/ravdess`` (or DATA itself when it is the RAVDESS folder), if it has a manifest."""
    for cand in (data / "ravdess", data):
        if (cand / "manifest.csv").is_file():
            return cand
    return None


def select_clips(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """A deterministic spread over actors and emotions.

    Rows are sorted by path. Clip ``i`` comes from actor ``i mod A`` (actors
    sorted), round ``r = i div A``, emotion ``(i + r) mod E`` (emotions sorted),
    and is row ``(5 r) mod m`` of the ``m`` unused rows of that (actor, emotion)
    pair. With 20 actors and 8 emotions, 40 clips give every actor twice, with
    two different emotions, and every emotion 4-6 times.
    """
    rows = sorted(rows, key=lambda r: r["path"])
    if n >= len(rows):
        return rows
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["speaker"], r["emotion"]), []).append(r)
    speakers = sorted({r["speaker"] for r in rows})
    emotions = sorted({r["emotion"] for r in rows})
    chosen: list[dict[str, str]] = []
    used: set[str] = set()
    i = 0
    limit = 4 * len(rows)
    while len(chosen) < n and i < limit:
        rnd = i // len(speakers)
        key = (speakers[i % len(speakers)], emotions[(i + rnd) % len(emotions)])
        free = [r for r in groups.get(key, []) if r["path"] not in used]
        if free:
            pick = free[(5 * rnd) % len(free)]
            chosen.append(pick)
            used.add(pick["path"])
        i += 1
    for r in rows:  # only reached for odd manifests: fill up in path order
        if len(chosen) >= n:
            break
        if r["path"] not in used:
            chosen.append(r)
            used.add(r["path"])
    return chosen


def build_stream(root: Path, rows: list[dict[str, str]], gap: float,
                 tail: float) -> tuple[np.ndarray, int, list[Clip]]:
    """Silence, clip, silence, clip, ..., trailing silence: float32 mono, and the clips' offsets."""
    parts: list[np.ndarray] = []
    clips: list[Clip] = []
    rate: int | None = None
    pos = 0
    for i, r in enumerate(rows):
        data, sr = sf.read(str(root / r["path"]), dtype="float32", always_2d=True)
        if rate is None:
            rate = int(sr)
            lead = np.zeros(int(round(gap * rate)), dtype=np.float32)
            parts.append(lead)
            pos += len(lead)
        elif sr != rate:
            raise SystemExit(f"error: {r['path']} is {sr} Hz but the first clip is {rate} Hz; "
                             "the benchmark needs clips of one sample rate")
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        clips.append(Clip(i, r["path"], r.get("speaker", ""), r.get("emotion", ""), r.get("transcript", ""),
                          len(mono) / rate, pos / rate))
        parts.append(mono.astype(np.float32, copy=False))
        pos += len(mono)
        silence = np.zeros(int(round((gap if i < len(rows) - 1 else tail) * rate)), dtype=np.float32)
        parts.append(silence)
        pos += len(silence)
    assert rate is not None
    return np.concatenate(parts), rate, clips


# -- measurement -----------------------------------------------------------------------


class ScheduledArraySource(ArraySource):
    """An :class:`ArraySource` that also records when each frame was stamped.

    The paced source hands frame ``k`` out at ``t0 + end_k`` (``end_k`` its end in
    stream seconds) and stamps it with ``time.monotonic_ns()`` when it gets
    there. ``t0`` is estimated as the minimum of ``capture_ns - end_k`` over all
    frames (no frame is handed out early), so ``lateness`` is how much later than
    its schedule each frame was stamped (source thread not scheduled in time).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rel: list[int] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._rel = []
        for frame in super().__iter__():
            self._rel.append(frame.capture_ns - _end_ns(frame))
            yield frame

    @property
    def t0_ns(self) -> int | None:
        return min(self._rel) if self._rel else None

    def lateness_ms(self) -> list[float]:
        t0 = self.t0_ns
        return [] if t0 is None else [(r - t0) / 1e6 for r in self._rel]


def _end_ns(frame: AudioFrame) -> int:
    return frame.end_offset * 1_000_000_000 // SAMPLE_RATE



def summarize(values: list[float]) -> dict[str, Any]:
    """n, p50/p95/p99 (linear interpolation), max, min, mean, in ms rounded to 0.1."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "min": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(a.max()), 1), "min": round(float(a.min()), 1),
            "mean": round(float(a.mean()), 1)}


def stage_values(utts: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for u in utts:
        lat = u["latency_ms"]
        for s in STAGES[:-1]:
            out[s].append(float(lat[s]))
        out["total_minus_vad"].append(float(lat["total"]) - float(lat["vad"]))
    return out


def match_clip(u: dict[str, Any], clips: list[Clip]) -> int | None:
    """The clip an utterance overlaps most (stream seconds), or None."""
    best, best_overlap = None, 0.0
    for c in clips:
        overlap = min(u["end"], c.offset + c.duration) - max(u["start"], c.offset)
        if overlap > best_overlap:
            best, best_overlap = c.index, overlap
    return best


def _children_cpu() -> float:
    """CPU seconds used so far by this process's live children (recognizer workers)."""
    import multiprocessing

    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_once(label: str, cfg: PipelineConfig, stream: np.ndarray, rate: int,
             clips: list[Clip]) -> dict[str, Any]:
    audio_s = len(stream) / rate
    print(f"[{label}] asr={cfg.asr.backend}: replaying {audio_s:.1f} s of audio in real time ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    backend = create_backend(cfg.asr)
    load_s = time.perf_counter() - t0
    events: list[dict[str, Any]] = []
    received: dict[int, int] = {}  # seq -> monotonic ns when the sink got the event

    def sink(event: dict[str, Any]) -> None:
        received[event["seq"]] = time.monotonic_ns()
        events.append(event)

    source = ScheduledArraySource(stream, rate, cfg.source, name=f"ravdess-{len(clips)}-clips")
    pipeline = Pipeline(cfg, source, [sink], backend=backend)
    load_before = os.getloadavg()
    wall0, cpu0, workers0 = time.perf_counter(), time.process_time(), _children_cpu()
    stats = pipeline.run()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    workers_cpu = max(0.0, _children_cpu() - workers0)
    load_after = os.getloadavg()

    utts = [e for e in events if e["type"] == "utterance"]
    ended = next((e for e in reversed(events) if e["type"] == "session.ended"), None)
    counts = dict(ended["counts"]) if ended else {}
    reasons: dict[str, int] = {}
    for u in utts:
        reasons[u["end_reason"]] = reasons.get(u["end_reason"], 0) + 1
    errors: dict[str, int] = {}
    for e in events:
        if e["type"] == "error":
            errors[e["code"]] = errors.get(e["code"], 0) + 1
    # End-of-speech latency proper: utterances that ended on silence (not cut at
    # max length, not closed by the end of input).
    eos = [u for u in utts if u["end_reason"] == "silence"]
    per_clip = [0] * len(clips)
    unmatched = 0
    utt_records = []
    sched_t0 = source.t0_ns
    for u in utts:
        # Independent of the pipeline's own stamps: when the end of speech was due
        # on the audio schedule, to when the sink got the event.
        if sched_t0 is not None:
            sched = (received[u["seq"]] - (sched_t0 + round(u["end"] * 1e9))) / 1e6
            u["_schedule"] = {"total_from_schedule": round(sched, 2),
                              "end_capture_lateness": round(sched - float(u["latency_ms"]["total"]), 2)}
        ci = match_clip(u, clips)
        if ci is None:
            unmatched += 1
        else:
            per_clip[ci] += 1
        utt_records.append({"id": u["utterance_id"], "clip": ci, "start": u["start"], "end": u["end"],
                            "end_reason": u["end_reason"], "text": u["text"], "latency_ms": u["latency_ms"],
                            **u.get("_schedule", {})})
    audio_seconds = stats.audio_seconds or audio_s
    stage_s = dict(stats.stage_seconds)
    return {
        "label": label,
        "asr_backend": cfg.asr.backend,
        "asr_model": backend.model if backend is not None else None,
        "model_load_seconds": round(load_s, 3),
        "audio_seconds": round(audio_seconds, 3),
        "wall_seconds": round(wall, 3),
        "process_cpu_seconds": round(cpu, 3),
        "worker_cpu_seconds": round(workers_cpu, 3),
        "stage_busy_seconds": {k: round(v, 4) for k, v in stage_s.items()},
        "rtf": {
            **{k: round(v / audio_seconds, 5) for k, v in stage_s.items()},
            "process_cpu": round(cpu / audio_seconds, 5),
            "total_cpu": round((cpu + workers_cpu) / audio_seconds, 5),
            "wall": round(wall / audio_seconds, 5),
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "clips_fed": len(clips),
        "utterances": len(utts),
        "utterances_by_end_reason": reasons,
        "clips_with_utterance": sum(1 for c in per_clip if c > 0),
        "clips_missed": [clips[i].path for i, c in enumerate(per_clip) if c == 0],
        "clips_split": {clips[i].path: c for i, c in enumerate(per_clip) if c > 1},
        "utterances_outside_clips": unmatched,
        "session_counts": counts,
        "dropped_frames": int(counts.get("dropped_frames", 0)),
        "errors_by_code": errors,
        "latency_ms": {s: summarize(v) for s, v in stage_values(eos).items()},
        "schedule_ms": {k: summarize([u["_schedule"][k] for u in eos if "_schedule" in u]) for k in SCHEDULE},
        "frame_capture_lateness_ms": summarize(source.lateness_ms()),
        "latency_ms_all_end_reasons": {s: summarize(v) for s, v in stage_values(utts).items()},
        "utterance_list": utt_records,
    }


# -- provenance ------------------------------------------------------------------------


def write_result(out: Path, name: str, result: dict[str, Any], md: str) -> None:
    """Write ``NAME.json`` and ``NAME.md`` under ``out`` and print the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(md, encoding="utf-8")
    print(md)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def provenance(m: dict[str, Any], g: dict[str, Any]) -> str:
    """The line a result page ends with: the machine (:func:`machine`) and the commit (:func:`git_info`)."""
    return (f"Machine: {m.get('cpu_model')}, {m.get('cpu_affinity')} CPUs, Python {m.get('python')}. "
            f"Commit {g.get('commit')}{' (dirty working tree)' if g.get('dirty') else ''}.")


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout if res.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".", ":!bench/results")  # results written by this run don't count
    return {"commit": head.strip() if head else None,
            "dirty": bool(status.strip()) if status is not None else None}


# -- report ----------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def markdown(result: dict[str, Any]) -> str:
    main = result["runs"]["main"]
    floor = result["floor"]
    lines = [
        "# End-of-speech-to-event latency (real-time replay)",
        "",
        f"{result['clips_fed']} RAVDESS clips joined with {result['gap_seconds']:g} s of silence "
        f"({main['audio_seconds']:.1f} s of audio), replayed in real time through one pipeline, "
        f"ASR `{main['asr_backend']}`. Latencies in ms over the {main['latency_ms']['total']['n']} "
        "utterances that ended on silence; *total* is from the capture of the end of the last voiced "
        "frame to the event being written; *total − vad* is the delay beyond the end-of-speech decision.",
        "",
        "| stage | p50 | p95 | p99 | max | mean |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in STAGES:
        st = main["latency_ms"][s]
        name = "total − vad" if s == "total_minus_vad" else s
        lines.append(f"| {name} | {_fmt(st['p50'])} | {_fmt(st['p95'])} | {_fmt(st['p99'])} | "
                     f"{_fmt(st['max'])} | {_fmt(st['mean'])} |")
    names = {"total_from_schedule": "total, from the audio schedule ¹",
             "end_capture_lateness": "late stamping of the end frame ¹"}
    for k, name in names.items():
        st = main["schedule_ms"][k]
        lines.append(f"| {name} | {_fmt(st['p50'])} | {_fmt(st['p95'])} | {_fmt(st['p99'])} | "
                     f"{_fmt(st['max'])} | {_fmt(st['mean'])} |")
    fl = main["frame_capture_lateness_ms"]
    lines += [
        "",
        "¹ Cross-check that does not trust the pipeline's capture stamps: from the time the end of the last "
        "voiced frame was due on the real-time replay schedule to the time the sink received the event. "
        "The difference is how late the source thread stamped that frame (all frames: p50 "
        f"{_fmt(fl['p50'])}, p95 {_fmt(fl['p95'])}, max {_fmt(fl['max'])} ms late).",
    ]
    lines += [
        "",
        f"**Floor**: hangover {floor['hangover_ms']} ms configured ({floor['effective_hangover_ms']} ms as "
        f"whole {floor['frame_ms']} ms frames); no system can emit before that. Total p50 is "
        f"{_fmt(floor['total_p50_above_floor_ms'])} ms and p95 {_fmt(floor['total_p95_above_floor_ms'])} ms "
        "above it.",
    ]
    vad_only = result["runs"].get("vad_only")
    if vad_only is not None:
        t = vad_only["latency_ms"]["total"]
        ts = vad_only["schedule_ms"]["total_from_schedule"]
        lines.append(f"VAD-only run (`--asr none`, same stream): total p50 {_fmt(t['p50'])}, "
                     f"p95 {_fmt(t['p95'])}, max {_fmt(t['max'])} ms (from the schedule: "
                     f"p50 {_fmt(ts['p50'])}, p95 {_fmt(ts['p95'])}, max {_fmt(ts['max'])} ms); "
                     f"{vad_only['utterances']} utterances.")
    lines += [
        "",
        "| run | RTF vad | RTF asr | main process CPU / audio | all CPU (with recognizer workers) / audio "
        "| wall / audio | utterances / clips | dropped frames |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"].values():
        r = run["rtf"]
        lines.append(f"| {run['label']} (`{run['asr_backend']}`) | {r['vad']:.4f} | {r['asr']:.4f} | "
                     f"{r['process_cpu']:.4f} | {r.get('total_cpu', r['process_cpu']):.4f} | {r['wall']:.3f} | "
                     f"{run['utterances']} / {run['clips_fed']} | "
                     f"{run['dropped_frames']} |")
    lines += [
        "",
        "RTF = seconds / audio seconds. Stage busy seconds are wall time spent inside the stage's calls "
        "(they include waiting for a CPU and for the GIL); main process CPU is `time.process_time()` "
        "over the run; all CPU adds the recognizer worker processes (from /proc).",
        "",
    ]
    extra = []
    if main["clips_missed"]:
        extra.append(f"{len(main['clips_missed'])} clips gave no utterance")
    if main["clips_split"]:
        extra.append(f"{len(main['clips_split'])} clips were split into several utterances")
    other = {k: v for k, v in main["utterances_by_end_reason"].items() if k != "silence"}
    if other:
        extra.append("utterances not ended by silence: " + ", ".join(f"{k} {v}" for k, v in other.items()))
    if extra:
        lines += ["Main run: " + "; ".join(extra) + ".", ""]
    m, g = result["machine"], result["git"]
    lines += [
        f"Machine: {m['cpu_model'] or m['machine']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"{m['platform']}. Load average before/after the main run: "
        f"{main['loadavg_before'][0]} / {main['loadavg_after'][0]}.",
        f"Commit {g['commit'] or 'unknown'}{' (dirty working tree)' if g['dirty'] else ''}.",
        "",
        "Reproduce (from the repository root):",
        "",
        "```",
        result["reproduce"],
        "```",
        "",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="Replay RAVDESS clips in real time through the pipeline; report end-of-speech latency.",
    )
    p.add_argument("--data", type=Path, default=None,
                   help=f"shared data folder holding ravdess/manifest.csv (default: ${ENV_DATA} or "
                        "../shared/data relative to the repository root)")
    p.add_argument("--clips", type=int, default=40, help="number of clips (default 40)")
    p.add_argument("--gap", type=float, default=1.0, help="seconds of silence between clips (default 1.0)")
    p.add_argument("--asr", choices=("pocketsphinx", "vosk", "none"), default=None,
                   help="ASR backend (default: the configured one, pocketsphinx)")
    p.add_argument("--vosk-model", default=None, help="Vosk model directory (with --asr vosk)")
    p.add_argument("--config", default=None, help="TOML config file (default: built-in defaults)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help="folder for latency.json and latency.md (default bench/results)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, repeatable (e.g. vad.hangover_ms=400)")
    p.add_argument("--no-floor", action="store_true", help="skip the second, VAD-only (--asr none) run")
    args = p.parse_args(argv)
    if args.clips < 1:
        p.error("--clips must be at least 1")
    if args.gap < 0:
        p.error("--gap must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = (args.data if args.data is not None else default_data_dir()).expanduser()
    root = find_ravdess(data)
    if root is None:
        print(f"error: RAVDESS data not found: no {data / 'ravdess' / 'manifest.csv'}. Pass --data DIR "
              f"(the folder holding ravdess/) or set {ENV_DATA}.", file=sys.stderr)
        return 2

    overrides: list[str] = []
    if args.asr:
        overrides.append(f"asr.backend={args.asr}")
    if args.vosk_model:
        overrides.append(f"asr.vosk_model={args.vosk_model}")
    try:
        cfg = apply_overrides(load(args.config), overrides + list(args.set) + ["source.realtime=true"])
        floor_cfg = apply_overrides(cfg, ["asr.backend=none"])
    except RealtimeSerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.asr.backend == "vosk" and not cfg.asr.vosk_model:
        print("error: --asr vosk needs --vosk-model DIR", file=sys.stderr)
        return 2

    with open(root / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"error: {root / 'manifest.csv'} lists no clips", file=sys.stderr)
        return 2
    chosen = select_clips(rows, args.clips)
    # Trailing silence: long enough for the last utterance to end on silence too.
    tail = max(args.gap, cfg.vad.hangover_ms / 1000.0 + 1.0)
    stream, rate, clips = build_stream(root, chosen, args.gap, tail)

    runs: dict[str, dict[str, Any]] = {}
    try:
        runs["main"] = run_once("main", cfg, stream, rate, clips)
        if not args.no_floor and cfg.asr.backend != "none":
            runs["vad_only"] = run_once("vad_only", floor_cfg, stream, rate, clips)
    except RealtimeSerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: ASR backend {cfg.asr.backend!r} is not available: {exc}", file=sys.stderr)
        return 2

    main_run = runs["main"]
    frame_ms = cfg.source.frame_ms
    effective = math.ceil(cfg.vad.hangover_ms / frame_ms) * frame_ms
    total = main_run["latency_ms"]["total"]

    def above(v: float | None) -> float | None:
        return None if v is None else round(v - effective, 1)

    floor = {
        "hangover_ms": cfg.vad.hangover_ms,
        "frame_ms": frame_ms,
        "effective_hangover_ms": effective,
        "note": "the segmenter ends an utterance after ceil(hangover_ms / frame_ms) unvoiced frames; "
                "no event can be written before that",
        "total_p50_above_floor_ms": above(total["p50"]),
        "total_p95_above_floor_ms": above(total["p95"]),
        "total_max_above_floor_ms": above(total["max"]),
    }
    invoked = "python -m bench.latency" if __spec__ is not None else f"python {Path(sys.argv[0]).as_posix()}"
    cli_args = list(sys.argv[1:]) if argv is None else list(argv)
    result: dict[str, Any] = {
        "benchmark": "end-of-speech-to-event latency, real-time replay",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "git": git_info(),
        "command": " ".join([invoked, *map(shlex.quote, cli_args)]),
        "argv": list(sys.argv),
        "python_executable": sys.executable,
        "reproduce": " ".join(["python -m bench.latency", *map(shlex.quote, cli_args)]),
        "data": str(root),
        "gap_seconds": args.gap,
        "tail_seconds": tail,
        "clips_fed": len(clips),
        "config": to_dict(cfg),
        "floor": floor,
        "runs": runs,
        "clips": [c.as_dict() for c in clips],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    md = markdown(result)
    (args.out / "latency.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
