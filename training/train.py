"""Training and cross-validated experiments, driven by a TOML config.

A config (see ``configs/train/*.toml``) has the sections ``[data]``, ``[features]``,
``[model]`` (:class:`~training.models.ModelConfig`), ``[train]`` (:class:`TrainConfig`),
``[protocol]`` (:class:`ProtocolConfig`) and an optional ``[grid]`` whose keys are
dotted settings (``"model.causal" = [false, true]``): every combination is one
*variant*, run on every fold with every seed. Each run writes into
``runs/<name>/``: ``config.resolved.json``, ``metrics.json`` (every fold and seed,
and mean ± std per variant) and ``summary.md``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import json
import logging
import random
import subprocess
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from realtime_ser.emotion.model import SHIFT

from .augment import AugmentConfig
from .calibration import fit_temperature
from .data import (
    COMMON_LABELS,
    CORPUS_LABELS,
    CORPUS_OF,
    REPO,
    ConfigError,
    LabelSpec,
    Manifest,
    Utterance,
    convert,
    read_manifest,
)
from .features import AugmentSettings, FeatureExtractor, FeatureSettings, main_speech_columns
from .folds import Fold, check_disjoint, session_folds, speaker_folds, speaker_script_folds, split_fold
from .metrics import SUMMARY_KEYS, classification_report, format_pct, mean_std
from .models import EmotionModel, ModelConfig, load_unimodal_into

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config


VAL_BY = ("speaker", "speaker_per_corpus", "dialogue")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 8
    """Dialogues per batch."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    """Stop after this many epochs without a better validation UAR (0: no early stopping)."""
    val_fraction: float = 0.1
    """Share of the training dialogues held out to choose the epoch and fit the temperatures."""
    val_by: str = "speaker"
    """``speaker``: the held-out share are dialogues of speakers (voices: ``audio_actor`` where the
    audio is another speaker's) that training never sees, so the temperatures are fitted on
    unseen voices, as the model will meet them; ``speaker_per_corpus``: the same, but the share
    is taken from each corpus's voices (a corpus of fewer than 1 / ``val_fraction`` voices, such
    as TESS's two, gives none), so which corpus a seed happens to hold out does not set the
    epoch and the temperatures; ``dialogue``: random dialogues."""
    calibrate: bool = True
    """Fit a temperature per output on the held-out share after training (confidences that mean
    what they say); accuracy is unchanged."""
    calibrate_augmented: bool = False
    """Fit the temperatures on the held-out turns and their augmented copies (``augment.copies``: noise,
    telephone band, tempo, pitch, gain) alike, not on the clean turns alone: the model then also
    allows for voices and channels further from its training (:func:`calibration_dialogues`)."""
    calibrate_balance: bool = False
    """Each corpus's held-out turns weigh alike in the temperature fit (a corpus: ``audio_corpus``,
    ``voice_corpus`` or ``corpus``), so a corpus with many held-out voices does not set the
    temperature for all; without it every turn weighs alike."""
    weight_average: float = 0.0
    """Decay of a moving average of the weights, updated after every step (0: off; e.g. 0.99). With it, the
    epoch is chosen and the temperatures fitted on the averaged weights, and those are the model: one
    model, as cheap to run, whose weights smooth over the steps' noise (:class:`WeightAverage`)."""
    class_weighted: bool = False
    loss: str = "single"
    """``single`` (fused loss only) or ``perspective`` (fused + one loss per modality)."""
    perspective_weight: float = 1.0
    strategy: str = "cold"
    """Fusion training: ``cold`` (all from scratch), ``frozen`` (pre-trained unimodal branches,
    frozen), ``warm`` (pre-trained unimodal branches, fine-tuned)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    ensemble: int = 1
    """Models an export averages: one per seed, the first ``ensemble`` of ``seeds``, exported as
    one graph whose probabilities are the normalized geometric mean of theirs (cross-validation
    still scores each seed alone; ``python -m training.seed_ensemble --combine logprobs`` scores
    seeds averaged as the export does)."""
    threads: int = 1
    context_turns: int = 20
    """Context window of an exported causal model (written to its card; the runtime and the
    evaluator score turn n from the last ``context_turns`` turns up to n)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.loss not in ("single", "perspective"):
            raise ConfigError(f"train.loss must be 'single' or 'perspective', got {self.loss!r}")
        if self.strategy not in ("cold", "frozen", "warm"):
            raise ConfigError(f"train.strategy must be 'cold', 'frozen' or 'warm', got {self.strategy!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("train.val_fraction must be in [0, 1)")
        if self.val_by not in VAL_BY:
            raise ConfigError(f"train.val_by must be one of {', '.join(map(repr, VAL_BY))}, got {self.val_by!r}")
        if not 0 <= self.weight_average < 1:
            raise ConfigError(f"train.weight_average must be in [0, 1) (0: off; e.g. 0.99), got {self.weight_average}")
        if not 1 <= self.ensemble <= len(self.seeds):
            raise ConfigError(f"train.ensemble must be 1..{len(self.seeds)} (the number of train.seeds, "
                              f"{list(self.seeds)}: an export averages one model per seed), got {self.ensemble}")


@dataclass(frozen=True)
class ProtocolConfig:
    folds: str = "session"
    """``session`` (leave one session out), ``speaker`` (leave one speaker group out, or ``k``
    folds of groups), ``speaker_script`` (also script-disjoint), ``split`` (the corpus's own
    ``split`` column: test = ``test_split``), ``random`` (``k`` folds of shuffled dialogues: within
    speaker, for single-speaker corpora), ``cross_corpus`` (train on the ``data.train_only``
    manifests only, test on all of the other), ``group`` (leave one value of the manifest column
    ``group_column`` out: e.g. a voice group with the IEMOCAP session it voices), ``all`` (train on
    everything, no test: for export)."""
    k: int = 0
    """For speaker folds: number of folds (0 = one per speaker group)."""
    fold_seed: int = 0
    test_split: str = "test"
    split_test_by_script: bool = False
    only_folds: tuple[str, ...] = ()
    """Run only the folds with these names (empty: all)."""
    group_column: str = "group"
    """For ``folds = "group"``: the manifest column whose values are left out one at a time."""
    report_by: tuple[str, ...] = ()
    """Manifest columns whose values each get their own report of the test turns too (e.g. the
    corpus of the voice, or whether the transcript was typed or recognized); also
    ``emotion_change`` (:data:`EMOTION_CHANGE`), which the trainer derives from the labels."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "only_folds", tuple(self.only_folds))
        object.__setattr__(self, "report_by", tuple(self.report_by))
        allowed = ("session", "speaker", "speaker_script", "split", "random", "cross_corpus", "group", "all")
        if self.folds not in allowed:
            raise ConfigError(f"protocol.folds must be one of {allowed}, got {self.folds!r}")


@dataclass(frozen=True)
class DataConfig:
    manifests: tuple[str, ...] = ()
    """Manifest CSV paths, or corpus names (converted on the fly from the shared data)."""
    train_only: tuple[str, ...] = ()
    """Manifests (same spelling as in ``manifests``) whose dialogues only ever go to training."""
    labels: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
    label_mode: str = "4"
    """Converters' label mode for corpus names: ``4``, ``all`` (each corpus's own labels) or
    ``common`` (the corpora's labels under one spelling, :data:`~training.data.COMMON_LABELS`,
    keeping those in ``labels``: e.g. RAVDESS's 8 classes with CREMA-D's and TESS's clips of them)."""
    calm: str = ""
    """RAVDESS: map calm to this label ('' = drop)."""

    def __post_init__(self) -> None:
        for key in ("manifests", "train_only", "labels"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if not self.manifests:
            raise ConfigError("data.manifests is empty: name at least one manifest CSV or corpus")
        unknown = [m for m in self.train_only if m not in self.manifests]
        if unknown:
            raise ConfigError(f"data.train_only names {unknown}, which are not in data.manifests")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: DataConfig
    features: FeatureSettings = field(default_factory=FeatureSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "data": asdict(self.data),
            "features": asdict(self.features),
            "model": self.model.to_dict(),
            "train": asdict(self.train),
            "protocol": asdict(self.protocol),
            "augment": self.augment.to_dict(),
            "grid": self.grid,
        }


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "features": FeatureSettings, "model": ModelConfig,
    "train": TrainConfig, "protocol": ProtocolConfig, "augment": AugmentSettings,
}


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    if cls is AugmentSettings:
        try:
            return AugmentSettings.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[{where}]: {exc}") from None
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {unknown}; known: {sorted(known)}")
    if cls is ModelConfig:
        return ModelConfig.from_dict(values)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    raw = copy.deepcopy(raw)
    top = {"name", "description", "grid", *(_SECTIONS)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {sorted(top)}")
    if "name" not in raw:
        raise ConfigError("the config needs a 'name'")
    grid = raw.get("grid", {})
    for key, values in grid.items():
        section, _, name = key.partition(".")
        if section not in _SECTIONS or not name:
            raise ConfigError(f"[grid] key {key!r} must be '<section>.<key>' with section in {sorted(_SECTIONS)}")
        allowed = {f.name for f in fields(_SECTIONS[section])}
        if section == "augment":
            allowed = {"copies", "seed"} | {f.name for f in fields(AugmentConfig)}
        if name not in allowed:
            raise ConfigError(f"[grid] key {key!r}: {section} has no setting {name!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"[grid] {key!r} must be a non-empty list")
    # The classes are named once, in [data]; [model] may repeat them (they must then agree).
    if "labels" in raw.get("data", {}):
        raw.setdefault("model", {}).setdefault("labels", raw["data"]["labels"])
    try:
        sections = {s: _section(cls, raw.get(s, {}), s) for s, cls in _SECTIONS.items()}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ExperimentConfig(name=raw["name"], description=raw.get("description", ""), grid=grid, **sections)


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a TOML config and apply ``section.key=value`` overrides (values parsed as TOML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, _, name = key.strip().partition(".")
        if not sep or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        if section == "grid":
            raw.setdefault("grid", {})[name] = parsed
        else:
            raw.setdefault(section, {})[name] = parsed
            # A value given on the command line pins a grid key: that setting is no longer varied.
            raw.get("grid", {}).pop(f"{section}.{name}", None)
    return config_from_dict(raw)


def variants(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """Every combination of the grid, as (readable name, config without grid)."""
    if not cfg.grid:
        return [("base", replace(cfg, grid={}))]
    keys = list(cfg.grid)
    out = []
    for combo in itertools.product(*(cfg.grid[k] for k in keys)):
        raw = cfg.to_dict()
        raw["grid"] = {}
        for key, value in zip(keys, combo, strict=True):
            section, _, name = key.partition(".")
            raw[section][name] = value
        name = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in zip(keys, combo, strict=True))
        out.append((name, config_from_dict(raw)))
    return out


# --------------------------------------------------------------------------- data


def runs_dir() -> Path:
    return REPO / "runs"


def resolve_manifest(spec: str, data: DataConfig) -> Manifest:
    """A manifest path, or a corpus name converted into ``runs/manifests/`` (reused when present)."""
    path = Path(spec)
    if path.suffix == ".csv":
        if not path.is_absolute():
            path = REPO / path
        return read_manifest(path, labels=data.labels)
    if spec == "paired":
        from .pairing import build_paired

        out = runs_dir() / "manifests" / "paired-iemocap-ravdess.csv"
        if not out.is_file():
            text = resolve_manifest("iemocap_text", replace(data, calm=""))
            build_paired(text.path, out)
        return read_manifest(out, labels=data.labels)
    labels: LabelSpec = data.label_mode
    suffix = f"-{data.label_mode}" + (f"-calm-{data.calm}" if data.calm else "")
    if data.label_mode == "common":
        corpus = CORPUS_OF.get(spec, spec)
        if corpus not in CORPUS_LABELS:
            raise ConfigError(f"data.label_mode='common' needs corpus names, got {spec!r}")
        labels = {lab: COMMON_LABELS.get(lab, lab) for lab in CORPUS_LABELS[corpus]
                  if COMMON_LABELS.get(lab, lab) in data.labels}
        suffix += "-" + "-".join(sorted(set(labels.values())))
    out = runs_dir() / "manifests" / f"{spec}{suffix}.csv"
    if out.is_file():
        return read_manifest(out, labels=data.labels)
    return convert(spec, None, out, labels=labels, calm=data.calm or None)


@dataclass
class Dialogue:
    """Feature arrays of one dialogue, ready for batching."""

    id: str
    audio: np.ndarray | None  # (T, Da)
    text: np.ndarray | None  # (T, Dt)
    y: np.ndarray  # (T,) class index, -1 for context turns
    utterances: list[Utterance]
    train_only: bool = False
    audio_copies: np.ndarray | None = None
    """(copies, T, Da): augmented audio features, drawn from in training only."""
    audio_shift: np.ndarray | None = None
    """(T, Da): each turn's speaker shift (:func:`speaker_normalized`), taken from its audio vector and
    its copies where the classifier reads them, not where the audio gate does."""


class DialogueSet:
    """All dialogues of the configured manifests with their features, addressable by id."""

    def __init__(self, cfg: ExperimentConfig, extractor: FeatureExtractor | None = None) -> None:
        self.cfg = cfg
        self.labels = tuple(cfg.model.labels)
        if tuple(cfg.data.labels) != self.labels:
            raise ConfigError(f"model.labels {self.labels} must equal data.labels {cfg.data.labels}")
        self.extractor = extractor or FeatureExtractor(cfg.features)
        self.manifests: list[tuple[str, Manifest]] = [(s, resolve_manifest(s, cfg.data)) for s in cfg.data.manifests]
        self.dialogues: dict[str, Dialogue] = {}
        index = {lab: i for i, lab in enumerate(self.labels)}
        mods = cfg.model.modalities
        for spec, manifest in self.manifests:
            uts = manifest.utterances
            text = self.extractor.text([u.text for u in uts]) if "text" in mods else None
            audio = self.extractor.audio(manifest, uts) if "audio" in mods else None
            copies = None
            if audio is not None and cfg.augment.copies > 0:
                copies = self.extractor.audio_copies(manifest, uts, cfg.augment, clean=audio)
            pos = 0
            for d in manifest.dialogues():
                n = len(d)
                did = d[0].dialogue_id
                if did in self.dialogues:
                    raise ConfigError(f"dialogue id {did!r} occurs in two manifests; ids must be unique")
                self.dialogues[did] = Dialogue(
                    did,
                    audio[pos : pos + n] if audio is not None else None,
                    text[pos : pos + n] if text is not None else None,
                    np.array([index[u.label] if u.label else -1 for u in d], dtype=np.int64),
                    d,
                    train_only=spec in cfg.data.train_only,
                    audio_copies=copies[:, pos : pos + n] if copies is not None else None,
                )
                pos += n

    def with_text(self, extractor: FeatureExtractor) -> DialogueSet:
        """A copy whose text features come from ``extractor`` (e.g. a fold's fine-tuned encoder)."""
        other = copy.copy(self)
        other.extractor = extractor
        other.dialogues = {}
        for _spec, manifest in self.manifests:
            uts = manifest.utterances
            text = extractor.text([u.text for u in uts])
            pos = 0
            for d in manifest.dialogues():
                n = len(d)
                other.dialogues[d[0].dialogue_id] = replace(self.dialogues[d[0].dialogue_id], text=text[pos : pos + n])
                pos += n
        return other

    def fold_text(self, fold: Fold) -> DialogueSet:
        """With ``features.text_finetune``: this set with text features from an encoder fine-tuned on the
        fold's training lines only (cached); otherwise this set."""
        fs = self.cfg.features
        if not fs.text_finetune or "text" not in self.cfg.model.modalities:
            return self
        from .text_finetune import encoder_for, extra_lines

        column, _, value = fs.text_finetune_where.partition("=")
        texts, labels = [], []
        for d in fold.train:
            for u in self.dialogues[d].utterances:
                if u.labeled and u.text.strip() and (not column or u.meta(column) == value):
                    texts.append(u.text)
                    labels.append(u.label)
        et, el = extra_lines(fs.text_extra, self.labels)
        name = encoder_for(texts + et, labels + el, self.labels)
        settings = replace(fs, text_encoder_name=name, text_encoder_dir="")
        return self.with_text(FeatureExtractor(settings, self.extractor.cache, self.extractor.pipeline))

    def folds(self) -> list[Fold]:
        p = self.cfg.protocol
        evaluated = [(s, m) for s, m in self.manifests if s not in self.cfg.data.train_only]
        extra_train = tuple(d for d in self.dialogues.values() if d.train_only)
        if p.folds == "all":
            return [Fold("all", tuple(self.dialogues), ())]
        if len(evaluated) != 1:
            raise ConfigError("folds are made on exactly one manifest; list the others in data.train_only")
        manifest = evaluated[0][1]
        if p.folds == "cross_corpus":
            if not extra_train:
                raise ConfigError("protocol.folds='cross_corpus' trains on data.train_only, which is empty")
            return [Fold(f"train {'+'.join(self.cfg.data.train_only)}, test {evaluated[0][0]}",
                         tuple(d.id for d in extra_train), tuple(manifest.dialogue_ids()))]
        if p.folds == "random":
            ids = manifest.dialogue_ids()
            random.Random(p.fold_seed).shuffle(ids)
            k = p.k or 5
            folds = [Fold(f"random {i + 1}/{k}", tuple(d for j, d in enumerate(ids) if j % k != i),
                          tuple(d for j, d in enumerate(ids) if j % k == i)) for i in range(k)]
            by: tuple[str, ...] = ()
        elif p.folds == "session":
            folds = session_folds(manifest)
            by = ("session",)
        elif p.folds == "group":
            values = sorted({u.meta(p.group_column) for u in manifest.utterances})
            if len(values) < 2 or "" in values:
                raise ConfigError(f"protocol.folds='group' needs a column {p.group_column!r} with at least two "
                                  f"values on every row; found {values[:5]}")
            folds = [split_fold(manifest, test=v, column=p.group_column) for v in values]
            by = (p.group_column, "speaker")
        elif p.folds == "speaker":
            folds = speaker_folds(manifest, k=p.k or None, seed=p.fold_seed)
            by = ("speaker",)
        elif p.folds == "speaker_script":
            folds = speaker_script_folds(manifest, k=p.k or None, seed=p.fold_seed,
                                         split_test_by_script=p.split_test_by_script)
            by = ("speaker", "script_id")
        else:
            folds = [split_fold(manifest, test=p.test_split)]
            by = ()
        for f in folds:
            check_disjoint(manifest, f, by=by)
        if p.only_folds:
            folds = [f for f in folds if f.name in p.only_folds]
            if not folds:
                raise ConfigError(f"protocol.only_folds {p.only_folds} matches no fold")
        extra = tuple(d.id for d in extra_train)
        return [Fold(f.name, f.train + extra, f.test) for f in folds]


# --------------------------------------------------------------------------- batching


def batch(dialogues: Sequence[Dialogue], modalities: Sequence[str],
          rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Padded tensors of ``dialogues``; with ``rng`` (training), each turn's audio is drawn from its
    clean and augmented features."""
    t = max(len(d.y) for d in dialogues)
    b = len(dialogues)
    out: dict[str, torch.Tensor] = {}
    for m in modalities:
        dim = getattr(dialogues[0], m).shape[1]
        x = np.zeros((b, t, dim), dtype=np.float32)
        for i, d in enumerate(dialogues):
            x[i, : len(d.y)] = getattr(d, m)
            if m == "audio" and rng is not None and d.audio_copies is not None:
                pick = rng.integers(0, len(d.audio_copies) + 1, size=len(d.y))
                turns = np.flatnonzero(pick > 0)
                x[i, turns] = d.audio_copies[pick[turns] - 1, turns]
        out[m] = torch.from_numpy(x)
    if "audio" in modalities and any(d.audio_shift is not None for d in dialogues):
        shift = np.zeros((b, t, out["audio"].shape[-1]), dtype=np.float32)
        for i, d in enumerate(dialogues):
            if d.audio_shift is not None:
                shift[i, : len(d.y)] = d.audio_shift
        out[SHIFT] = torch.from_numpy(shift)
    y = np.full((b, t), -1, dtype=np.int64)
    mask = np.zeros((b, t), dtype=bool)
    for i, d in enumerate(dialogues):
        y[i, : len(d.y)] = d.y
        mask[i, : len(d.y)] = True
    out["y"] = torch.from_numpy(y)
    out["mask"] = torch.from_numpy(mask)
    return out


def _forward(model: EmotionModel, b: dict[str, torch.Tensor], calibrated: bool = False) -> dict[str, torch.Tensor]:
    return model(b.get("audio"), b.get("text"), b["mask"], calibrated=calibrated, audio_shift=b.get(SHIFT))


def predict(model: EmotionModel, dialogues: Sequence[Dialogue], batch_size: int = 16,
            calibrated: bool = True, raw: bool = False) -> dict[str, np.ndarray]:
    """Class probabilities of every labeled turn (concatenated in dialogue order), per output
    (logits instead with ``raw``); ``reliability``: the audio gate's weight of each turn."""
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    ys = []
    with torch.no_grad():
        for i in range(0, len(dialogues), batch_size):
            b = batch(dialogues[i : i + batch_size], model.cfg.modalities)
            res = _forward(model, b, calibrated=calibrated)
            keep = b["y"] >= 0
            ys.append(b["y"][keep].numpy())
            for k, logits in res.items():
                if k == "reliability":
                    outs.setdefault(k, []).append(logits[keep].numpy())
                else:
                    value = logits if raw else torch.softmax(logits, -1)
                    outs.setdefault(k, []).append(value[keep].numpy())
    result = {k: np.concatenate(v) for k, v in outs.items()}
    result["y"] = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return result


# --------------------------------------------------------------------------- training


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _class_weights(dialogues: Sequence[Dialogue], n: int) -> torch.Tensor:
    counts = np.bincount(np.concatenate([d.y[d.y >= 0] for d in dialogues]), minlength=n).astype(np.float64)
    w = counts.sum() / np.maximum(counts, 1) / n
    return torch.tensor(w, dtype=torch.float32)


def _normalize(model: EmotionModel, dialogues: Sequence[Dialogue]) -> None:
    """Feature standardization (and the audio gate's statistics) from the clean training features."""
    for m in model.cfg.modalities:
        x = np.concatenate([getattr(d, m) for d in dialogues])
        # of what the classifier reads: a speaker-shifted vector where there is a shift
        read = x
        if m == "audio" and model.cfg.speaker_shift:
            read = np.concatenate([a if (a := d.audio) is None or d.audio_shift is None else a - d.audio_shift
                                   for d in dialogues])
        model.set_normalization(m, torch.from_numpy(read.mean(0)), torch.from_numpy(read.std(0)))
        if m == "audio" and model.cfg.audio_gate:
            # The gate reads the raw vectors. Its bank holds the augmented copies too: noisy and
            # telephone speech of known kinds of voices is not "unlike anything heard".
            g = model.gate_mean.shape[0]  # the leading values it reads
            head = x[:, :g]
            model.gate_mean.copy_(torch.from_numpy(head.mean(0)))
            model.gate_std.copy_(torch.from_numpy(head.std(0)).clamp(min=1e-6))
            copies = [c[:, d.y >= 0, :g].reshape(-1, g) for d in dialogues if (c := d.audio_copies) is not None]
            every = np.concatenate([head, *copies]) if copies else head
            model.gate.fit((torch.from_numpy(every) - model.gate_mean) / model.gate_std)


def speaker_normalized(dialogues: Sequence[Dialogue], mean: np.ndarray, shrink: float, seed: int
                       ) -> list[Dialogue]:
    """Speaker-adaptive audio vectors (:class:`realtime_ser.emotion.speaker.SpeakerNorm`, as the
    runtime computes them): each utterance's vector (and its augmented copies) shifted by the
    running mean of its voice's *earlier* utterances, shrunk towards ``mean``.

    "Earlier": within a dialogue of several turns, the turns before, per voice (a live session);
    clips that are dialogues of their own are taken as one session per voice, in an order drawn
    with ``seed``. Only the clean vectors feed the running means.
    """
    from realtime_ser.emotion.speaker import SpeakerNorm

    rng = np.random.default_rng(seed)
    out = list(dialogues)
    singles: dict[str, list[int]] = {}
    for i, d in enumerate(out):
        if d.audio is None:
            continue
        if len(d.utterances) == 1:
            singles.setdefault(_voice_of(d.utterances[0]), []).append(i)
            continue
        norm = SpeakerNorm(mean, shrink)
        shift = np.zeros_like(d.audio)
        for t, u in enumerate(d.utterances):
            shift[t] = norm.step(_voice_of(u), d.audio[t])
        out[i] = replace(d, audio_shift=shift)
    for v in sorted(singles):
        norm = SpeakerNorm(mean, shrink)
        for j in rng.permutation(len(singles[v])):
            i = singles[v][j]
            d = out[i]
            assert d.audio is not None
            out[i] = replace(d, audio_shift=norm.step(v, d.audio[0])[None].astype(d.audio.dtype))
    return out


def _voice_of(u: Utterance) -> str:
    return u.meta("audio_actor") or u.speaker


def _voices(d: Dialogue) -> set[str]:
    """Who is heard in a dialogue: the audio actors where the audio is another speaker's, else the speakers."""
    actors = {u.meta("audio_actor") for u in d.utterances if u.meta("audio_actor")}
    return actors or {s for u in d.utterances for s in u.speakers}


def _voice_corpus(u: Utterance) -> str:
    """The corpus of an utterance's voice: ``audio_corpus`` where the audio is another speaker's, else
    ``voice_corpus`` or ``corpus``."""
    return u.meta("audio_corpus") or u.meta("voice_corpus") or u.meta("corpus")


def _voice_corpora(dialogues: Sequence[Dialogue]) -> dict[str, str]:
    """Voice -> the corpus it comes from (``audio_corpus`` where the audio is another speaker's)."""
    out: dict[str, str] = {}
    for d in dialogues:
        for u in d.utterances:
            actor = u.meta("audio_actor")
            if actor:
                out.setdefault(actor, _voice_corpus(u))
            else:
                for s in u.speakers:
                    out.setdefault(s, u.meta("corpus") or "")
    return out


def held_out_voices(corpora: dict[str, list[str]], fraction: float, rng: random.Random) -> set[str]:
    """``fraction`` of each corpus's voices, rounded (none of a corpus of two voices at 0.1), drawn
    corpus by corpus in the mapping's order."""
    chosen: set[str] = set()
    for voices in corpora.values():
        drawn = list(voices)
        rng.shuffle(drawn)
        chosen.update(drawn[: int(round(fraction * len(drawn)))])
    return chosen


def validation_split(train: Sequence[Dialogue], fraction: float, by: str, rng: random.Random
                     ) -> tuple[list[Dialogue], list[Dialogue]]:
    """(fit, validation): ``fraction`` of the dialogues held out, by speaker (voices training never
    hears; dialogues mixing held-out and training voices are left out of both), by speaker taken
    from each corpus alike (``speaker_per_corpus``: ``fraction`` of each corpus's voices, rounded),
    or by dialogue. Falls back to dialogues when the speakers cannot be split (a single voice, say)."""
    order = list(train)
    rng.shuffle(order)
    n_val = int(round(fraction * len(order)))
    if n_val == 0:
        return order, []
    if by == "speaker_per_corpus":
        corpora: dict[str, list[str]] = {}
        for v, c in sorted(_voice_corpora(order).items()):
            corpora.setdefault(c, []).append(v)
        chosen = held_out_voices({c: corpora[c] for c in sorted(corpora)}, fraction, rng)
        val = [d for d in order if _voices(d) <= chosen]
        fit = [d for d in order if not _voices(d) & chosen]
        if val and len(fit) >= len(order) // 2:
            return fit, val
        by = "speaker"
    if by == "speaker":
        voices = sorted({v for d in order for v in _voices(d)})
        rng.shuffle(voices)
        held: set[str] = set()
        for v in voices:
            held.add(v)
            val = [d for d in order if _voices(d) <= held]
            if len(val) >= n_val:
                fit = [d for d in order if not _voices(d) & held]
                if fit and len(fit) >= len(order) // 2:
                    return fit, val
                break
    return order[n_val:], order[:n_val]


def calibration_dialogues(val: Sequence[Dialogue], augmented: bool) -> list[Dialogue]:
    """The dialogues the temperatures are fitted on: the held-out ones, and with ``augmented`` each of
    them once more per augmented copy of its audio (``train.calibrate_augmented``)."""
    out = list(val)
    if augmented:
        out += [replace(d, audio=d.audio_copies[c], audio_copies=None) for d in val if d.audio_copies is not None
                for c in range(len(d.audio_copies))]
    return out


def turn_corpora(d: Dialogue) -> list[str]:
    """The corpus of each labeled turn's voice (:func:`_voice_corpus`), in order, as :func:`predict` lists
    the turns."""
    return [_voice_corpus(u) for u, y in zip(d.utterances, d.y, strict=True) if y >= 0]


def corpus_balance(corpora: Sequence[str]) -> np.ndarray:
    """A weight per turn such that every corpus's turns weigh the same in all (``train.calibrate_balance``)."""
    counts = Counter(corpora)
    return np.array([1.0 / counts[c] for c in corpora], dtype=np.float64)


class WeightAverage:
    """A moving average of a model's weights (``train.weight_average``), updated after each step ``t``
    (from 0) with the decay min(``decay``, (1 + t) / (10 + t)): over the first steps it is close to the
    mean of all the weights so far (the initial ones soon count for little), after that an exponential
    average of about the last 1 / (1 - ``decay``) steps."""

    def __init__(self, model: EmotionModel, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: EmotionModel) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        for avg, p in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.mul_(d).add_(p.detach(), alpha=1 - d)


def train_model(
    cfg: ExperimentConfig, train: Sequence[Dialogue], seed: int, pretrained: dict[str, EmotionModel] | None = None,
    progress: str = "",
) -> tuple[EmotionModel, dict[str, Any]]:
    """Train one model on ``train`` (a share held out for early stopping); returns it and its history."""
    tc = cfg.train
    # Input sizes come from the features (e.g. 1024 for Whisper base's pooled states).
    dims = {m: int(getattr(train[0], m).shape[1]) for m in cfg.model.modalities}
    shifted = "audio" in dims and any(d.audio_shift is not None for d in train)
    gate_dims = main_speech_columns(cfg.features, dims["audio"]) if cfg.model.audio_gate else 0
    cfg = replace(cfg, model=replace(cfg.model, dims=dims, speaker_shift=shifted, gate_dims=gate_dims))
    _seed_everything(seed)
    torch.set_num_threads(tc.threads)
    train = list(train)
    rng = random.Random(seed)
    draw = np.random.default_rng(seed)
    fit, val = validation_split(train, tc.val_fraction if (tc.patience or tc.calibrate) else 0.0, tc.val_by, rng)
    model = EmotionModel(cfg.model)
    _normalize(model, fit)
    frozen: list[nn.Parameter] = []
    if cfg.model.fused and tc.strategy != "cold":
        if not pretrained:
            raise ConfigError(f"train.strategy={tc.strategy!r} needs pre-trained unimodal models")
        for m, uni in pretrained.items():
            load_unimodal_into(model, uni, m)
            if tc.strategy == "frozen":
                frozen += model.branch_parameters(m)
        for p in frozen:
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    weight = _class_weights(fit, len(cfg.model.labels)) if tc.class_weighted else None
    ce = nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    average = WeightAverage(model, tc.weight_average) if tc.weight_average else None
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history = []
    stale = 0
    for epoch in range(tc.epochs):
        model.train()
        for m in cfg.model.modalities:
            if tc.strategy == "frozen" and cfg.model.fused:
                # Frozen branches stay in eval mode: their dropout must not change under them.
                model.proj[m].eval()
                model.branches[m].eval()
        rng.shuffle(fit)
        total = 0.0
        for i in range(0, len(fit), tc.batch_size):
            b = batch(fit[i : i + tc.batch_size], cfg.model.modalities, rng=draw)
            out = _forward(model, b)
            c = out["logits"].shape[-1]
            loss = ce(out["logits"].reshape(-1, c), b["y"].reshape(-1))
            if tc.loss == "perspective" and cfg.model.fused:
                for m in cfg.model.modalities:
                    loss = loss + tc.perspective_weight * ce(out[m].reshape(-1, c), b["y"].reshape(-1))
            if torch.isnan(loss):
                continue  # a batch of context turns only
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            if average is not None:
                average.update(model)
            total += loss.item()
        entry: dict[str, Any] = {"epoch": epoch, "loss": total}
        scored = model if average is None else average.model
        if val and tc.patience:
            pv = predict(scored, val, calibrated=False)
            score = classification_report(pv["y"], pv["logits"], cfg.model.labels)["uar"] if len(pv["y"]) else 0.0
            entry["val_uar"] = score
            if best is None or score > best[0]:
                best = (score, epoch, copy.deepcopy(scored.state_dict()))
                stale = 0
            else:
                stale += 1
        history.append(entry)
        if val and tc.patience and stale >= tc.patience:
            break
    if best is not None:
        model.load_state_dict(best[2])
    elif average is not None:
        model.load_state_dict(average.model.state_dict())
    model.eval()
    info: dict[str, Any] = {"epochs_run": len(history), "best_epoch": best[1] if best else len(history) - 1,
                            "history": history, "fit_dialogues": len(fit), "val_dialogues": len(val)}
    if tc.calibrate and val:
        held = calibration_dialogues(val, tc.calibrate_augmented)
        raw = predict(model, held, calibrated=False, raw=True)
        if len(raw["y"]):
            weights = corpus_balance([c for d in held for c in turn_corpora(d)]) if tc.calibrate_balance else None
            temps = [fit_temperature(raw[k], raw["y"], weights) for k in model.outputs]
            model.temperature.copy_(torch.tensor(temps, dtype=torch.float32))
            info["temperature"] = dict(zip(model.outputs, temps, strict=True))
    return model, info


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


EMOTION_CHANGE = "emotion_change"
"""A ``report_by`` column of the trainer's own: per labeled turn, ``first`` (the speaker's first labeled
turn of the dialogue), ``same`` (the label of the speaker's previous labeled turn) or ``changed``."""


def turn_values(d: Dialogue, column: str) -> list[str]:
    """``column``'s value for each labeled turn of ``d``, in order: a manifest column or :data:`EMOTION_CHANGE`."""
    if column != EMOTION_CHANGE:
        return [u.meta(column) for u, y in zip(d.utterances, d.y, strict=True) if y >= 0]
    last: dict[str, int] = {}
    out = []
    for u, y in zip(d.utterances, d.y, strict=True):
        if y < 0:
            continue
        before = last.get(u.speaker)
        out.append("first" if before is None else "same" if before == y else "changed")
        last[u.speaker] = int(y)
    return out


def reports_by(cfg: ExperimentConfig, columns: dict[str, np.ndarray], pred: dict[str, np.ndarray]
               ) -> dict[str, dict[str, Any]]:
    """Per value of each ``protocol.report_by`` column (``columns``: its value for each labeled test turn,
    in the order :func:`predict` lists them): the report of the test turns with that value (fused and per
    modality)."""
    out: dict[str, dict[str, Any]] = {}
    for column, values in columns.items():
        out[column] = {}
        for v in sorted(set(values)):
            keep = values == v
            entry: dict[str, Any] = {"metrics": classification_report(pred["y"][keep], pred["logits"][keep],
                                                                      cfg.model.labels)}
            for m in cfg.model.modalities:
                if m in pred and cfg.model.fused:
                    entry[m] = classification_report(pred["y"][keep], pred[m][keep], cfg.model.labels)
            if "reliability" in pred:
                entry["audio_weight_mean"] = float(pred["reliability"][keep].mean())
            out[column][v] = entry
    return out


def run_variant(cfg: ExperimentConfig, data: DialogueSet, folds: Sequence[Fold], name: str) -> dict[str, Any]:
    """Every fold x seed of one variant; per-run reports and mean ± std over all runs."""
    runs = []
    pooled: dict[int, list[dict[str, Any]]] = {}
    kept: dict[str, list[np.ndarray]] = {}
    for fold_index, fold in enumerate(folds):
        fold_data = data.fold_text(fold)
        train_clean = [fold_data.dialogues[d] for d in fold.train]
        test_clean = [fold_data.dialogues[d] for d in fold.test]
        for seed in cfg.train.seeds:
            t0 = time.perf_counter()
            train, test = train_clean, test_clean
            shrink = cfg.features.speaker_norm
            if shrink and "audio" in cfg.model.modalities:
                mean = np.concatenate([d.audio for d in train if d.audio is not None]).mean(0)
                train = speaker_normalized(train, mean, shrink, seed)
                test = speaker_normalized(test, mean, shrink, seed + 1000)
            pretrained = None
            if cfg.model.fused and cfg.train.strategy != "cold":
                pretrained = {}
                for m in cfg.model.modalities:
                    uni_cfg = replace(cfg, model=replace(cfg.model, modalities=(m,)),
                                      train=replace(cfg.train, strategy="cold", loss="single"))
                    pretrained[m], _ = train_model(uni_cfg, train, seed)
            model, info = train_model(cfg, train, seed, pretrained)
            pred = predict(model, test)
            report = classification_report(pred["y"], pred["logits"], cfg.model.labels)
            per_mod = {m: classification_report(pred["y"], pred[m], cfg.model.labels)
                       for m in cfg.model.modalities if m in pred and cfg.model.fused}
            columns = {c: np.array([v for d in test for v in turn_values(d, c)]) for c in cfg.protocol.report_by}
            by = reports_by(cfg, columns, pred)
            seconds = time.perf_counter() - t0
            runs.append({"fold": fold.name, "seed": seed, "metrics": report, "modalities": per_mod, "by": by,
                         "temperature": info.get("temperature"),
                         "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
                         "train_dialogues": len(train), "test_dialogues": len(test), "seconds": round(seconds, 2)})
            pooled.setdefault(seed, []).append(report)
            for k, v in pred.items():
                kept.setdefault(k, []).append(v)
            kept.setdefault("fold", []).append(np.full(len(pred["y"]), fold_index))
            kept.setdefault("seed", []).append(np.full(len(pred["y"]), seed))
            for column, values in columns.items():
                kept.setdefault(f"by:{column}", []).append(values)
            log.info("%s | %s | %s | seed %d: WA %.3f UAR %.3f (%d epochs, %.1fs)", cfg.name, name, fold.name,
                     seed, report["weighted_accuracy"], report["uar"], info["epochs_run"], seconds)
    per_fold: dict[str, Any] = {}
    for fold in folds:
        per_fold[fold.name] = mean_std([r["metrics"] for r in runs if r["fold"] == fold.name])
    # Mean over folds for each seed, then mean ± std over seeds (the spread between repetitions).
    seed_means = []
    for _seed, reports in pooled.items():
        seed_means.append({k: float(np.mean([r.get(k, np.nan) for r in reports])) for k in SUMMARY_KEYS})
    summary = mean_std(seed_means)
    predictions = {k: np.concatenate(v) for k, v in kept.items()}
    return {"variant": name, "config": cfg.to_dict(), "runs": runs, "per_fold": per_fold, "summary": summary,
            "test_turns": int(np.mean([r["metrics"]["n"] for r in runs])) if runs else 0,
            "_predictions": predictions}


def run_experiment(cfg: ExperimentConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Run every variant of ``cfg``; write ``config.resolved.json``, ``metrics.json``, ``summary.md``."""
    out_dir = out_dir or runs_dir() / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.resolved.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    t0 = time.perf_counter()
    results = []
    all_variants = variants(cfg)
    # Features for the union of modalities across variants, computed once.
    mods = sorted({m for _, v in all_variants for m in v.model.modalities})
    base = replace(cfg, model=replace(cfg.model, modalities=tuple(mods)), grid={})
    data_by_features: dict[str, DialogueSet] = {}
    for i, (name, vcfg) in enumerate(all_variants, 1):
        fkey = json.dumps(asdict(vcfg.features), sort_keys=True) + json.dumps(asdict(vcfg.data), sort_keys=True)
        if fkey not in data_by_features:
            data_by_features[fkey] = DialogueSet(replace(base, features=vcfg.features, data=vcfg.data))
        data = data_by_features[fkey]
        data.cfg = vcfg
        folds = data.folds()
        log.info("[%d/%d] %s: %d folds x %d seeds", i, len(all_variants), name, len(folds), len(vcfg.train.seeds))
        result = run_variant(vcfg, data, folds, name)
        # Every test turn's probabilities, for calibration plots and pooled figures.
        np.savez_compressed(out_dir / f"predictions-{i}.npz", **result.pop("_predictions"))
        result["predictions"] = f"predictions-{i}.npz"
        results.append(result)
    doc = {
        "name": cfg.name,
        "description": cfg.description,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
        "variants": results,
    }
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(doc))
    return doc


LICENCES = {
    "ravdess": "RAVDESS: CC BY-NC-SA 4.0",
    "tess": "TESS: CC BY-NC-ND 4.0",
    "crema_d": "CREMA-D: Open Database License 1.0, contents Database Contents License 1.0",
    "iemocap": "IEMOCAP: USC SAIL research licence",
    "meld": "MELD: GPL-3.0",
    "emorynlp": "EmoryNLP: see its authors",
}


def export_final(cfg: ExperimentConfig, out_dir: Path, version: str = "", metrics: dict[str, Any] | None = None,
                 name: str = "") -> Path:
    """Train on every dialogue of the config and export with its card: one model per seed of the
    first ``train.ensemble`` seeds, averaged in one graph (one model, the first seed's, by default)."""
    from .export import export_model

    if cfg.grid:
        pins = " ".join(f"--set {k}={json.dumps(v[0])}" for k, v in cfg.grid.items())
        raise ConfigError(f"export needs a single variant, but [grid] varies {', '.join(cfg.grid)}: pin each with "
                          f"--set (e.g. {pins})")
    all_cfg = replace(cfg, protocol=replace(cfg.protocol, folds="all"))
    data = DialogueSet(all_cfg)
    dialogues = list(data.dialogues.values())
    seeds = cfg.train.seeds[:cfg.train.ensemble]
    speaker_norm, mean = None, None
    if cfg.features.speaker_norm and "audio" in cfg.model.modalities:
        from realtime_ser.emotion.speaker import SpeakerNorm

        mean = np.concatenate([d.audio for d in dialogues if d.audio is not None]).mean(0)
        speaker_norm = SpeakerNorm(mean, cfg.features.speaker_norm)
    models, runs = [], []
    for seed in seeds:
        train_dialogues = dialogues if mean is None else speaker_normalized(
            dialogues, mean, cfg.features.speaker_norm, seed)
        pretrained = None
        if cfg.model.fused and cfg.train.strategy != "cold":
            pretrained = {m: train_model(replace(cfg, model=replace(cfg.model, modalities=(m,)),
                                                 train=replace(cfg.train, strategy="cold", loss="single")),
                                         train_dialogues, seed)[0] for m in cfg.model.modalities}
        model, info = train_model(cfg, train_dialogues, seed, pretrained)
        models.append(model)
        runs.append({"seed": seed, "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"]})
        log.info("export: model %d of %d trained (seed %d)", len(models), len(seeds), seed)
    features = data.extractor.settings_card(cfg.model.modalities)
    if speaker_norm is not None:
        features["audio"]["speaker_norm"] = speaker_norm.card()
    # every corpus whose words or voices went in: a constructed dialogue names its text's corpus and its voice's
    corpora = sorted({c for s, man in data.manifests for u in man.utterances
                      for c in (u.meta("corpus") or Path(s).stem, u.meta("voice_corpus")) if c})
    training = {
        "config": cfg.to_dict(),
        "data": {s: {"utterances": len(m), "labels": m.label_counts()} for s, m in data.manifests},
        "models": runs,
        "git_commit": _git_commit(),
    }
    licences = [LICENCES[c] for c in corpora if c in LICENCES]
    export_model(models, out_dir, name=name or cfg.name, version=version or _dt.date.today().isoformat(),
                 features=features, max_turns=cfg.train.context_turns, training=training, metrics=metrics or {},
                 licences=[{"data": x} for x in licences])
    return out_dir


def summary_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {doc['name']}", "", doc.get("description", ""), "",
             f"commit `{doc['git_commit'][:10]}`, {doc['seconds']:.0f} s", "",
             "| variant | test turns per fold | WA % | UAR % | macro-F1 % | weighted F1 % | ROC AUC % | ECE | "
             "per fold WA % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in doc["variants"]:
        s = v["summary"]
        folds = ", ".join(f"{k}: {100 * f['weighted_accuracy']['mean']:.1f}" for k, f in v["per_fold"].items())
        ece = s.get("ece", {"mean": float("nan"), "std": float("nan"), "n": 1})
        ece_text = f"{ece['mean']:.3f}" + (f" ± {ece['std']:.3f}" if ece.get("n", 1) > 1 else "")
        lines.append(f"| {v['variant']} | {v.get('test_turns', '')} | {format_pct(s['weighted_accuracy'])} | "
                     f"{format_pct(s['uar'])} | {format_pct(s['macro_f1'])} | "
                     f"{format_pct(s.get('weighted_f1', {'mean': float('nan'), 'n': 1}))} | "
                     f"{format_pct(s['roc_auc'])} | {ece_text} | {folds} |")
    lines.append("")
    lines.append("WA is plain accuracy (the share of test turns labeled right); UAR the mean of per-class recalls. "
                 "Mean ± standard deviation over seeds of the mean over folds.")
    return "\n".join(lines) + "\n"


def pooled_confusion(variant: dict[str, Any]) -> np.ndarray:
    return np.sum([np.array(r["metrics"]["confusion"]) for r in variant["runs"]], axis=0)


__all__ = [
    "ConfigError", "DataConfig", "Dialogue", "DialogueSet", "ExperimentConfig", "ProtocolConfig", "TrainConfig",
    "calibration_dialogues", "config_from_dict", "load_config", "predict", "run_experiment", "train_model", "variants",
]
