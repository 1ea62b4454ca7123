"""Acoustic front ends compared: our numpy functionals against openSMILE, and what augmentation buys.

``python -m training.frontends`` measures, on RAVDESS and TESS from the shared data folder:

(a) extraction time per second of audio, single thread, median over clips, warm;
(b) accuracy with one fixed classifier for every front end: RAVDESS 8- and 4-class with
    speaker-independent folds (5 folds of 4 actors, 2 male and 2 female each), TESS
    within its one speaker (stratified 5-fold), and across corpora (4-class, trained on
    one corpus, tested on the other);
(c) with our front end, RAVDESS 4-class: training with and without augmented copies
    (:mod:`training.augment`), tested on clean, telephone-band and noisy audio.

Front ends: ``ours`` (:class:`realtime_ser.features.acoustic.AcousticFeatures`, the code the
runtime calls), ``egemaps`` (openSMILE eGeMAPSv02 functionals, 88), ``compare``
(openSMILE ComParE_2016 functionals, 6373) and ``ours+egemaps`` (concatenation). Features are
computed on whole clips as distributed (leading and trailing silence included) and cached
with :class:`realtime_ser.features.cache.FeatureCache` under the front end's name and
settings, keyed by the clip's bytes (and, for altered audio, the alteration and its seed).

Writes ``frontends.json`` (every figure, the machine, the git commit, the command) and
``frontends.md`` (tables and the choice of runtime front end) to ``--out-dir``.
``--quick`` is a tiny run on a handful of clips that exercises every step (used by the tests).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Single-threaded BLAS, set before numpy loads: the timings are per core, and numpy's
    # default thread pool makes the small matrix products of a feature extractor slower on
    # a shared 2-core machine (measured: 3x), which would penalise our front end unfairly.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Protocol  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from realtime_ser.features.acoustic import AcousticConfig, AcousticFeatures  # noqa: E402
from realtime_ser.features.cache import FeatureCache  # noqa: E402
from training.augment import AugmentConfig, Augmenter, add_noise, telephone  # noqa: E402
from training.data import (  # noqa: E402
    CORPUS_LABELS,
    LABEL_MAPS,
    LABELS4,
    REPO,
    Manifest,
    convert_ravdess,
    convert_tess,
    shared_data_dir,
)
from training.folds import Fold, check_disjoint  # noqa: E402

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BASE_FRONTENDS: tuple[str, ...] = ("ours", "egemaps", "compare")
COMBINED: dict[str, tuple[str, ...]] = {"ours+egemaps": ("ours", "egemaps")}
FRONTENDS: tuple[str, ...] = ("ours", "egemaps", "ours+egemaps", "compare")
"""Every front end this script knows, in the order tables list them."""
RAVDESS_ONLY: frozenset[str] = frozenset({"compare"})
"""Front ends measured on the RAVDESS speaker-independent tasks only: ComParE's 6373 inputs make
each classifier fit about 30x dearer (~8 s of CPU), too much for TESS and cross-corpus too."""

# --------------------------------------------------------------------------- front ends


class FrontEnd(Protocol):
    """One utterance -> one fixed-length vector."""

    name: str
    settings_key: str
    dim: int

    def extract(self, samples: np.ndarray) -> np.ndarray: ...


class OursFrontEnd:
    """The runtime's numpy functionals (75 values)."""

    name = "ours"

    def __init__(self, config: AcousticConfig | None = None) -> None:
        self._features = AcousticFeatures(config or AcousticConfig())
        self.settings_key = self._features.config.key()
        self.dim = self._features.dim

    def extract(self, samples: np.ndarray) -> np.ndarray:
        return self._features.extract(samples)


class OpenSmileFrontEnd:
    """openSMILE functionals of one feature set (imported lazily: it is not a runtime dependency)."""

    SETS = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}

    def __init__(self, name: str) -> None:
        import opensmile

        if name not in self.SETS:
            raise ValueError(f"openSMILE front end must be one of {', '.join(self.SETS)}; got {name!r}")
        self.name = name
        self._smile = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, self.SETS[name]),
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self.settings_key = f"{self.SETS[name]}-functionals-opensmile-{opensmile.__version__}"
        self.dim = len(self._smile.feature_names)

    def extract(self, samples: np.ndarray) -> np.ndarray:
        frame = self._smile.process_signal(np.asarray(samples, dtype=np.float32), SAMPLE_RATE)
        return np.nan_to_num(frame.to_numpy(dtype=np.float64)[0]).astype(np.float32)


def make_frontend(name: str) -> FrontEnd:
    """A base front end by name (``ours``, ``egemaps``, ``compare``)."""
    if name == "ours":
        return OursFrontEnd()
    if name in OpenSmileFrontEnd.SETS:
        return OpenSmileFrontEnd(name)
    raise ValueError(f"front end must be one of {', '.join(BASE_FRONTENDS)}; got {name!r}")


def opensmile_available() -> bool:
    try:
        import opensmile  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    """One labeled audio file of a corpus."""

    path: Path
    corpus: str
    speaker: str
    gender: str
    label: str
    """The corpus's own label."""
    label4: str
    """One of :data:`training.data.LABELS4`, or "" when the corpus label is none of them."""
    duration: float
    digest: str
    """sha256 of the file's bytes: the cache key."""


def load_clips(corpus: str, data_dir: Path, limit_per_label: int | None = None,
               speakers: Sequence[str] | None = None) -> tuple[list[Clip], Manifest]:
    """Every clip of ``corpus`` (``ravdess`` or ``tess``) with its labels, and a manifest of them.

    ``limit_per_label``, ``speakers``: the first clips per (speaker, label) and a subset of
    speakers, for quick runs.
    """
    converters = {"ravdess": convert_ravdess, "tess": convert_tess}
    if corpus not in converters:
        raise ValueError(f"corpus must be one of {', '.join(converters)}; got {corpus!r}")
    src = data_dir / corpus
    utterances = converters[corpus](src, src, "all")
    if speakers is not None:
        utterances = [u for u in utterances if u.speaker in speakers]
    if limit_per_label is not None:
        seen: dict[tuple[str, str], int] = {}
        kept = []
        for u in utterances:
            n = seen.get((u.speaker, u.label), 0)
            if n < limit_per_label:
                kept.append(u)
                seen[(u.speaker, u.label)] = n + 1
        utterances = kept
    manifest = Manifest(src / "manifest.csv", utterances, CORPUS_LABELS[corpus])
    clips = []
    for u in manifest.utterances:
        path = manifest.audio_path(u)
        assert path is not None
        clips.append(Clip(path, corpus, u.speaker, u.meta("gender"), u.label, LABEL_MAPS[corpus].get(u.label, ""),
                          float(u.meta("duration") or 0.0), hashlib.sha256(path.read_bytes()).hexdigest()))
    return clips, manifest


def read_audio(path: Path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono audio, got {rate} Hz with shape {samples.shape}")
    return np.asarray(samples)


# --------------------------------------------------------------------------- altered audio


@dataclass(frozen=True)
class Variant:
    """A deterministic alteration of a clip's audio; ``tag`` names it in cache keys."""

    tag: str
    transform: Callable[[np.ndarray, Clip], np.ndarray]


CLEAN = Variant("clean", lambda x, clip: x)


def _clip_seed(clip: Clip) -> int:
    return int(clip.digest[:12], 16)


def augmented(config: AugmentConfig, copy: int, seed: int = 0) -> Variant:
    """Copy number ``copy`` of a clip through a random chain; the randomness depends on the clip, not the order."""
    return Variant(f"aug-{config.key()}-s{seed}-c{copy}",
                   lambda x, clip: Augmenter(config, seed=(seed, _clip_seed(clip), copy)).apply(x, SAMPLE_RATE))


TELEPHONE = Variant("telephone", lambda x, clip: telephone(x, SAMPLE_RATE))


def noisy(snr_db: float, kind: str) -> Variant:
    return Variant(f"noise-{kind}-{snr_db:g}dB",
                   lambda x, clip: add_noise(x, snr_db, np.random.default_rng((9, _clip_seed(clip))), kind))


# --------------------------------------------------------------------------- features


class FeatureStore:
    """Feature matrices of clips for named front ends (combined ones concatenated), cached on disk."""

    def __init__(self, cache: FeatureCache, names: Sequence[str]) -> None:
        self.cache = cache
        bases = dict.fromkeys(b for n in names for b in COMBINED.get(n, (n,)))
        self.frontends: dict[str, FrontEnd] = {b: make_frontend(b) for b in bases}

    def matrix(self, name: str, clips: Sequence[Clip], variant: Variant = CLEAN) -> np.ndarray:
        parts = COMBINED.get(name, (name,))
        return np.hstack([self._base(p, clips, variant) for p in parts])

    def _base(self, name: str, clips: Sequence[Clip], variant: Variant) -> np.ndarray:
        fe = self.frontends[name]
        rows = []
        start = last = time.monotonic()
        for i, clip in enumerate(clips):
            def compute(clip: Clip = clip) -> np.ndarray:
                return fe.extract(variant.transform(read_audio(clip.path), clip))

            rows.append(self.cache.get_or_compute(fe.name, f"{clip.digest}|{variant.tag}", fe.settings_key, compute))
            if time.monotonic() - last > 30:
                last = time.monotonic()
                log.info("  %s %s: %d/%d clips (%.0f s)", name, variant.tag, i + 1, len(clips), last - start)
        return np.vstack(rows).astype(np.float64)


# --------------------------------------------------------------------------- folds


def gender_balanced_folds(manifest: Manifest, k: int, seed: int) -> list[Fold]:
    """``k`` speaker-disjoint folds, each with the same number of speakers of each gender.

    Speakers of each gender are shuffled with ``seed`` and dealt round-robin, so RAVDESS
    (10 male, 10 female) gives 5 folds of 2 male and 2 female actors.
    """
    by_gender: dict[str, list[str]] = {}
    for u in manifest.utterances:
        speakers = by_gender.setdefault(u.meta("gender"), [])
        if u.speaker not in speakers:
            speakers.append(u.speaker)
    rng = random.Random(seed)
    members: list[list[str]] = [[] for _ in range(k)]
    for gender in sorted(by_gender):
        speakers = sorted(by_gender[gender])
        if len(speakers) % k:
            raise ValueError(f"{len(speakers)} speakers of gender {gender!r} do not split into {k} equal folds")
        rng.shuffle(speakers)
        for i, s in enumerate(speakers):
            members[i % k].append(s)
    folds = []
    ids = manifest.dialogue_ids()
    for test_speakers in members:
        test = {u.dialogue_id for u in manifest.utterances if u.speaker in test_speakers}
        fold = Fold("test speakers " + ", ".join(sorted(test_speakers)),
                    tuple(d for d in ids if d not in test), tuple(d for d in ids if d in test))
        check_disjoint(manifest, fold)
        folds.append(fold)
    return folds


def stratified_folds(labels: Sequence[str], k: int, seed: int) -> list[np.ndarray]:
    """Test indices of ``k`` folds with each label spread evenly (within-speaker CV)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=int)
    for label in sorted(set(labels)):
        idx = np.flatnonzero(np.asarray(labels) == label)
        rng.shuffle(idx)
        fold_of[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return [np.flatnonzero(fold_of == f) for f in range(k)]


# --------------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class ClassifierConfig:
    """The one classifier every front end gets: a one-hidden-layer MLP (numpy), fixed hyper-parameters.

    Fixed before any result was seen and the same for every front end and condition;
    inputs standardised with the training fold's mean and standard deviation.
    """

    hidden: int = 128
    dropout: float = 0.3
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Each array minus the mean of ``train``, divided by its std (floored, so constant columns give 0)."""
    mean = train.mean(axis=0)
    std = np.maximum(train.std(axis=0), 1e-8)
    return [(a - mean) / std for a in (train, *others)]


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, seed: int,
                config: ClassifierConfig, normalize_test_on_itself: bool = False) -> np.ndarray:
    """Train the MLP on standardised features; return predicted class indices for ``x_test``.

    numpy, float32, AdamW (decoupled weight decay on every parameter, as torch's default),
    He-initialised ReLU layer, inverted dropout, softmax cross-entropy; every random draw
    comes from ``seed``. numpy rather than torch because the model is tiny: torch's start-up
    and per-step overhead cost more than the arithmetic here.

    ``normalize_test_on_itself``: standardise the test set with its own statistics (per-corpus
    normalisation for cross-corpus tests: uses the test audio, but not its labels).
    """
    if normalize_test_on_itself:
        (xtr,), (xte,) = standardize(x_train), standardize(x_test)
    else:
        xtr, xte = standardize(x_train, x_test)
    x = xtr.astype(np.float32)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    h, lr, wd, p_drop = config.hidden, config.lr, config.weight_decay, config.dropout
    params = [(rng.standard_normal((d, h)) * np.sqrt(2.0 / d)).astype(np.float32), np.zeros(h, np.float32),
              (rng.standard_normal((h, n_classes)) * np.sqrt(1.0 / h)).astype(np.float32),
              np.zeros(n_classes, np.float32)]
    m1 = [np.zeros_like(q) for q in params]
    m2 = [np.zeros_like(q) for q in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    onehot = np.eye(n_classes, dtype=np.float32)[np.asarray(y_train)]
    step = 0
    for _ in range(config.epochs):
        order = rng.permutation(n)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb = x[idx]
            w1, b1, w2, _ = params
            z = xb @ w1 + b1
            keep = (rng.random(z.shape, dtype=np.float32) >= p_drop) / np.float32(1.0 - p_drop)
            a = np.maximum(z, 0.0) * keep
            logits = a @ w2 + params[3]
            logits -= logits.max(axis=1, keepdims=True)
            prob = np.exp(logits)
            prob /= prob.sum(axis=1, keepdims=True)
            g = (prob - onehot[idx]) / len(idx)
            ga = (g @ w2.T) * keep * (z > 0)
            grads = [xb.T @ ga, ga.sum(axis=0), a.T @ g, g.sum(axis=0)]
            step += 1
            c1, c2 = 1.0 - beta1**step, 1.0 - beta2**step
            for k, (q, grad) in enumerate(zip(params, grads, strict=True)):
                q *= 1.0 - lr * wd
                m1[k] = beta1 * m1[k] + (1.0 - beta1) * grad
                m2[k] = beta2 * m2[k] + (1.0 - beta2) * grad * grad
                q -= lr * (m1[k] / c1) / (np.sqrt(m2[k] / c2) + eps)
    w1, b1, w2, b2 = params
    return np.asarray((np.maximum(xte.astype(np.float32) @ w1 + b1, 0.0) @ w2 + b2).argmax(axis=1))


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Weighted accuracy (= plain accuracy) and UAR (mean recall over the classes present), in %."""
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return {"accuracy": 100.0 * float(np.mean(y_true == y_pred)), "uar": 100.0 * float(np.mean(recalls))}


def summary(runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1; 0 for one run) of each metric over runs (seeds)."""
    out: dict[str, Any] = {}
    for key in ("accuracy", "uar"):
        values = np.array([r[key] for r in runs])
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "runs": [round(float(v), 2) for v in values]}
    return out


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on; written into the JSON."""

    frontends: tuple[str, ...] = FRONTENDS
    folds: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    timing_clips: int = 40
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """The chain for augmented copies (noise 10-20 dB white/pink, tempo 0.9-1.1, pitch +-2, gain +-6 dB)."""
    copies: int = 2
    """Augmented copies of each training clip (besides the clip itself)."""
    test_snr_db: float = 10.0
    quick: bool = False


def classes_of(clips: Sequence[Clip], four: bool) -> tuple[list[Clip], np.ndarray, tuple[str, ...]]:
    """The clips with a label in the task, their class indices and the class names."""
    if four:
        kept = [c for c in clips if c.label4]
        names = tuple(LABELS4)
        return kept, np.array([names.index(c.label4) for c in kept]), names
    names = tuple(CORPUS_LABELS[clips[0].corpus])
    return list(clips), np.array([names.index(c.label) for c in clips]), names


def speaker_cv(store: FeatureStore, name: str, clips: Sequence[Clip], manifest: Manifest, four: bool,
               settings: Settings, train_variants: Sequence[Variant] = (CLEAN,),
               test_variants: Sequence[Variant] = (CLEAN,)) -> dict[str, Any]:
    """Speaker-independent CV: per seed, gender-balanced folds; pooled test predictions per seed.

    Returns a summary per test variant (tag -> summary), plus per-fold accuracies.
    """
    kept, y, names = classes_of(clips, four)
    index = {c.path.stem: i for i, c in enumerate(kept)}
    train_x = [store.matrix(name, kept, v) for v in train_variants]
    test_x = {v.tag: store.matrix(name, kept, v) for v in test_variants}
    runs: dict[str, list[dict[str, float]]] = {v.tag: [] for v in test_variants}
    fold_acc: dict[str, list[float]] = {v.tag: [] for v in test_variants}
    for seed in settings.seeds:
        preds = {v.tag: np.full(len(kept), -1) for v in test_variants}
        for fold in gender_balanced_folds(manifest, settings.folds, seed):
            tr = np.array([index[d] for d in fold.train if d in index])
            te = np.array([index[d] for d in fold.test if d in index])
            xtr = np.vstack([x[tr] for x in train_x])
            ytr = np.tile(y[tr], len(train_x))
            # One model per fold, evaluated on every test variant.
            xte_all = np.vstack([test_x[v.tag][te] for v in test_variants])
            p = fit_predict(xtr, ytr, xte_all, len(names), seed, settings.classifier)
            for j, v in enumerate(test_variants):
                preds[v.tag][te] = p[j * len(te) : (j + 1) * len(te)]
                fold_acc[v.tag].append(round(100.0 * float(np.mean(preds[v.tag][te] == y[te])), 2))
        for v in test_variants:
            assert (preds[v.tag] >= 0).all()
            runs[v.tag].append(scores(y, preds[v.tag]))
    return {tag: {**summary(r), "fold_accuracy": fold_acc[tag], "clips": len(kept), "classes": list(names)}
            for tag, r in runs.items()}


def within_cv(store: FeatureStore, name: str, clips: Sequence[Clip], four: bool, settings: Settings) -> dict[str, Any]:
    """Within-speaker stratified CV (TESS: one speaker)."""
    kept, y, names = classes_of(clips, four)
    x = store.matrix(name, kept)
    runs = []
    for seed in settings.seeds:
        preds = np.full(len(kept), -1)
        for te in stratified_folds([names[i] for i in y], settings.folds, seed):
            tr = np.setdiff1d(np.arange(len(kept)), te)
            preds[te] = fit_predict(x[tr], y[tr], x[te], len(names), seed, settings.classifier)
        runs.append(scores(y, preds))
    return {**summary(runs), "clips": len(kept), "classes": list(names)}


def cross_corpus(store: FeatureStore, name: str, train: Sequence[Clip], test: Sequence[Clip],
                 settings: Settings, normalize_test_on_itself: bool) -> dict[str, Any]:
    """4-class: train on every clip of one corpus, test on every clip of the other."""
    tr, ytr, names = classes_of(train, True)
    te, yte, _ = classes_of(test, True)
    xtr, xte = store.matrix(name, tr), store.matrix(name, te)
    runs = [scores(yte, fit_predict(xtr, ytr, xte, len(names), seed, settings.classifier,
                                    normalize_test_on_itself=normalize_test_on_itself))
            for seed in settings.seeds]
    return {**summary(runs), "train_clips": len(tr), "test_clips": len(te)}


def time_frontends(store: FeatureStore, clips: Sequence[Clip], n: int) -> dict[str, Any]:
    """Median wall and CPU seconds per second of audio over ``n`` clips spread over the corpus, warm."""
    chosen = [clips[i] for i in np.linspace(0, len(clips) - 1, min(n, len(clips))).round().astype(int)]
    audio = [read_audio(c.path) for c in chosen]
    out: dict[str, Any] = {}
    for name, fe in store.frontends.items():
        fe.extract(audio[0])  # warm: first-call allocations, lazy initialisation
        wall, cpu = [], []
        for x in audio:
            t0, c0 = time.perf_counter(), time.process_time()
            fe.extract(x)
            t1, c1 = time.perf_counter(), time.process_time()
            seconds = len(x) / SAMPLE_RATE
            wall.append((t1 - t0) / seconds)
            cpu.append((c1 - c0) / seconds)
        out[name] = {"dim": fe.dim, "ms_per_audio_s_wall": 1000 * float(np.median(wall)),
                     "ms_per_audio_s_cpu": 1000 * float(np.median(cpu)), "clips": len(audio)}
        log.info("timing %s: %.1f ms per audio second (CPU %.1f)", name, out[name]["ms_per_audio_s_wall"],
                 out[name]["ms_per_audio_s_cpu"])
    for name, parts in COMBINED.items():
        if all(p in out for p in parts):
            out[name] = {key: sum(out[p][key] for p in parts) for key in
                         ("dim", "ms_per_audio_s_wall", "ms_per_audio_s_cpu")} | {"clips": len(audio)}
    return out


def run(data_dir: Path, cache: FeatureCache, settings: Settings) -> dict[str, Any]:
    """Every experiment; returns the results dict that :func:`write_results` writes."""
    quick = settings.quick
    log.info("loading clips from %s", data_dir)
    ravdess, ravdess_manifest = load_clips(
        "ravdess", data_dir, limit_per_label=1 if quick else None,
        speakers=("ravdess_01", "ravdess_02", "ravdess_03", "ravdess_04") if quick else None)
    tess, _ = load_clips("tess", data_dir, limit_per_label=2 if quick else None)
    log.info("RAVDESS %d clips, TESS %d clips", len(ravdess), len(tess))
    store = FeatureStore(cache, settings.frontends)
    results: dict[str, Any] = {
        "data": {corpus: {"clips": len(clips), "clips_4class": sum(1 for c in clips if c.label4),
                          "speakers": len({c.speaker for c in clips}),
                          "audio_hours": round(sum(c.duration for c in clips) / 3600, 2)}
                 for corpus, clips in (("ravdess", ravdess), ("tess", tess))},
        "timing": time_frontends(store, ravdess, settings.timing_clips),
    }

    accuracy: dict[str, dict[str, Any]] = {}
    for name in settings.frontends:
        log.info("front end %s: RAVDESS features", name)
        r8 = speaker_cv(store, name, ravdess, ravdess_manifest, False, settings)["clean"]
        r4 = speaker_cv(store, name, ravdess, ravdess_manifest, True, settings)["clean"]
        accuracy[name] = {"ravdess8_speaker_cv": r8, "ravdess4_speaker_cv": r4}
        log.info("front end %s: RAVDESS-8 UAR %.1f, RAVDESS-4 UAR %.1f", name, r8["uar"]["mean"], r4["uar"]["mean"])
        if name in RAVDESS_ONLY:
            continue
        log.info("front end %s: TESS features", name)
        accuracy[name] |= {
            "tess7_within": within_cv(store, name, tess, False, settings),
            "tess4_within": within_cv(store, name, tess, True, settings),
            "ravdess4_to_tess4": cross_corpus(store, name, ravdess, tess, settings, False),
            "tess4_to_ravdess4": cross_corpus(store, name, tess, ravdess, settings, False),
            "ravdess4_to_tess4_corpus_norm": cross_corpus(store, name, ravdess, tess, settings, True),
            "tess4_to_ravdess4_corpus_norm": cross_corpus(store, name, tess, ravdess, settings, True),
        }
        log.info("front end %s: TESS-7 within UAR %.1f, RAVDESS-4 -> TESS-4 UAR %.1f", name,
                 accuracy[name]["tess7_within"]["uar"]["mean"], accuracy[name]["ravdess4_to_tess4"]["uar"]["mean"])
    results["accuracy"] = accuracy

    base = settings.augment
    with_phone = AugmentConfig(**{**asdict(base), "telephone_prob": 0.5})
    copies = range(settings.copies)
    train_conditions = {
        "none": [CLEAN],
        "augmented": [CLEAN, *(augmented(base, c) for c in copies)],
        "telephone": [CLEAN, TELEPHONE],
        "augmented+telephone": [CLEAN, *(augmented(with_phone, c) for c in copies)],
    }
    tests = [CLEAN, TELEPHONE, noisy(settings.test_snr_db, "pink"), noisy(settings.test_snr_db, "speech")]
    augmentation = {}
    for cond, variants in train_conditions.items():
        log.info("augmentation: training %s (%d versions of each training clip)", cond, len(variants))
        augmentation[cond] = speaker_cv(store, "ours", ravdess, ravdess_manifest, True, settings,
                                        train_variants=variants, test_variants=tests)
    results["augmentation"] = augmentation
    results["augmentation_tests"] = [v.tag for v in tests]
    return results


# --------------------------------------------------------------------------- report


CHOICE_MARGIN = 2.0
"""openSMILE must beat ours by more than this many UAR points (and 2 std) on both RAVDESS tasks."""


def choose(accuracy: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The runtime front end by a fixed rule: ``ours`` unless an openSMILE-based one is clearly better.

    "Clearly": UAR higher than ours by more than :data:`CHOICE_MARGIN` points and by more
    than twice the larger seed std, on both RAVDESS 8- and 4-class speaker-independent CV.
    The bar is there because openSMILE's licence forbids commercial use without a paid licence.
    """
    tasks = ("ravdess8_speaker_cv", "ravdess4_speaker_cv")
    margins: dict[str, dict[str, float]] = {}
    better = []
    for name in accuracy:
        if name == "ours" or "ours" not in accuracy:
            continue
        clear = True
        margins[name] = {}
        for task in tasks:
            a, b = accuracy[name][task]["uar"], accuracy["ours"][task]["uar"]
            diff = a["mean"] - b["mean"]
            margins[name][task] = round(diff, 2)
            clear &= diff > max(CHOICE_MARGIN, 2 * max(a["std"], b["std"]))
        if clear:
            better.append(name)
    pick = max(better, key=lambda n: sum(margins[n].values())) if better else "ours"
    return {"frontend": pick, "uar_margin_over_ours": margins, "clearly_better": better,
            "rule": f"ours unless another front end's UAR beats it by > max({CHOICE_MARGIN} points, 2 seed std) "
                    "on both RAVDESS 8- and 4-class speaker-independent CV"}


def _pm(result: dict[str, Any] | None, metric: str) -> str:
    if result is None:
        return "—"
    return f"{result[metric]['mean']:.1f} ± {result[metric]['std']:.1f}"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                            "python": platform.python_version()}
    for package in ("numpy", "soxr", "soundfile", "opensmile"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    info["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return info


LICENCE_NOTE = (
    "openSMILE (the `opensmile` package bundles the SMILExtract library) is distributed under the "
    "audEERING Research License: free for non-commercial purposes (teaching, academic research, personal use) "
    "and for commercial research not tied to product development; any other commercial use needs a paid "
    "licence from audEERING (see the LICENSE in the installed package's dist-info). The runtime is MIT-licensed "
    "and must stay usable commercially, so it may depend on openSMILE only if openSMILE is clearly better."
)

NAMES = {"ours": "ours (numpy, 75)", "egemaps": "eGeMAPSv02 (88)", "compare": "ComParE_2016 (6373)",
         "ours+egemaps": "ours + eGeMAPSv02 (163)"}


def render_markdown(report: dict[str, Any]) -> str:
    s, acc, timing, data = report["settings"], report["accuracy"], report["timing"], report["data"]
    names = [n for n in FRONTENDS if n in acc]
    rav, tess = data["ravdess"], data["tess"]
    lines = [
        "# Acoustic front ends: ours vs openSMILE, and what augmentation buys",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit: `{report['git_commit']}`{' (with uncommitted changes)' if report['git_dirty'] else ''}  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} cores; "
        f"numpy {report['machine']['numpy']}, opensmile {report['machine']['opensmile']}  ",
        f"Run time: {report['wall_s'] / 60:.1f} min" + (" (QUICK RUN: a handful of clips, numbers meaningless)"
                                                         if s["quick"] else ""),
        "",
        f"Data: RAVDESS speech ({rav['speakers']} actors, {rav['clips']} clips, {rav['audio_hours']} h; 4-class = "
        f"neutral, happy, sad, angry: {rav['clips_4class']} clips, calm dropped) and TESS ({tess['speakers']} "
        f"speaker, {tess['clips']} clips, {tess['audio_hours']} h; 4-class: {tess['clips_4class']}) from the shared "
        "data folder. Features on whole clips as "
        "distributed (leading and trailing silence included). Classifier for every front end and condition: "
        f"MLP, one hidden layer of {s['classifier']['hidden']}, dropout {s['classifier']['dropout']}, AdamW lr "
        f"{s['classifier']['lr']} weight decay {s['classifier']['weight_decay']}, {s['classifier']['epochs']} epochs, "
        f"batch {s['classifier']['batch_size']}; inputs standardised on the training fold. "
        f"Figures are mean ± std (ddof 1) over seeds {', '.join(map(str, s['seeds']))}; each seed reshuffles the "
        "folds and the classifier's initialisation, and scores the pooled test predictions of all folds. "
        "WA = weighted accuracy (plain accuracy), UAR = unweighted average recall, in %.",
        "",
        "## (a) Extraction time",
        "",
        f"Single thread (BLAS threads: {report['machine']['blas_threads']}), median over "
        f"{next(iter(timing.values()))['clips']} RAVDESS clips, warm. CPU time counts every thread of the process.",
        "",
        "| front end | dims | ms per audio second (wall) | ms per audio second (CPU) |",
        "|---|---:|---:|---:|",
    ]
    for n in names:
        if n in timing:
            t = timing[n]
            lines.append(f"| {NAMES[n]} | {t['dim']} | {t['ms_per_audio_s_wall']:.1f} "
                         f"| {t['ms_per_audio_s_cpu']:.1f} |")
    lines += [
        "",
        "## (b) Accuracy",
        "",
        f"RAVDESS: speaker-independent, {s['folds']} folds of 4 actors (2 male, 2 female). TESS: one speaker, "
        f"so only within-speaker CV ({s['folds']}-fold, stratified by label) is possible inside it; across speakers "
        "and corpora: 4-class, train on all of one corpus, test on all of the other.",
        "",
        "| front end | RAVDESS-8 WA | RAVDESS-8 UAR | RAVDESS-4 WA | RAVDESS-4 UAR | TESS-7 WA (within) "
        "| TESS-4 WA (within) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        a = acc[n]
        cells = [_pm(a["ravdess8_speaker_cv"], "accuracy"), _pm(a["ravdess8_speaker_cv"], "uar"),
                 _pm(a["ravdess4_speaker_cv"], "accuracy"), _pm(a["ravdess4_speaker_cv"], "uar"),
                 _pm(a.get("tess7_within"), "accuracy"), _pm(a.get("tess4_within"), "accuracy")]
        lines.append(f"| {NAMES[n]} | " + " | ".join(cells) + " |")
    if any(n in RAVDESS_ONLY for n in names):
        lines += ["", "—: not measured. ComParE_2016's 6373 inputs make each classifier fit about 30x dearer, so it "
                  "is measured on the RAVDESS speaker-independent tasks only."]
    lines += [
        "",
        "Across corpora, 4-class UAR. *train stats*: test features standardised with the training corpus's "
        "statistics (the protocol above); *corpus stats*: each corpus standardised with its own statistics "
        "(uses the test corpus's unlabeled features, a common cross-corpus normalisation).",
        "",
        "| front end | RAVDESS→TESS (train stats) | TESS→RAVDESS (train stats) | RAVDESS→TESS (corpus stats) "
        "| TESS→RAVDESS (corpus stats) |",
        "|---|---:|---:|---:|---:|",
    ]
    for n in names:
        a = acc[n]
        if "ravdess4_to_tess4" not in a:
            continue
        lines.append(f"| {NAMES[n]} | {_pm(a['ravdess4_to_tess4'], 'uar')} | {_pm(a['tess4_to_ravdess4'], 'uar')} "
                     f"| {_pm(a['ravdess4_to_tess4_corpus_norm'], 'uar')} "
                     f"| {_pm(a['tess4_to_ravdess4_corpus_norm'], 'uar')} |")
    aug = report["augmentation"]
    tags = report["augmentation_tests"]
    heads = {"clean": "clean", "telephone": "telephone", f"noise-pink-{s['test_snr_db']:g}dB": "pink noise",
             f"noise-speech-{s['test_snr_db']:g}dB": "speech-shaped noise"}
    snr = s["test_snr_db"]
    cfg = s["augment"]
    lines += [
        "",
        "## (c) What augmentation buys (ours, RAVDESS 4-class, speaker-independent)",
        "",
        f"Training sets: *none*: the clips; *augmented*: the clips plus {s['copies']} "
        f"cop{'y' if s['copies'] == 1 else 'ies'} of each through a random "
        f"chain (each step with probability {cfg['noise_prob']}: noise {cfg['snr_db'][0]:g}-{cfg['snr_db'][1]:g} dB "
        f"SNR, {' or '.join(cfg['noise_kinds'])}; tempo {cfg['tempo'][0]:g}-{cfg['tempo'][1]:g} (WSOLA, pitch kept); "
        f"pitch {cfg['pitch_semitones'][0]:g} to +{cfg['pitch_semitones'][1]:g} semitones; gain "
        f"{cfg['gain_db'][0]:g} to +{cfg['gain_db'][1]:g} dB); *telephone*: the clips plus a telephone-band copy "
        "(8 kHz, 300-3400 Hz); *augmented+telephone*: the augmented chain with a telephone band on half the copies. "
        f"Test audio, one model per fold scored on four versions of the test clips: clean; telephone band; pink "
        f"noise at {snr:g} dB SNR (a kind seen in training); speech-shaped noise at {snr:g} dB SNR (noise with the "
        "clip's own long-term spectrum, a kind not seen in training). "
        "Augmented copies are fixed per clip (seeded by the clip), so seeds vary folds and initialisation only.",
        "",
        "| training | " + " | ".join(f"{heads.get(t, t)} WA | {heads.get(t, t)} UAR" for t in tags) + " |",
        "|---|" + "---:|" * (2 * len(tags)),
    ]
    for cond, by_test in aug.items():
        lines.append(f"| {cond} | " + " | ".join(f"{_pm(by_test[t], 'accuracy')} | {_pm(by_test[t], 'uar')}"
                                                for t in tags) + " |")
    lines += ["", "## Runtime front end", "", _choice_paragraph(report), ""]
    return "\n".join(lines)


def _choice_paragraph(report: dict[str, Any]) -> str:
    choice, acc, timing = report["choice"], report["accuracy"], report["timing"]
    parts = [f"**Choice: {choice['frontend']}.** Rule, fixed before the run: {choice['rule']}."]
    for name, m in choice["uar_margin_over_ours"].items():
        parts.append(f"{NAMES[name]} vs ours: UAR {m['ravdess8_speaker_cv']:+.1f} points (8-class), "
                     f"{m['ravdess4_speaker_cv']:+.1f} (4-class).")
    if "ours" in timing and "egemaps" in timing:
        ratio = timing["egemaps"]["ms_per_audio_s_cpu"] / max(timing["ours"]["ms_per_audio_s_cpu"], 1e-9)
        parts.append(f"eGeMAPS costs {ratio:.1f}x our CPU time per audio second.")
    if "ours" in acc:
        a = acc["ours"]
        parts.append(f"Ours reaches {a['ravdess8_speaker_cv']['accuracy']['mean']:.1f}% WA on RAVDESS 8-class "
                     f"and {a['ravdess4_speaker_cv']['accuracy']['mean']:.1f}% on 4-class, speaker-independent.")
    parts.append(LICENCE_NOTE)
    if choice["frontend"] == "ours":
        parts.append("So the runtime keeps its own numpy front end: no openSMILE dependency, the same code in "
                     "training and live use, and no licence restriction on commercial deployments.")
    else:
        parts.append(f"{NAMES[choice['frontend']]} is clearly better here; adopting it would make the runtime "
                     "depend on openSMILE and restrict commercial deployments to holders of an audEERING licence, "
                     "a decision for the maintainers.")
    return " ".join(parts)


def write_results(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "frontends.json", out_dir / "frontends.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.frontends", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny run (4 RAVDESS actors, a few clips per label, 1 seed, 2 folds, no ComParE)")
    p.add_argument("--data", type=Path, default=None,
                   help="shared data folder (default: $REALTIME_SER_SHARED_DATA or ../shared/data)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where to write frontends.json and .md (default: training/results; "
                        "with --quick a temporary folder)")
    p.add_argument("--cache", type=Path, default=None,
                   help="feature cache root (default: $REALTIME_SER_CACHE/features or ~/.cache/realtime-ser/features)")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only rewrite frontends.md beside an existing frontends.json (no experiments)")
    p.add_argument("--frontends", default=None,
                   help=f"comma-separated subset of {', '.join(FRONTENDS)} (default: all; --quick: without compare)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        args.render.with_suffix(".md").write_text(render_markdown(report), encoding="utf-8")
        return 0
    data_dir = args.data or shared_data_dir()
    missing = [c for c in ("ravdess", "tess") if not (data_dir / c / "manifest.csv").is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found in {data_dir} (give --data)", file=sys.stderr)
        return 2
    if args.frontends:
        names = tuple(n.strip() for n in args.frontends.split(",") if n.strip())
        unknown = [n for n in names if n not in FRONTENDS]
        if unknown or not names:
            print(f"error: unknown front end(s) {', '.join(unknown)}; allowed: {', '.join(FRONTENDS)}",
                  file=sys.stderr)
            return 2
    else:
        names = tuple(n for n in FRONTENDS if not (args.quick and n == "compare"))
    if not opensmile_available() and any(n != "ours" for n in names):
        print("error: the opensmile package is not installed (pip install opensmile), or use --frontends ours",
              file=sys.stderr)
        return 2
    if "ours" not in names:
        names = ("ours", *names)  # (c) and the choice need it
    settings = Settings(frontends=names, quick=args.quick)
    if args.quick:
        settings = Settings(frontends=names, folds=2, seeds=(0,), timing_clips=2, copies=1, quick=True,
                            classifier=ClassifierConfig(epochs=5))
    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "realtime-ser-frontends-quick" if args.quick
                               else REPO / "training" / "results")
    started = time.monotonic()
    results = run(data_dir, FeatureCache(args.cache), settings)
    report = {
        "command": " ".join(["python -m training.frontends", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "settings": asdict(settings),
        "wall_s": round(time.monotonic() - started, 1),
        **results,
        "choice": choose(results["accuracy"]),
    }
    json_path, md_path = write_results(report, out_dir)
    log.info("wrote %s and %s (%.1f min); runtime front end: %s", json_path, md_path, report["wall_s"] / 60,
             report["choice"]["frontend"])
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
