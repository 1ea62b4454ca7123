"""Attentive pooling against mean + standard deviation of Whisper's encoder states.

The packaged audio front end pools an utterance's encoder states (one 512-dimensional state
every 20 ms, Whisper base) into their mean and standard deviation. Attentive statistics
pooling (Okabe et al. 2018) learns a weight per frame, so frames that carry the emotion count
more than pauses and neutral syllables, and pools the weighted mean and standard deviation.
This experiment asks whether that is worth carrying into the model, on the same protocol as
``configs/train/voices_ravdess.toml``:

- RAVDESS's 4-class clips in the trainer's five speaker-disjoint groups of four actors (the
  same groups: :func:`training.folds.speaker_folds`, ``k=5``, seed 0); each group tested once,
  training on the other groups plus every 4-class CREMA-D and TESS clip;
- CREMA-D's 4-class clips in five groups of 15 actors, training on the other groups plus
  RAVDESS and TESS;
- the same head on both poolings (a hidden layer of 256, dropout 0.3), the same early
  stopping and temperature on held-out voices of each training corpus
  (``speaker_per_corpus``), three seeds, no augmented copies (attentive pooling needs the
  frames, and the trainer's cache keeps pooled vectors only).

The encoder states come from exactly the trainer's path (the clip cut by the pipeline's VAD,
:func:`realtime_ser.features.segment.utterance_audio`, then
:meth:`realtime_ser.features.speech.SpeechEncoder.encode`) and are cached as float16 in
``runs/pooling/``. Run ``python -m training.pooling``; it writes
``training/results/pooling.json`` and ``pooling.md``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime_ser.config import PipelineConfig
from realtime_ser.features import speech
from realtime_ser.features.segment import utterance_audio

from .calibration import ece, fit_temperature, softmax
from .data import Manifest
from .folds import speaker_folds
from .metrics import classification_report
from .train import REPO, DataConfig, held_out_voices, resolve_manifest, runs_dir

log = logging.getLogger("training.pooling")

LABELS = ("neutral", "happy", "sad", "angry")
CORPORA = ("ravdess", "crema_d", "tess")
TESTED = ("ravdess", "crema_d")
POOLINGS = ("mean_std", "attentive")


Clip = tuple[str, str, int, Path, str]
"""(corpus, speaker, label index, audio path, dialogue id)."""


def _clips(manifest: Manifest) -> list[Clip]:
    """Every labeled clip of the 4 classes."""
    out = []
    for d in manifest.dialogues():
        for u in d:
            if u.labeled and u.label in LABELS:
                path = manifest.audio_path(u)
                if path is not None:
                    out.append((u.meta("corpus") or "", u.speaker, LABELS.index(u.label), path, u.dialogue_id))
    return out


def encoder_states(paths: list[Path], cache_dir: Path, batch: int = 16) -> list[np.ndarray]:
    """Each clip's encoder states (frames, 512) as float16, from the cache or computed."""
    enc = speech.load()
    pipeline = PipelineConfig()
    key = hashlib.sha256(json.dumps([enc.key(), str(pipeline.vad)]).encode()).hexdigest()[:12]
    folder = cache_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    out: list[np.ndarray | None] = []
    todo = []
    for i, p in enumerate(paths):
        f = folder / (hashlib.sha256(p.read_bytes()).hexdigest()[:24] + ".npy")
        if f.is_file():
            out.append(np.load(f))
        else:
            out.append(None)
            todo.append((i, f))
    start = time.monotonic()
    for n in range(0, len(todo), batch):
        chunk = todo[n : n + batch]
        samples = []
        for i, _ in chunk:
            segments = utterance_audio(paths[i], pipeline)
            samples.append(np.concatenate(segments) if segments else np.zeros(0, np.int16))
        for (i, f), e in zip(chunk, enc.encode(samples), strict=True):
            states = np.asarray(e.states, dtype=np.float16)
            np.save(f, states)
            out[i] = states
        if n // batch % 20 == 0:
            log.info("encoded %d of %d clips (%.0f s)", n + len(chunk), len(todo), time.monotonic() - start)
    return [s if s is not None else np.zeros((1, enc.d_model), np.float16) for s in out]


# -- models ------------------------------------------------------------------------------------


def _build(pooling: str, dim: int, mean: np.ndarray, std: np.ndarray, hidden: int = 256) -> Any:
    import torch
    from torch import nn

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean).float())
            self.register_buffer("std", torch.from_numpy(std).float())
            if pooling == "attentive":
                self.score = nn.Sequential(nn.Linear(dim, 128), nn.Tanh(), nn.Linear(128, 1))
            self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(0.3),
                                      nn.Linear(hidden, len(LABELS)))

        def forward(self, x: Any, mask: Any) -> Any:
            x = (x - self.mean) / self.std
            if pooling == "attentive":
                w = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
            else:
                w = mask.float() / mask.sum(-1, keepdim=True)
            mu = (w.unsqueeze(-1) * x).sum(1)
            var = (w.unsqueeze(-1) * (x - mu.unsqueeze(1)) ** 2).sum(1)
            return self.head(torch.cat([mu, var.clamp_min(1e-6).sqrt()], -1))

    return Pooled()


def _batch(states: list[np.ndarray], idx: list[int]) -> tuple[Any, Any]:
    import torch

    n = max(len(states[i]) for i in idx)
    x = np.zeros((len(idx), n, states[idx[0]].shape[1]), np.float32)
    m = np.zeros((len(idx), n), bool)
    for j, i in enumerate(idx):
        x[j, : len(states[i])] = states[i]
        m[j, : len(states[i])] = True
    return torch.from_numpy(x), torch.from_numpy(m)


def _logits(model: Any, states: list[np.ndarray], idx: list[int]) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for n in range(0, len(idx), 128):
            x, m = _batch(states, idx[n : n + 128])
            out.append(model(x, m).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


def _validation(train: list[int], meta: list[Clip], rng: random.Random
                ) -> tuple[list[int], list[int]]:
    """A tenth of each training corpus's voices held out (none of a corpus of under ten)."""
    held = held_out_voices({c: sorted({meta[i][1] for i in train if meta[i][0] == c}) for c in CORPORA}, 0.1, rng)
    return [i for i in train if meta[i][1] not in held], [i for i in train if meta[i][1] in held]


def train_one(pooling: str, states: list[np.ndarray], meta: list[Clip], train: list[int],
              seed: int, epochs: int = 30, patience: int = 6) -> Any:
    import torch
    from torch import nn

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = random.Random(seed)
    fit, val = _validation(train, meta, rng)
    frames = np.concatenate([states[i] for i in fit]).astype(np.float32)
    model = _build(pooling, frames.shape[1], frames.mean(0), frames.std(0) + 1e-5)
    del frames
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    ce = nn.CrossEntropyLoss()
    y = np.array([m[2] for m in meta])
    best: tuple[float, dict[str, Any]] | None = None
    stale = 0
    for _ in range(epochs):
        model.train()
        order = list(fit)
        rng.shuffle(order)
        for n in range(0, len(order), 64):
            idx = order[n : n + 64]
            x, m = _batch(states, idx)
            loss = ce(model(x, m), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        score = classification_report(y[val], softmax(_logits(model, states, val)), LABELS)["uar"]
        if best is None or score > best[0]:
            best, stale = (score, copy.deepcopy(model.state_dict())), 0
        else:
            stale += 1
            if stale >= patience:
                break
    assert best is not None
    model.load_state_dict(best[1])
    model.temperature = fit_temperature(_logits(model, states, val), y[val])
    return model


def run(seeds: tuple[int, ...], out: Path, tested: tuple[str, ...] = TESTED) -> dict[str, Any]:
    data = DataConfig(manifests=CORPORA, labels=LABELS)
    manifests = {c: resolve_manifest(c, data) for c in CORPORA}
    meta: list[Clip] = []
    by_corpus: dict[str, list[int]] = {}
    for c, man in manifests.items():
        for clip in _clips(man):
            by_corpus.setdefault(c, []).append(len(meta))
            meta.append(clip)
    log.info("clips: %s", {c: len(v) for c, v in by_corpus.items()})
    states = encoder_states([m[3] for m in meta], runs_dir() / "pooling")
    results: dict[str, Any] = {"corpora": {}, "seeds": list(seeds)}
    for corpus in tested:
        folds = speaker_folds(manifests[corpus], k=5, seed=0)
        others = [i for c, v in by_corpus.items() if c != corpus for i in v]
        per: dict[str, list[dict[str, Any]]] = {p: [] for p in POOLINGS}
        for seed in seeds:
            for pooling in POOLINGS:
                ys, probs = [], []
                for fold in folds:
                    test_ids = set(fold.test)
                    test = [i for i in by_corpus[corpus] if meta[i][4] in test_ids]
                    train = [i for i in by_corpus[corpus] if i not in set(test)] + others
                    t0 = time.monotonic()
                    model = train_one(pooling, states, meta, train, seed)
                    probs.append(softmax(_logits(model, states, test) / model.temperature))
                    ys.append(np.array([meta[i][2] for i in test]))
                    log.info("%s | %s | %s | seed %d: UAR %.3f (%.0f s)", corpus, pooling, fold.name, seed,
                             classification_report(ys[-1], probs[-1], LABELS)["uar"], time.monotonic() - t0)
                y, p = np.concatenate(ys), np.concatenate(probs)
                rep = classification_report(y, p, LABELS)
                per[pooling].append({"seed": seed, "n": int(len(y)), "uar": rep["uar"],
                                     "accuracy": rep["weighted_accuracy"], "ece": ece(p, y)})
        results["corpora"][corpus] = per
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    tested = ",".join(results["corpora"])
    lines = ["# Attentive pooling against mean + std of Whisper's encoder states", "",
             f"`python -m training.pooling --test {tested}`; speaker-disjoint groups as in `voices_ravdess` / "
             "`voices_crema_d`, training on every other clip of the three corpora, no augmented copies; "
             "pooled over the folds of a seed, mean ± std over seeds.", "",
             "| test set | pooling | n | UAR % | accuracy % | ECE |", "|---|---|---:|---:|---:|---:|"]
    for corpus, per in results["corpora"].items():
        for pooling, runs in per.items():
            u = np.array([r["uar"] for r in runs]) * 100
            a = np.array([r["accuracy"] for r in runs]) * 100
            e = np.array([r["ece"] for r in runs])
            lines.append(f"| {corpus} 4 classes | {pooling} | {runs[0]['n']} | {u.mean():.1f} ± {u.std():.1f} | "
                         f"{a.mean():.1f} ± {a.std():.1f} | {e.mean():.3f} ± {e.std():.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pooling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--test", default=",".join(TESTED),
                    help=f"comma-separated corpora to test on (default {','.join(TESTED)}; each costs about "
                         f"20 minutes per seed on 2 cores, after encoding every clip once: 20 minutes)")
    ap.add_argument("--out", type=Path, default=REPO / "training" / "results" / "pooling.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    tested = tuple(c for c in args.test.split(",") if c)
    unknown = set(tested) - set(TESTED)
    if unknown:
        ap.error(f"--test: unknown corpora {', '.join(sorted(unknown))}; known: {', '.join(TESTED)}")
    run(tuple(int(s) for s in args.seeds.split(",")), args.out, tested)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
