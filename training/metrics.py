"""Classification metrics, numpy only, so the evaluator needs no torch.

``weighted accuracy`` (WA) is the plain accuracy over utterances (the name the
IEMOCAP literature, Wu et al. included, uses); ``UAR`` is the unweighted mean of
per-class recalls. ROC AUC is one-vs-rest per class (Mann-Whitney statistic with
ties counted half), averaged over classes present in the test set with both a
positive and a negative. ``weighted F1`` is the per-class F1 averaged with the
classes' shares of the test set as weights (the metric MELD results quote). ``ECE``
is the expected calibration error of the top probability (15 bins, see
:mod:`training.calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration import ece


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos = scores[positive]
    neg = scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(values))
    # Average ranks for ties.
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(values))
    r[order] = ranks
    u = r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def classification_report(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Every metric the reports quote, from true class indices and class probabilities (N, C)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    if p.ndim != 2 or p.shape[1] != n or len(y) != len(p):
        raise ValueError(f"probs must have shape (N={len(y)}, C={n}), got {p.shape}")
    pred = p.argmax(1)
    cm = confusion(y, pred, n)
    support = cm.sum(1)
    recall = np.divide(np.diag(cm), support, out=np.full(n, np.nan), where=support > 0)
    predicted = cm.sum(0)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(n), where=predicted > 0)
    f1 = np.divide(2 * precision * np.nan_to_num(recall), precision + np.nan_to_num(recall),
                   out=np.zeros(n), where=(precision + np.nan_to_num(recall)) > 0)
    present = support > 0
    aucs = [_auc(p[:, c], y == c) for c in range(n)]
    valid_auc = [a for a in aucs if not np.isnan(a)]
    return {
        "n": int(len(y)),
        "labels": list(labels),
        "weighted_accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "uar": float(np.nanmean(recall)) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else float("nan"),
        "ece": ece(p, y),
        "roc_auc": float(np.mean(valid_auc)) if valid_auc else float("nan"),
        "per_class_recall": {lab: (None if np.isnan(r) else float(r)) for lab, r in zip(labels, recall, strict=True)},
        "support": {lab: int(s) for lab, s in zip(labels, support, strict=True)},
        "confusion": cm.tolist(),
    }


SUMMARY_KEYS = ("weighted_accuracy", "uar", "macro_f1", "weighted_f1", "roc_auc", "ece")


def mean_std(reports: Sequence[dict[str, Any]], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of each summary metric over runs."""
    out = {}
    for k in keys:
        values = np.array([r.get(k, np.nan) for r in reports], dtype=np.float64)
        if not len(values) or np.isnan(values).all():
            out[k] = {"mean": float("nan"), "std": float("nan"), "n": int(len(values))}
            continue
        out[k] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)), "n": int(len(values))}
    return out


def format_pct(stat: dict[str, float]) -> str:
    """``82.4 ± 1.3`` (percent); ``82.4`` alone when it is one run (no spread to give)."""
    if stat.get("n", 2) == 1:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
