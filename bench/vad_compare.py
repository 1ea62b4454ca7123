"""Endpointing compared: Silero VAD and webrtcvad at several hangovers, clean and in noise.

The end-of-speech decision waits ``vad.hangover_ms`` of silence, so the hangover is the floor
of every recognizer's latency. A shorter one answers sooner but may cut an utterance at a
pause inside it; a detector that tells speech from noise better allows a shorter one. This
benchmark measures what each detector and hangover does on the same streams:

- **streams**: clips of RAVDESS, TESS and CREMA-D (a deterministic spread over speakers and
  emotions) joined with pauses of 0.8-2.0 s, in five conditions: *clean* (a -60 dBFS noise
  floor in the pauses), white noise at 20 and 10 dB SNR, pink noise at 10 dB and babble (eight
  other CREMA-D voices mixed) at 15 dB, SNR against each clip's speech level;
- **reference**: the speech of each clip on its clean recording, from the first to the last
  10 ms frame within 30 dB of its loudest;
- **measures**, with the real :class:`~realtime_ser.vad.Segmenter` (30 ms frames, the default
  padding and minimum length): *missed clips* (no utterance overlaps the clip's speech),
  *speech not given to the recognizer* (reference speech outside every utterance's audio,
  padding included), *false starts* (utterances that overlap no clip), *split* (clips whose
  speech is spread over two or more utterances), *end-of-speech delay* (from the end of a
  clip's speech to the moment the segmenter decides that its utterance ended), and the
  detector's CPU time per audio second;
- **what it costs the words**: Whisper base's word error rate on exactly the audio each
  setting hands the recognizer (clean and white noise at 10 dB, hangovers 500, 400 and 300 ms);
- **deaf spots**: every RAVDESS clip alone through each detector's segmenter (default
  settings): the clips in which it finds no utterance at all, by emotion and intensity.

Each detector runs once per stream; its per-frame decisions are replayed into segmenters of
every hangover (the decisions do not depend on the hangover).

Usage, from the repository root::

    python -m bench.vad_compare                 # 40 clips per corpus, ~5 minutes on 2 cores
    python -m bench.vad_compare --clips 6 --wer 6   # a quick check

Writes ``vad_compare.json`` and ``vad_compare.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench.latency import default_data_dir, git_info, machine, provenance, select_clips, summarize, write_result
from realtime_ser.config import VadConfig
from realtime_ser.frames import AudioFrame, SpeechAudio, SpeechEnd, SpeechStart
from realtime_ser.vad import Segmenter, SileroDetector, webrtc_detector

REPO_ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
FRAME_MS = 30
FRAME = RATE * FRAME_MS // 1000
CORPORA = ("ravdess", "tess", "crema_d")
CONDITIONS = ("clean", "white_20db", "white_10db", "pink_10db", "babble_15db")
SETTINGS = (("webrtc", 500), ("webrtc", 400), ("webrtc", 300), ("silero", 500), ("silero", 450),
            ("silero", 400), ("silero", 300), ("silero", 200))


def _rows(data: Path, corpus: str) -> list[dict[str, str]]:
    with (data / corpus / "manifest.csv").open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("silent") != "1"]
    for r in rows:
        r["file"] = str(data / corpus / r["path"])
        r["corpus"] = corpus
    return rows


def _read(path: str) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != RATE:
        raise SystemExit(f"error: {path} is {rate} Hz, expected {RATE}")
    return x.mean(axis=1)


def speech_span(x: np.ndarray, floor_db: float = 30.0) -> tuple[float, float, float]:
    """(start s, end s, RMS of the speech) of a clean clip: frames within ``floor_db`` of the loudest."""
    n = RATE // 100
    frames = x[: len(x) // n * n].astype(np.float64).reshape(-1, n)
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(db > db.max() - floor_db)
    a, b = int(loud[0]), int(loud[-1]) + 1
    rms = float(np.sqrt((frames[a:b] ** 2).mean()))
    return a * n / RATE, b * n / RATE, rms


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    pink = np.fft.irfft(spectrum / np.sqrt(f), n)
    return pink / pink.std()


def build(clips: list[dict[str, Any]], babble_pool: list[np.ndarray], condition: str,
          seed: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One stream of every clip with pauses, noise added for ``condition``; int16 and the
    reference speech spans in stream seconds."""
    rng = np.random.default_rng(seed)
    parts, spans, pos = [], [], 0
    levels = []
    for c in clips:
        gap = int(rng.uniform(0.8, 2.0) * RATE)
        parts += [np.zeros(gap, np.float32), c["x"]]
        pos += gap
        spans.append((pos / RATE + c["span"][0], pos / RATE + c["span"][1]))
        levels.append((pos, pos + len(c["x"]), c["span"][2]))
        pos += len(c["x"])
    parts.append(np.zeros(RATE, np.float32))
    x = np.concatenate(parts).astype(np.float64)
    n = len(x)
    if condition == "clean":
        x += 10 ** (-60 / 20) * rng.standard_normal(n)
    else:
        kind, snr = condition.split("_")
        snr_db = float(snr.removesuffix("db"))
        if kind == "white":
            noise = rng.standard_normal(n)
        elif kind == "pink":
            noise = _pink(n, rng)
        else:  # babble: eight other voices, looped, each from its own offset
            noise = np.zeros(n)
            for k, v in enumerate(babble_pool[:8]):
                loop = np.tile(v, n // len(v) + 2)
                off = (k * 7919) % len(v)
                noise += loop[off:off + n]
            noise /= noise.std()
        speech_rms = float(np.median([lvl for _, _, lvl in levels]))
        x += noise * speech_rms / 10 ** (snr_db / 20)
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    return pcm, spans


def decisions(detector: Any, pcm: np.ndarray) -> tuple[list[bool], float]:
    """Per-frame voiced decisions of ``detector`` over ``pcm`` and the CPU seconds they took."""
    out = []
    t0 = time.process_time()
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        out.append(bool(detector.is_speech(pcm[i:i + FRAME].tobytes(), RATE)))
    return out, time.process_time() - t0


class _Replay:
    def __init__(self, voiced: list[bool]) -> None:
        self._voiced = iter(voiced)

    def is_speech(self, buf: bytes, sample_rate: int) -> bool:
        return next(self._voiced)


def segment(pcm: np.ndarray, voiced: list[bool], config: VadConfig) -> list[dict[str, Any]]:
    """Utterances the segmenter cuts given per-frame decisions: start, end, audio start/end, decided at (s)."""
    seg = Segmenter(config, FRAME_MS, detector_factory=lambda _c: _Replay(voiced))
    utts: list[dict[str, Any]] = []
    audio: dict[int, list[float]] = {}
    for k in range(len(voiced)):
        frame = AudioFrame(k, 0, k * FRAME, pcm[k * FRAME:(k + 1) * FRAME], (k + 1) * FRAME)
        for ev in seg.feed(frame, now_ns=(k + 1) * FRAME):
            if isinstance(ev, SpeechStart):
                audio[ev.utterance_index] = [ev.audio_start, ev.audio_start]
            elif isinstance(ev, SpeechAudio) and ev.utterance_index in audio:
                audio[ev.utterance_index][1] = ev.frame.end
            elif isinstance(ev, SpeechEnd):
                a = audio.pop(ev.utterance_index, [ev.start, ev.end])
                utts.append({"start": ev.start, "end": ev.end, "audio_start": a[0], "audio_end": a[1],
                             "decided": ev.decided_ns / RATE, "reason": ev.reason})
    return utts


def wer_of_cuts(pcm: np.ndarray, spans: list[tuple[float, float]], refs: list[str], utts: list[dict[str, Any]],
                engine: Any) -> dict[str, Any]:
    """Word error rate of Whisper on exactly the audio the segmenter gave for each clip (its
    utterances that overlap the clip's speech): what cutting speech short costs the words."""
    import concurrent.futures

    from bench.asr_compare import word_errors
    from realtime_ser.asr import whisper_backend as wb

    errors = words = 0
    for (a, b), ref in zip(spans, refs, strict=True):
        texts = []
        for u in (u for u in utts if u["start"] < b and u["end"] > a):
            x = pcm[int(u["audio_start"] * RATE):int(u["audio_end"] * RATE)]
            (t,) = engine.run([wb._Request(x, True, concurrent.futures.Future(), 0)])
            texts.append(t.text)
        e, w = word_errors(ref, " ".join(texts))
        errors, words = errors + e, words + w
    return {"clips": len(spans), "words": words, "errors": errors, "wer": round(errors / max(words, 1), 4)}


def score(spans: list[tuple[float, float]], utts: list[dict[str, Any]]) -> dict[str, Any]:
    missed = split = false_starts = 0
    lost = total = 0.0
    delays: list[float] = []
    for a, b in spans:
        over = [u for u in utts if u["start"] < b and u["end"] > a]
        total += b - a
        covered = sum(max(0.0, min(b, u["audio_end"]) - max(a, u["audio_start"])) for u in utts)
        lost += max(0.0, (b - a) - covered)
        if not over:
            missed += 1
            continue
        if len(over) > 1:
            split += 1
        last = max(over, key=lambda u: u["end"])
        delays.append((last["decided"] - b) * 1000)
    for u in utts:
        if not any(u["start"] < b + 0.2 and u["end"] > a - 0.2 for a, b in spans):
            false_starts += 1
    n = len(spans)
    return {"clips": n, "utterances": len(utts), "missed": missed, "missed_rate": round(missed / n, 4),
            "speech_lost_rate": round(lost / max(total, 1e-9), 4), "false_starts": false_starts,
            "split": split, "split_rate": round(split / n, 4), "eos_delay_ms": summarize(delays),
            "delays_ms": [round(d, 1) for d in delays]}


def markdown(result: dict[str, Any]) -> str:
    per_corpus = ", ".join(f"{v} {k}" for k, v in result["clips"].items())
    lines = [
        "# Endpointing: Silero VAD against webrtcvad",
        "",
        f"`{result['command']}`: {result['clips_total']} clips ({per_corpus}) "
        "joined with 0.8-2.0 s pauses, in five noise conditions; the real segmenter (30 ms frames, "
        f"start padding {result['vad']['start_padding_ms']} ms, end padding {result['vad']['end_padding_ms']} ms, "
        f"minimum {result['vad']['min_utterance_ms']} ms) behind each detector. Reference speech: each clip's clean "
        "recording, first to last 10 ms frame within 30 dB of its loudest. Rates are over clips; false starts "
        "are utterances overlapping no clip (counts); *end-of-speech delay* runs from the end of a clip's speech "
        "to the segmenter's decision that its utterance ended.",
        "",
        "| detector | hangover (ms) | condition | missed clips | speech not given to the recognizer | "
        "false starts | split clips | end-of-speech delay p50 / p95 (ms) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        s = row["score"]
        d = s["eos_delay_ms"]
        lines.append(f"| {row['detector']} | {row['hangover_ms']} | {row['condition']} | {s['missed_rate']:.1%} | "
                     f"{s['speech_lost_rate']:.1%} | {s['false_starts']} | {s['split_rate']:.1%} | "
                     f"{d['p50']:.0f} / {d['p95']:.0f} |" if d["p50"] is not None else
                     f"| {row['detector']} | {row['hangover_ms']} | {row['condition']} | {s['missed_rate']:.1%} | "
                     f"{s['speech_lost_rate']:.1%} | {s['false_starts']} | {s['split_rate']:.1%} | – |")
    lines += ["", "All conditions together:", "",
              "| detector | hangover (ms) | missed clips | speech not given | false starts | split clips | "
              "end-of-speech delay p50 / p95 (ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, s in result["overall"].items():
        det, hang = key.split("@")
        d = s["eos_delay_ms"]
        lines.append(f"| {det} | {hang} | {s['missed_rate']:.1%} | {s['speech_lost_rate']:.1%} | "
                     f"{s['false_starts']} | {s['split_rate']:.1%} | {d['p50']:.0f} / {d['p95']:.0f} |")
    if result["wer"]:
        lines += ["", "What the cuts cost the words: Whisper base (10 s window) on exactly the audio each setting gave "
                  f"the recognizer, first {result['wer'][0]['clips']} clips of the stream:", "",
                  "| detector | hangover (ms) | condition | WER |", "|---|---:|---|---:|"]
        for w in result["wer"]:
            lines.append(f"| {w['detector']} | {w['hangover_ms']} | {w['condition']} | {w['wer']:.3f} |")
    if result.get("deaf"):
        lines += ["", "Deaf spots: every RAVDESS clip alone through each detector's segmenter (default settings); "
                  "clips in which it found no utterance at all:", ""]
        for det, d in result["deaf"].items():
            lines.append(f"- {det}: {d['missed']} of {d['clips']}" + (": " + ", ".join(d["paths"][:20]) if d["paths"]
                                                                        else ""))
    cpu = result["cpu_ms_per_audio_s"]
    lines += ["", "Detector CPU per audio second (one thread): " + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items())
              + ".", ""]
    m, g = result["machine"], result["git"]
    lines += [f"{provenance(m, g)} Whole benchmark: {result['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vad_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--clips", type=int, default=40, help="clips per corpus (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-ravdess", type=int, default=1, help="1 = look for deaf spots in every RAVDESS clip")
    p.add_argument("--wer", type=int, default=60,
                   help="clips whose cut audio Whisper base transcribes, clean and white 10 dB, per setting "
                        "(default 60; 0 = none)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    data = (args.data or default_data_dir()).expanduser()
    if not all((data / c / "manifest.csv").is_file() for c in CORPORA):
        print(f"error: needs {', '.join(CORPORA)} with manifest.csv under {data} (pass --data DIR)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    clips: list[dict[str, Any]] = []
    counts = {}
    for corpus in CORPORA:
        rows = select_clips(_rows(data, corpus), args.clips)
        counts[corpus] = len(rows)
        for r in rows:
            x = _read(r["file"])
            clips.append({"path": f"{corpus}/{r['path']}", "x": x, "span": speech_span(x), "ref": r["transcript"]})
    rng = np.random.default_rng(args.seed)
    rng.shuffle(clips)  # type: ignore[arg-type]
    chosen = {c["path"] for c in clips}
    others = [r for r in _rows(data, "crema_d") if f"crema_d/{r['path']}" not in chosen]
    babble = [_read(r["file"]) for r in others[:: max(1, len(others) // 8)][:8]]
    base = VadConfig()
    rows_out: list[dict[str, Any]] = []
    cpu: dict[str, list[float]] = {"webrtc": [0.0, 0.0], "silero": [0.0, 0.0]}
    for ci, condition in enumerate(CONDITIONS):
        pcm, spans = build(clips, babble, condition, args.seed + ci)
        print(f"[{condition}] {len(pcm) / RATE:.0f} s of audio", file=sys.stderr, flush=True)
        for det in ("webrtc", "silero"):
            detector = webrtc_detector(base.aggressiveness) if det == "webrtc" else SileroDetector(base.threshold)
            voiced, seconds = decisions(detector, pcm)
            cpu[det][0] += seconds
            cpu[det][1] += len(pcm) / RATE
            for name, hang in SETTINGS:
                if name != det:
                    continue
                cfg = replace(base, detector=det, hangover_ms=hang, end_padding_ms=min(base.end_padding_ms, hang))
                s = score(spans, segment(pcm, voiced, cfg))
                rows_out.append({"detector": det, "hangover_ms": hang, "condition": condition, "score": s})
    wer_rows: list[dict[str, Any]] = []
    if args.wer > 0:
        from realtime_ser.asr import whisper_backend as wb
        from realtime_ser.config import AsrConfig

        engine = wb.Engine(wb.default_model_dir(), AsrConfig(backend="whisper"))
        for ci, condition in enumerate(CONDITIONS):
            if condition not in ("clean", "white_10db"):
                continue
            pcm, spans = build(clips, babble, condition, args.seed + ci)
            n = min(args.wer, len(spans))
            refs = [c["ref"] for c in clips][:n]
            for det in ("webrtc", "silero"):
                detector = webrtc_detector(base.aggressiveness) if det == "webrtc" else SileroDetector(base.threshold)
                voiced, _ = decisions(detector, pcm)
                for name, hang in SETTINGS:
                    if name != det or hang not in (500, 400, 300):
                        continue
                    cfg = replace(base, detector=det, hangover_ms=hang,
                                  end_padding_ms=min(base.end_padding_ms, hang))
                    w = wer_of_cuts(pcm, spans[:n], refs, segment(pcm, voiced, cfg), engine)
                    print(f"[{condition}] {det}@{hang}: WER {w['wer']}", file=sys.stderr, flush=True)
                    wer_rows.append({"detector": det, "hangover_ms": hang, "condition": condition, **w})
    deaf: dict[str, Any] = {}
    if args.all_ravdess:
        rows = _rows(data, "ravdess")
        print(f"deaf spots: {len(rows)} RAVDESS clips", file=sys.stderr, flush=True)
        for det in ("webrtc", "silero"):
            cfg = replace(base, detector=det)
            missed = []
            for r in rows:
                x = np.clip(np.round(_read(r["file"]) * 32768), -32768, 32767).astype(np.int16)
                x = np.concatenate([x, np.zeros(3 * RATE // 2, np.int16)])  # silence that ends any utterance
                detector = webrtc_detector(cfg.aggressiveness) if det == "webrtc" else SileroDetector(cfg.threshold)
                voiced, _ = decisions(detector, x)
                if not segment(x, voiced, cfg):
                    intensity = "strong" if Path(r["path"]).name.split("-")[3] == "02" else "normal"
                    missed.append(f"{r['path']} ({r['emotion']}, {intensity})")
            deaf[det] = {"clips": len(rows), "missed": len(missed), "paths": missed}
    overall: dict[str, Any] = {}
    for name, hang in SETTINGS:
        rs = [r["score"] for r in rows_out if r["detector"] == name and r["hangover_ms"] == hang]
        n = sum(s["clips"] for s in rs)
        overall[f"{name}@{hang}"] = {
            "missed_rate": round(sum(s["missed"] for s in rs) / n, 4),
            "speech_lost_rate": round(float(np.mean([s["speech_lost_rate"] for s in rs])), 4),
            "false_starts": sum(s["false_starts"] for s in rs),
            "split_rate": round(sum(s["split"] for s in rs) / n, 4),
            "eos_delay_ms": summarize([d for s in rs for d in s["delays_ms"]]),
        }
    result = {
        "benchmark": "vad_compare",
        "command": " ".join(["python -m bench.vad_compare", *map(shlex.quote, argv if argv is not None
                                                                   else sys.argv[1:])]),
        "machine": machine(), "git": git_info(), "clips": counts, "clips_total": len(clips),
        "clip_paths": [c["path"] for c in clips], "conditions": list(CONDITIONS),
        "vad": {k: getattr(base, k) for k in ("start_padding_ms", "end_padding_ms", "min_utterance_ms",
                                                 "aggressiveness", "threshold", "start_ms", "start_window_ms")},
        "rows": rows_out, "overall": overall, "wer": wer_rows, "deaf": deaf,
        "cpu_ms_per_audio_s": {k: round(1000 * v[0] / max(v[1], 1e-9), 3) for k, v in cpu.items()},
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    write_result(args.out, "vad_compare", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
