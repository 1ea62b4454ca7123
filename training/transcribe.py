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


def transcribe(manifest_path: Path, out: Path, backend: str = "pocketsphinx") -> Path:
    manifest = read_manifest(manifest_path)
    asr = create_backend(AsrConfig(backend=backend, worker_processes=False), in_process=True)
    if asr is None:
        raise SystemExit("--backend none transcribes nothing")
    stream = asr.new_stream()
    cache = FeatureCache()
    key = f"{backend}-{asr.model or 'default'}".replace("/", "_")[:60]
    key = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    rows: list[Utterance] = []
    for i, u in enumerate(manifest.utterances):
        path = manifest.audio_path(u)
        if path is None:
            rows.append(u)
            continue

        def run(path: Path = path) -> np.ndarray:
            texts = []
            for samples in utterance_audio(path):
                stream.start()
                for j in range(0, len(samples), CHUNK):
                    stream.accept(samples[j : j + CHUNK])
                texts.append(stream.finish().text)
            return np.frombuffer(json.dumps(" ".join(t for t in texts if t)).encode(), dtype=np.uint8)

        text = json.loads(bytes(cache.get_or_compute("transcript", path.read_bytes(), key, run)).decode())
        extra = dict(u.extra)
        extra["ref_text"] = u.text
        extra["asr"] = backend
        rows.append(replace(u, text=text, audio=str(path.resolve()), extra=extra))
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(manifest)}", file=sys.stderr)
    write_manifest(out, rows)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.transcribe", description=__doc__)
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", default="pocketsphinx")
    args = p.parse_args(argv)
    transcribe(args.manifest, args.out, args.backend)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
