"""``python -m training.demo_voices``: build the bundled recording of real voices, ``demo-voices``.

Two CREMA-D actors (Cao et al., 2014; Open Database License 1.0, contents Database Contents
License 1.0) play an agent (channel 0: actor 1006, a woman of 58) and a customer (channel 1:
actor 1039, a man of 51) whose emotions change over six turns: the customer goes from angry to
sad to happy, the agent from neutral to happy. Each turn is the actor's clip of that emotion
that the most CREMA-D listeners recognized from the voice alone. The sentences are CREMA-D's
lexically neutral ones, so what the emotion model hears in ``realtime-ser run --input
demo-voices`` is the voice, not the words.

Both actors are held out of the packaged models' training data (:data:`DEMO_ACTORS`), so the
demo shows the models on voices they never heard. Writes ``realtime_ser/data/demo-voices.flac``
(stereo, 16 kHz) and ``realtime_ser/data/demo-voices.json`` (the acted emotion of each turn).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from .data import REPO, shared_data_dir

DEMO_ACTORS = ("crema_1006", "crema_1039")
"""Agent and customer of the demo: never in the packaged models' training data."""
TURNS = (("agent", "neutral"), ("customer", "angry"), ("agent", "neutral"), ("customer", "sad"),
         ("agent", "happy"), ("customer", "happy"))
GAP_S = 0.9
RATE = 16000


def choose(rows: list[dict[str, str]], actor: str, emotion: str, used: set[str]) -> dict[str, str]:
    """The actor's clip of ``emotion`` that listeners recognized best (a sentence not used yet)."""
    clips = [r for r in rows if r["speaker"] == actor and r["emotion"] == emotion and r["transcript"] not in used
             and r["voice_vote"] == emotion]
    if not clips:
        raise SystemExit(f"{actor} has no recognized {emotion} clip left")
    return max(clips, key=lambda r: (float(r["voice_agreement"] or 0), r["intensity"] == "high", r["path"]))


def build(data_dir: Path | None = None, out_dir: Path | None = None) -> tuple[Path, Path]:
    folder = (data_dir or shared_data_dir()) / "crema_d"
    out_dir = out_dir or REPO / "realtime_ser" / "data"
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    roles = {"agent": (0, DEMO_ACTORS[0]), "customer": (1, DEMO_ACTORS[1])}
    used: set[str] = set()
    audio = np.zeros((int(0.5 * RATE), 2), dtype=np.float32)
    turns = []
    for role, emotion in TURNS:
        channel, actor = roles[role]
        clip = choose(rows, actor, emotion, used)
        used.add(clip["transcript"])
        samples, sr = sf.read(folder / clip["path"], dtype="float32")
        assert sr == RATE and samples.ndim == 1
        start = len(audio) / RATE
        block = np.zeros((len(samples) + int(GAP_S * RATE), 2), dtype=np.float32)
        block[: len(samples), channel] = samples
        audio = np.concatenate([audio, block])
        turns.append({"role": role, "channel": channel, "actor": actor, "emotion": emotion, "text": clip["transcript"],
                      "start": round(start, 3), "end": round(start + len(samples) / RATE, 3),
                      "clip": clip["path"], "voice_agreement": float(clip["voice_agreement"])})
    wav = out_dir / "demo-voices.flac"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    info = {"source": "CREMA-D (Cao et al. 2014), github.com/CheyneyComputerScience/CREMA-D",
            "licence": "Open Database License 1.0; contents: Database Contents License 1.0",
            "channels": {"0": "agent", "1": "customer"}, "turns": turns}
    meta = out_dir / "demo-voices.json"
    meta.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return wav, meta


def main() -> int:
    for path in build():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
