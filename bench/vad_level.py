"""Quiet input and the voice detector: what webrtcvad hears of speech played quieter, with and
without the detector gain (``vad.auto_gain_dbfs``), and what the gain does to noise alone.

- **clips**: a deterministic spread of RAVDESS, TESS and CREMA-D clips (the same choice as
  ``bench.vad_compare``), each its own stream as recorded and 12, 20 and 30 dB quieter (scaled,
  then rounded to 16 bits as a recording is);
- **measures**, with the real :class:`~realtime_ser.vad.Segmenter` (30 ms frames, the default
  settings otherwise): *no speech found* (clips in which no utterance starts), *kept* (the share of
  a clip's samples given to the recognizer, mean) and, with the gain, *cut as without it* (clips whose
  utterances are exactly those of the same copy without the gain);
- **noise alone**: 60 s of pink noise at -50, -60 and -70 dBFS, steady and pulsed (its level
  swinging 20 dB four times a second, as a syllable rate): the utterances each setting starts.

Usage, from the repository root::

    python -m bench.vad_level                      # 100 clips per corpus, about 2 minutes on 2 cores
    python -m bench.vad_level --clips 10 --gain -35 --gain -40

Writes ``vad_level.json`` and ``vad_level.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import default_data_dir, git_info, machine, select_clips, write_result
from bench.vad_compare import CORPORA, FRAME, FRAME_MS, _pink, _read, _rows
from realtime_ser.config import AUTO_GAIN_LIMITS, VadConfig
from realtime_ser.frames import AudioFrame, SpeechAudio, SpeechStart
from realtime_ser.vad import Segmenter

REPO_ROOT = Path(__file__).resolve().parent.parent
LEVELS_DB = (0, -12, -20, -30)
NOISE_DBFS = (-50, -60, -70)


def cut(pcm: np.ndarray, config: VadConfig) -> list[int]:
    """Samples of each utterance the segmenter hands the recognizer."""
    seg = Segmenter(config, FRAME_MS)
    sizes: list[int] = []
    pcm = pcm[: len(pcm) // FRAME * FRAME]
    events: list[Any] = []
    for i in range(0, len(pcm), FRAME):
        events += seg.feed(AudioFrame(i // FRAME, 0, i, pcm[i : i + FRAME], 0))
    events += seg.flush()
    for ev in events:
        if isinstance(ev, SpeechStart):
            sizes.append(0)
        elif isinstance(ev, SpeechAudio) and sizes:
            sizes[-1] += len(ev.frame.samples)
    return sizes


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def noise(kind: str, level_dbfs: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * 16000)
    x = _pink(n, rng)
    if kind == "pulsed":
        x = x * 10 ** (-(1 + np.sin(2 * np.pi * 4 * np.arange(n) / 16000)) / 2)  # 0 to -20 dB, 4 Hz
    return _int16(x / np.sqrt(np.mean(x**2)) * 10 ** (level_dbfs / 20))


def run(data: Path, clips_per_corpus: int, gains: list[float], seed: int) -> dict[str, Any]:
    settings = {"off": VadConfig(), **{f"{g:g}": VadConfig(auto_gain_dbfs=g) for g in gains}}
    clips = [r for c in CORPORA for r in select_clips(_rows(data, c), clips_per_corpus)]
    audio = [_read(r["file"]) for r in clips]
    levels: dict[str, Any] = {}
    for db in LEVELS_DB:
        row: dict[str, Any] = {}
        base: list[list[int]] = []
        for name, config in settings.items():
            found = same = 0
            kept = 0.0
            t0 = time.perf_counter()
            for i, x in enumerate(audio):
                sizes = cut(_int16(x * 10 ** (db / 20)), config)
                if name == "off":
                    base.append(sizes)
                found += bool(sizes)
                kept += sum(sizes) / len(x)
                same += sizes == base[i]
            row[name] = {"no_speech": len(audio) - found, "kept_mean": kept / len(audio),
                         "cut_as_without": same, "seconds": round(time.perf_counter() - t0, 1)}
        levels[str(db)] = row
    rng = np.random.default_rng(seed)
    noises: dict[str, Any] = {}
    for kind in ("steady", "pulsed"):
        for level in NOISE_DBFS:
            x = noise(kind, level, 60.0, rng)
            noises[f"{kind} {level}"] = {name: len(cut(x, config)) for name, config in settings.items()}
    return {"clips": len(audio), "by_corpus": {c: sum(r["corpus"] == c for r in clips) for c in CORPORA},
            "gains_dbfs": gains, "levels": levels, "noise": noises}


def markdown(result: dict[str, Any]) -> str:
    names = ["off", *[f"{g:g}" for g in result["gains_dbfs"]]]
    head = " | ".join(f"auto_gain_dbfs={n}" if n != "off" else "gain off" for n in names)
    lines = ["# The voice detector on quiet speech, with and without the detector gain", "",
             f"`{result['command']}` ({result['git']['commit'][:7] if result['git']['commit'] else '?'}). "
             f"{result['clips']} clips ({', '.join(f'{c} {n}' for c, n in result['by_corpus'].items())}), each "
             "its own stream, webrtcvad (mode 2) with the default segmentation, 30 ms frames.", "",
             "## Clips in which no speech is found, share of a clip kept (mean %), clips cut as without the gain", "",
             f"| level | {head} |", "|---|" + "---:|" * len(names)]
    for db, row in result["levels"].items():
        cells = []
        for n in names:
            r = row[n]
            cells.append(f"{r['no_speech']}, {100 * r['kept_mean']:.0f}%"
                         + ("" if n == "off" else f", {r['cut_as_without']}"))
        lines.append(f"| {'as recorded' if db == '0' else db + ' dB'} | " + " | ".join(cells) + " |")
    lines += ["", "## Noise alone, 60 s: utterances started", "", f"| noise | {head} |",
              "|---|" + "---:|" * len(names)]
    for name, row in result["noise"].items():
        kind, level = name.split()
        lines.append(f"| pink, {kind}, {level} dBFS | " + " | ".join(str(row[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vad_level", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--clips", type=int, default=100, help="clips per corpus (default 100)")
    p.add_argument("--gain", type=float, action="append", default=None, metavar="DBFS",
                   help="a vad.auto_gain_dbfs to measure (repeatable; default -35)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    data = args.data or default_data_dir()
    missing = [c for c in CORPORA if not (data / c / "manifest.csv").is_file()]
    if missing:
        print(f"error: {data} has no {', '.join(missing)} manifest (the shared data: ../shared/data)", file=sys.stderr)
        return 2
    gains = args.gain or [-35.0]
    for g in gains:
        if not AUTO_GAIN_LIMITS[0] <= g <= AUTO_GAIN_LIMITS[1]:
            p.error(f"--gain {g:g}: use a level of {AUTO_GAIN_LIMITS[0]:g}..{AUTO_GAIN_LIMITS[1]:g} dBFS")
    result = run(data, args.clips, gains, args.seed)
    args_given = argv if argv is not None else sys.argv[1:]
    result.update(command=shlex.join(["python", "-m", "bench.vad_level", *args_given]),
                  git=git_info(), machine=machine())
    write_result(args.out, "vad_level", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
