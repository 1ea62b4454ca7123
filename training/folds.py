"""Speaker-independent cross-validation folds over the dialogues of a manifest.

A fold names the dialogues to train on and the dialogues to test on; a dialogue is
never split. Speakers are the people of the ``speaker`` column (several per line
when joined by ``|``), and all of a dialogue's speakers count, labeled or not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from training.data import Manifest


class FoldError(ValueError):
    """Folds that cannot be made, or a fold that leaks speakers or scripts."""


@dataclass(frozen=True)
class Fold:
    """One split: ``train`` and ``test`` dialogue ids (manifest order) and a readable name."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def _values(manifest: Manifest, dialogue_id: str, key: str) -> set[str]:
    """The non-empty values of column ``key`` in one dialogue (speakers split on ``|``)."""
    if key == "speaker":
        return {s for u in manifest.dialogue(dialogue_id) for s in u.speakers}
    return {v for u in manifest.dialogue(dialogue_id) if (v := u.meta(key))}


def _fold(manifest: Manifest, name: str, train: set[str], test: set[str]) -> Fold:
    ids = manifest.dialogue_ids()
    return Fold(name, tuple(d for d in ids if d in train), tuple(d for d in ids if d in test))


def session_folds(manifest: Manifest) -> list[Fold]:
    """Leave-one-session-out (IEMOCAP): one fold per value of the ``session`` column."""
    sessions: dict[str, set[str]] = {}
    missing = []
    for d in manifest.dialogue_ids():
        values = _values(manifest, d, "session")
        if len(values) != 1:
            missing.append(d)
            continue
        sessions.setdefault(values.pop(), set()).add(d)
    if missing:
        raise FoldError(f"{len(missing)} dialogues have no single session (e.g. {missing[0]!r}); "
                        "session folds need a 'session' column")
    if len(sessions) < 2:
        raise FoldError(f"session folds need at least 2 sessions; found {len(sessions)}")
    everything = set(manifest.dialogue_ids())
    return [_fold(manifest, f"session {s}", everything - test, test) for s, test in sorted(sessions.items())]


def speaker_groups(manifest: Manifest) -> list[tuple[list[str], set[str]]]:
    """Speakers joined by shared dialogues: (speakers, dialogue ids) per connected group, manifest order.

    No speaker of a group talks in a dialogue of another group, so any union of
    groups is a speaker-disjoint test set. In IEMOCAP the groups are the sessions.
    """
    parent: dict[str, str] = {}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    speakers_of = {d: sorted(_values(manifest, d, "speaker")) for d in manifest.dialogue_ids()}
    for speakers in speakers_of.values():
        for s in speakers:
            parent.setdefault(s, s)
        for s in speakers[1:]:
            parent[find(s)] = find(speakers[0])
    groups: dict[str, tuple[list[str], set[str]]] = {}
    for s in manifest.speakers():
        groups.setdefault(find(s), ([], set()))[0].append(s)
    for d, speakers in speakers_of.items():
        if speakers:
            groups[find(speakers[0])][1].add(d)
    return list(groups.values())


def _name(speakers: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(speakers[:limit]) + (f" and {len(speakers) - limit} more" if len(speakers) > limit else "")
    return f"test speakers {shown}"


def speaker_folds(manifest: Manifest, k: int | None = None, seed: int = 0, max_group_share: float = 0.9) -> list[Fold]:
    """Speaker-disjoint folds: leave-one-speaker-group-out (``k=None``) or ``k`` folds of groups.

    A group is the speakers linked by shared dialogues (:func:`speaker_groups`): one
    speaker for single-clip corpora, a session for IEMOCAP. With ``k``, groups are
    shuffled with ``seed`` and dealt out largest first to the fold with the fewest
    utterances, so folds are balanced and reproducible. Raises :class:`FoldError`
    where one group holds more than ``max_group_share`` of the utterances (MELD,
    EmoryNLP: the Friends cast talk to everyone, so nearly all is one group).
    """
    groups = speaker_groups(manifest)
    if len(groups) < 2:
        n = len(manifest.speakers())
        raise FoldError(f"speaker-disjoint folds need at least 2 groups of speakers that never share a dialogue; "
                        f"all {n} speakers here are linked through dialogues (use the corpus's own split)")
    sizes = [sum(len(manifest.dialogue(d)) for d in dialogues) for _, dialogues in groups]
    if max(sizes) > max_group_share * len(manifest):
        biggest = groups[sizes.index(max(sizes))][0]
        raise FoldError(f"speaker groups too unbalanced for speaker-disjoint folds: {len(biggest)} speakers linked "
                        f"through dialogues hold {max(sizes)} of {len(manifest)} utterances "
                        "(use the corpus's own split)")
    everything = set(manifest.dialogue_ids())
    if k is None:
        return [_fold(manifest, _name(sorted(speakers)), everything - test, test) for speakers, test in groups]
    if not 2 <= k <= len(groups):
        raise FoldError(f"k must be between 2 and the number of speaker groups ({len(groups)}), not {k}")
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -sizes[g])
    bins: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for g in order:
        i = min(range(k), key=lambda j: (load[j], j))
        bins[i].append(g)
        load[i] += sizes[g]
    folds = []
    for members in bins:
        speakers = sorted(s for g in members for s in groups[g][0])
        test = {d for g in members for d in groups[g][1]}
        folds.append(_fold(manifest, _name(speakers), everything - test, test))
    return folds


def speaker_script_folds(manifest: Manifest, k: int | None = None, seed: int = 0,
                         split_test_by_script: bool = False, max_group_share: float = 0.9) -> list[Fold]:
    """Speaker- and script-disjoint folds (Pepino et al. 2024).

    Starts from :func:`speaker_folds` (for IEMOCAP: test = one session) and removes
    from train every dialogue whose ``script_id`` occurs in the test set (IEMOCAP's
    scripted lines repeat across sessions). Where every dialogue has a script
    (RAVDESS: two sentences said by all actors) train would be empty; then use
    ``split_test_by_script=True``: each fold's test set is split by script, and
    each part trains on the other speakers' other scripts.
    """
    folds = []
    for base in speaker_folds(manifest, k=k, seed=seed, max_group_share=max_group_share):
        if split_test_by_script:
            parts: dict[str, set[str]] = {}
            for d in base.test:
                parts.setdefault(",".join(sorted(_values(manifest, d, "script_id"))), set()).add(d)
            tests = [(f"{base.name}; script {s or '(none)'}", t) for s, t in sorted(parts.items())]
        else:
            tests = [(base.name, set(base.test))]
        for name, test in tests:
            scripts = {s for d in test for s in _values(manifest, d, "script_id")}
            train = {d for d in base.train if not _values(manifest, d, "script_id") & scripts}
            if not train:
                raise FoldError(f"fold {name!r}: no training dialogue left without the test scripts "
                                f"({len(scripts)} scripts); try split_test_by_script=True")
            folds.append(_fold(manifest, name, train, test))
    return folds


def split_fold(manifest: Manifest, test: str = "test", column: str = "split") -> Fold:
    """The corpus's own split (MELD, EmoryNLP): test = dialogues with ``column == test``; train = the rest."""
    ids = manifest.dialogue_ids()
    test_ids = {d for d in ids if test in _values(manifest, d, column)}
    if not test_ids or len(test_ids) == len(ids):
        raise FoldError(f"{column}={test!r} must select some but not all dialogues ({len(test_ids)} of {len(ids)})")
    return _fold(manifest, f"{column} {test}", set(ids) - test_ids, test_ids)


def check_disjoint(manifest: Manifest, fold: Fold, by: Sequence[str] = ("speaker",)) -> None:
    """Raise :class:`FoldError` if train and test share a dialogue or any value of the ``by`` columns."""
    known = set(manifest.dialogue_ids())
    unknown = sorted((set(fold.train) | set(fold.test)) - known)
    if unknown:
        raise FoldError(f"fold {fold.name!r}: unknown dialogues {unknown[:5]}")
    both = sorted(set(fold.train) & set(fold.test))
    if both:
        raise FoldError(f"fold {fold.name!r}: {len(both)} dialogues in both train and test, e.g. {both[:5]}")
    for key in by:
        train = {v for d in fold.train for v in _values(manifest, d, key)}
        test = {v for d in fold.test for v in _values(manifest, d, key)}
        leaked = sorted(train & test)
        if leaked:
            shown = ", ".join(leaked[:10]) + (f" and {len(leaked) - 10} more" if len(leaked) > 10 else "")
            raise FoldError(f"fold {fold.name!r}: {key} in both train and test: {shown}")
