"""Transcripts as the live path produces them: a manifest's audio through the real recognizer.

``python -m training.transcribe MANIFEST --out OUT.csv [--backend pocketsphinx]`` cuts every
clip with the live segmenter, feeds the utterance audio to the recognizer exactly as the
pipeline does, and writes a copy of the manifest whose ``text`` is the recognized
transcript (the reference stays in ``ref_text``). Used to train and test the text branch
on recognition errors. Clips are shared across processes by an index (``--part i/n``) so
two cores can work at once; finished rows are cached per file content.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from realtime_ser.asr import create_backend
from realtime_ser.config import AsrConfig
from realtime_ser.features.cache import FeatureCache
from realtime_ser.features.segment import utterance_audio

from .data import Utterance, read_manifest, write_manifest

CHUNK = 480  # 30 ms, as the pipeline feeds pocketsphinx


def transcribe(manifest_path: Path, out: Path, backend: str = "pocketsphinx", speakers: set[str] | None = None,
               sample: int = 0, seed: int = 0, exclude: set[str] | None = None) -> Path:
    """Transcribe the manifest's clips (only ``speakers``' if given; a random ``sample`` of them if > 0)."""
    manifest = read_manifest(manifest_path)
    chosen = [u for u in manifest.utterances
              if (speakers is None or u.speaker in speakers) and u.speaker not in (exclude or set())]
    if sample and sample < len(chosen):
        import random

        chosen = random.Random(seed).sample(chosen, sample)
    keep = {(u.dialogue_id, u.utt_index) for u in chosen}
    asr = create_backend(AsrConfig(backend=backend, worker_processes=False), in_process=True)
    if asr is None:
        raise SystemExit("--backend none transcribes nothing")
    cache = FeatureCache()
    # "session": each clip is recognized by a fresh stream, as each clip is its own live session
    # (a recognizer's adaptation, e.g. pocketsphinx's cepstral mean, must not carry across clips).
    key = f"{backend}-{asr.model or 'default'}-session".replace("/", "_")[:60]
    key = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    rows: list[Utterance] = []
    for _i, u in enumerate(manifest.utterances):
        if (u.dialogue_id, u.utt_index) not in keep:
            continue
        path = manifest.audio_path(u)
        if path is None:
            rows.append(u)
            continue

        def run(path: Path = path) -> np.ndarray:
            texts = []
            stream = asr.new_stream()
            try:
                for samples in utterance_audio(path):
                    stream.start()
                    for j in range(0, len(samples), CHUNK):
                        stream.accept(samples[j : j + CHUNK])
                    texts.append(stream.finish().text)
            finally:
                stream.close()
            return np.frombuffer(json.dumps(" ".join(t for t in texts if t)).encode(), dtype=np.uint8)

        text = json.loads(bytes(cache.get_or_compute("transcript", path.read_bytes(), key, run)).decode())
        extra = dict(u.extra)
        extra["ref_text"] = u.text
        extra["asr"] = backend
        rows.append(replace(u, text=text, audio=str(path.resolve()), extra=extra))
        if len(rows) % 25 == 0:
            print(f"{len(rows)}/{len(keep)}", file=sys.stderr, flush=True)
    write_manifest(out, rows)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.transcribe", description=__doc__)
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", default="pocketsphinx")
    p.add_argument("--speakers", default="", help="comma-separated speaker ids to keep (default: all)")
    p.add_argument("--exclude-speakers", default="", help="comma-separated speaker ids to leave out")
    p.add_argument("--sample", type=int, default=0, help="transcribe a random sample of this many clips")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    speakers = set(args.speakers.split(",")) if args.speakers else None
    exclude = set(args.exclude_speakers.split(",")) if args.exclude_speakers else set()
    transcribe(args.manifest, args.out, args.backend, speakers, args.sample, args.seed, exclude)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
