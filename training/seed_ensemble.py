"""``python -m training.seed_ensemble``: what averaging several training runs gains over one.

Every run of a config trains one model per fold and seed and keeps its calibrated probabilities
for each test turn (``predictions-N.npz``). Models of the same fold but different seeds score
the same test turns, so their probabilities can be averaged: an ensemble of K models, which on
the pooled speech-encoder features costs K small heads on one encoder pass.

The seeds of one config, from any number of its runs (``--set "train.seeds=[3,4,5]"`` adds
seeds to an earlier run), are cut into disjoint groups of K in seed order (seeds left over are
not used). Each group's ensemble is scored pooled over the folds, as a single seed is in
:mod:`training.report`; the figures are mean ± standard deviation over the groups, beside the
single seeds' mean ± standard deviation. Seeds that do not score the same test turns in the same
order (another fold split or data) are refused.

``--combine logprobs`` averages log-probabilities instead (the normalized geometric mean, as an
export with ``train.ensemble`` does; the arithmetic mean of calibrated probabilities is less
confident than its accuracy warrants).

``--across NAME`` takes the runs as different models of the same test turns (another text encoder,
another config) instead of seeds of one config: each ensemble takes the i-th seed of every run, so
there are as many models per ensemble as runs, and as many ensembles as the fewest seeds of a run.
The runs' own seeds and ensembles are reported beside it.

``--by COLUMN`` (a column the config reports by, ``protocol.report_by``, e.g. ``kind``; repeatable)
scores each value of it apart as well.

Writes ``training/results/seed_ensembles.{json,md}`` (``--out`` to change); ``make seed-ensembles`` runs
the extra seeds and this.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import REPO
from .metrics import classification_report, format_pct, mean_std

OUT = REPO / "training" / "results" / "seed_ensembles"


@dataclass
class Seeds:
    """The kept predictions of every seed of one config: the shared test turns, each seed's probabilities."""

    name: str
    labels: tuple[str, ...]
    y: np.ndarray | None = None
    fold: np.ndarray | None = None
    probs: dict[int, np.ndarray] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    groups: list[list[int]] | None = None
    """The ensembles' members, when not disjoint groups of K in seed order (``--across``)."""
    titles: dict[int, str] = field(default_factory=dict)
    """How a member is named in the report, when not by its seed (``--across``: ``run:seed``)."""
    by: dict[str, np.ndarray] = field(default_factory=dict)
    """Each report-by column of the test turns (``kind``: dialogue or clip, ...)."""

    def add(self, seed: int, y: np.ndarray, fold: np.ndarray, probs: np.ndarray, source: str,
            by: dict[str, np.ndarray] | None = None) -> None:
        if self.y is None or self.fold is None:
            self.y, self.fold, self.by = y, fold, dict(by or {})
        elif len(y) != len(self.y) or (y != self.y).any() or (fold != self.fold).any():
            raise ValueError(f"{source}: seed {seed} of {self.name} does not score the same test turns in the same "
                             f"order as {self.sources[0]} (another fold split or data?)")
        if seed in self.probs:
            raise ValueError(f"{source}: seed {seed} of {self.name} is already given by another run")
        self.probs[seed] = probs
        if source not in self.sources:
            self.sources.append(source)


def load_run(spec: str) -> tuple[str, tuple[str, ...],
                                 dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]]]:
    """``DIR`` or ``DIR:VARIANT`` (a run folder of ``python -m training train``): the config's name, its
    labels and each seed's (y, fold, probabilities, report-by columns)."""
    folder, _, wanted = spec.partition(":")
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no metrics.json (not a training run folder)")
    doc = json.loads(path.read_text())
    variants = doc["variants"]
    if wanted:
        chosen = [v for v in variants if v["variant"] == wanted]
        if not chosen:
            raise ValueError(f"{folder}: no variant {wanted!r}; variants: {', '.join(v['variant'] for v in variants)}")
    elif len(variants) > 1:
        raise ValueError(f"{folder} has {len(variants)} variants; name one as {folder}:VARIANT "
                         f"({', '.join(v['variant'] for v in variants)})")
    else:
        chosen = variants
    v = chosen[0]
    if not v.get("predictions"):
        raise ValueError(f"{folder}: variant {v['variant']!r} kept no predictions")
    kept = np.load(Path(folder) / v["predictions"])
    out = {}
    for seed in np.unique(kept["seed"]):
        rows = kept["seed"] == seed
        by = {k.removeprefix("by:"): kept[k][rows] for k in kept.files if k.startswith("by:")}
        out[int(seed)] = (kept["y"][rows], kept["fold"][rows], kept["logits"][rows], by)
    return doc["name"], tuple(v["config"]["model"]["labels"]), out


COMBINE = ("probs", "logprobs")


def combine(probs: Sequence[np.ndarray], how: str = "probs") -> np.ndarray:
    """Several models' probabilities of the same turns as one: their mean (``probs``) or the normalized
    geometric mean (``logprobs``: the softmax of the mean log-probability)."""
    if how == "probs":
        return np.mean(probs, axis=0)
    if how != "logprobs":
        raise ValueError(f"combine must be one of {COMBINE}, got {how!r}")
    logp = np.mean([np.log(np.clip(p, 1e-12, None)) for p in probs], axis=0)
    g = np.exp(logp - logp.max(-1, keepdims=True))
    return g / g.sum(-1, keepdims=True)


def across(name: str, runs: Sequence[tuple[str, Seeds]]) -> Seeds:
    """Runs of different models scoring the same test turns as one pool: ensemble i takes the i-th seed
    (in seed order) of every run."""
    if len(runs) < 2:
        raise ValueError("--across needs at least two runs")
    labels = runs[0][1].labels
    pool = Seeds(name, labels)
    per_run = []
    for r, (spec, seeds) in enumerate(runs):
        if seeds.labels != labels:
            raise ValueError(f"{spec}: labels {list(seeds.labels)} differ from {runs[0][0]}'s {list(labels)}")
        assert seeds.y is not None and seeds.fold is not None
        keys = []
        for seed in sorted(seeds.probs):
            key = r * 1_000_000 + seed
            pool.add(key, seeds.y, seeds.fold, seeds.probs[seed], spec, seeds.by)
            pool.titles[key] = f"{spec}:{seed}"
            keys.append(key)
        per_run.append(keys)
    pool.groups = [list(g) for g in zip(*per_run, strict=False)]
    return pool


def summarize(seeds: Seeds, k: int, by: Sequence[str] = (), how: str = "probs") -> dict[str, Any]:
    """Single seeds and disjoint ensembles of ``k`` seeds, pooled over the folds (and per value of
    each report-by column in ``by``)."""
    assert seeds.y is not None
    for column in by:
        if column not in seeds.by:
            raise ValueError(f"{seeds.name} kept no column {column!r}; it has: {', '.join(seeds.by) or 'none'}")
    result = _summary(seeds, k, np.ones(len(seeds.y), bool), how)
    result["combine"] = how
    if by:
        result["by"] = {c: {str(v): _summary(seeds, k, seeds.by[c] == v, how) for v in np.unique(seeds.by[c])}
                        for c in by}
    return result


def _summary(seeds: Seeds, k: int, rows: np.ndarray, how: str) -> dict[str, Any]:
    assert seeds.y is not None
    keys = ("weighted_accuracy", "uar", "ece")
    order = sorted(seeds.probs)
    y = seeds.y[rows]
    singles = [classification_report(y, seeds.probs[s][rows], seeds.labels) for s in order]
    if seeds.groups is None:
        groups = [order[i: i + k] for i in range(0, len(order) - k + 1, k)]
    else:
        groups = seeds.groups
        k = len(groups[0]) if groups else 0
    ensembles = [classification_report(y, combine([seeds.probs[s][rows] for s in g], how), seeds.labels)
                 for g in groups]

    def title(s: int) -> int | str:
        return seeds.titles.get(s, s)

    return {"name": seeds.name, "n": len(y), "seeds": [title(s) for s in order], "k": k,
            "groups": [[title(s) for s in g] for g in groups],
            "single": mean_std(singles, keys), "ensemble": mean_std(ensembles, keys) if ensembles else {},
            "ensemble_each": [{key: float(r[key]) for key in keys} for r in ensembles], "sources": seeds.sources}


def markdown(results: list[dict[str, Any]]) -> str:
    averaged = ("calibrated log-probabilities averaged (a normalized geometric mean)"
                if results and results[0].get("combine") == "logprobs" else "calibrated probabilities averaged")
    title = ("Models of several runs averaged across them" if any(r.get("across") for r in results)
             else "One model against an ensemble of several training runs")
    lines = [f"# {title}", "",
             "`python -m training.seed_ensemble`: each config's seeds cut into disjoint groups of K; each group's "
             f"{averaged} per test turn and scored pooled over the folds. Mean ± std over "
             "single seeds and over groups; n = test turns per seed.", "",
             "| config | n | seeds | one model: WA % | UAR % | ECE | K | ensembles | ensemble: WA % | UAR % | ECE |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("across"):
            lines.append(f"| **{r['name']}**: ensemble i = the i-th seed of each run above | | | | | | | | | | |")
        lines.append(_row(r["name"], r))
        for column, values in r.get("by", {}).items():
            lines += [_row(f"{r['name']}, {column} = {value}", sub) for value, sub in values.items()]
    return "\n".join(lines) + "\n"


def _row(title: str, r: dict[str, Any]) -> str:
    s, e = r["single"], r["ensemble"]
    if not all(isinstance(x, int) for x in r["seeds"]):  # --across: models named run:seed
        seeds = f"{len(r['seeds'])} models"
    elif r["seeds"] == list(range(r["seeds"][0], r["seeds"][-1] + 1)):
        seeds = f"{r['seeds'][0]}-{r['seeds'][-1]}"
    else:
        seeds = ", ".join(map(str, r["seeds"]))
    ens = (f"{format_pct(e['weighted_accuracy'])} | {format_pct(e['uar'])} | {e['ece']['mean']:.3f}"
           + (f" ± {e['ece']['std']:.3f}" if len(r["groups"]) > 1 else "") if e else "– | – | –")
    return (f"| {title} | {r['n']} | {seeds} | {format_pct(s['weighted_accuracy'])} | "
            f"{format_pct(s['uar'])} | {s['ece']['mean']:.3f} ± {s['ece']['std']:.3f} | {r['k']} | "
            f"{len(r['groups'])} | {ens} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.seed_ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="DIR[:VARIANT]",
                   help="run folders of `python -m training train` (several per config to pool their seeds)")
    p.add_argument("--k", type=int, default=3, help="models per ensemble (default 3)")
    p.add_argument("--combine", choices=COMBINE, default="probs",
                   help="average probabilities (default) or log-probabilities (as an export with train.ensemble)")
    p.add_argument("--by", action="append", default=[], metavar="COLUMN",
                   help="also score each value of this report-by column apart (e.g. kind); repeatable")
    p.add_argument("--across", metavar="NAME",
                   help="the runs are different models of the same test turns (other encoders or configs): "
                        "ensemble i takes the i-th seed of every run; reported as NAME beside each run")
    p.add_argument("--out", type=Path, default=OUT, help="output path without suffix (.json and .md are written)")
    args = p.parse_args(argv)
    if args.k < 2:
        p.error("--k must be at least 2")
    configs: dict[str, Seeds] = {}
    try:
        for spec in args.runs:
            name, labels, seeds = load_run(spec)
            key = spec if args.across else name  # across runs, runs of one config are models of their own
            entry = configs.setdefault(key, Seeds(key, labels))
            for seed, (y, fold, probs, by) in seeds.items():
                entry.add(seed, y, fold, probs, spec, by)
        results = [summarize(s, args.k, args.by, args.combine) for s in configs.values()]
        if args.across:
            pool = summarize(across(args.across, list(configs.items())), args.k, args.by, args.combine)
            pool["across"] = list(configs)
            results.append(pool)
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
