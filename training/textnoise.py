"""Recognition-error noise for transcripts, matched to a recognizer's measured errors.

:func:`measure` aligns recognized transcripts with their references (word-level
Levenshtein) and counts substitutions, deletions and insertions per reference word;
:func:`corrupt` applies errors at those rates to clean text, drawing substituted and
inserted words from the recognizer's own output vocabulary. The text branch of the
live model trained on such text degrades less when the recognizer errs.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class ErrorRates:
    substitution: float
    deletion: float
    insertion: float
    reference_words: int

    @property
    def wer(self) -> float:
        return self.substitution + self.deletion + self.insertion


def align_counts(ref: Sequence[str], hyp: Sequence[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum-edit alignment."""
    n, m = len(ref), len(hyp)
    d = [[(0, 0, 0, 0)] * (m + 1) for _ in range(n + 1)]  # (cost, sub, del, ins)
    for i in range(1, n + 1):
        d[i][0] = (i, 0, i, 0)
    for j in range(1, m + 1):
        d[0][j] = (j, 0, 0, j)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c, s, de, ins = d[i - 1][j - 1]
            best = (c, s, de, ins) if ref[i - 1] == hyp[j - 1] else (c + 1, s + 1, de, ins)
            c, s, de, ins = d[i - 1][j]
            best = min(best, (c + 1, s, de + 1, ins))
            c, s, de, ins = d[i][j - 1]
            best = min(best, (c + 1, s, de, ins + 1))
            d[i][j] = best
    return d[n][m][1], d[n][m][2], d[n][m][3]


def measure(pairs: Iterable[tuple[str, str]]) -> tuple[ErrorRates, list[str]]:
    """Error rates over (reference, recognized) pairs, and the recognizer's output vocabulary."""
    sub = dele = ins = total = 0
    vocab: Counter[str] = Counter()
    for ref, hyp in pairs:
        r, h = words(ref), words(hyp)
        s, de, i = align_counts(r, h)
        sub, dele, ins, total = sub + s, dele + de, ins + i, total + len(r)
        vocab.update(h)
    total = max(total, 1)
    return ErrorRates(sub / total, dele / total, ins / total, total), [w for w, _ in vocab.most_common()]


def corrupt(text: str, rates: ErrorRates, vocab: Sequence[str], rng: random.Random) -> str:
    """``text`` with random substitutions, deletions and insertions at ``rates``."""
    out: list[str] = []
    for w in words(text):
        x = rng.random()
        if x < rates.deletion:
            pass
        elif x < rates.deletion + rates.substitution and vocab:
            out.append(rng.choice(vocab))
        else:
            out.append(w)
        if vocab and rng.random() < rates.insertion:
            out.append(rng.choice(vocab))
    return " ".join(out)
