"""A *constructed* paired audio+text corpus: IEMOCAP dialogues voiced by RAVDESS clips.

No corpus here pairs emotional speech with emotional conversation: IEMOCAP's
transcripts come without audio, and the acted clips (RAVDESS) say two fixed,
neutral sentences. To train and compare fusion models anyway, every IEMOCAP turn
gets the audio of a RAVDESS clip:

- a labeled turn gets a clip with the **same label** (4 classes);
- an unlabeled context turn (frustration, surprise, ...) gets a clip of one of
  RAVDESS's other emotions (calm, fearful, disgust, surprised), so context turns
  are not silent and carry no class label either;
- each dialogue's female speaker is voiced by one female actor, the male speaker by
  one male actor, so a dialogue sounds like two consistent people;
- **speaker-disjoint by session**: IEMOCAP session *s* is voiced only by the actors
  of group *s* (the 20 actors in 4 groups of mixed gender), so leave-one-session-out
  folds keep both the IEMOCAP speakers and the RAVDESS actors of the test session
  out of training.

What such a model learns about the *joint* distribution is an artefact of the
construction (the audio and the text of a turn are independent given the label);
what it shows is how each fusion design combines two noisy views of the label.
The reports name this data "constructed IEMOCAP-text x RAVDESS-audio pairing".
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import Utterance, read_manifest, shared_data_dir, write_manifest

OTHER_EMOTIONS = ("calm", "fearful", "disgust", "surprised")
EMOTION4 = {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry"}


def actor_groups(n_groups: int = 4) -> dict[int, int]:
    """RAVDESS actor number -> group: actors (1, 2), (3, 4), ... (one male, one female) dealt round robin."""
    return {a: ((a - 1) // 2) % n_groups for a in range(1, 21)}


def build_paired(text_manifest: Path, out: Path, ravdess_dir: Path | None = None, seed: int = 0) -> Path:
    """Write the constructed paired manifest ``out`` (audio paths relative to it) and return it."""
    ravdess_dir = ravdess_dir or shared_data_dir() / "ravdess"
    text = read_manifest(text_manifest)
    with open(ravdess_dir / "manifest.csv", newline="", encoding="utf-8") as f:
        clips = list(csv.DictReader(f))
    # (actor, label-or-"other") -> clip paths
    pool: dict[tuple[int, str], list[str]] = defaultdict(list)
    gender: dict[int, str] = {}
    for c in clips:
        actor = int(c["speaker"].rsplit("_", 1)[1])
        gender[actor] = c["gender"]
        if c["emotion4"] in EMOTION4:
            pool[(actor, EMOTION4[c["emotion4"]])].append(c["path"])
        elif c["emotion"] in OTHER_EMOTIONS:
            pool[(actor, "")].append(c["path"])
    groups = actor_groups()
    sessions = sorted({u.meta("session") for u in text.utterances})
    if len(sessions) > 4:
        raise ValueError(f"the pairing voices at most 4 sessions with 4 actor groups; found {sessions}")
    group_of_session = {s: i for i, s in enumerate(sessions)}
    rng = random.Random(seed)
    out = Path(out)
    rows: list[Utterance] = []
    for dialogue in text.dialogues():
        session = dialogue[0].meta("session")
        g = group_of_session[session]
        actors = {"F": [a for a, gg in groups.items() if gg == g and gender[a] == "F"],
                  "M": [a for a, gg in groups.items() if gg == g and gender[a] == "M"]}
        cast = {sex: rng.choice(members) for sex, members in actors.items()}
        for u in dialogue:
            sex = u.meta("gender") or u.speaker[-1:]
            actor = cast.get(sex, cast["F"])
            path = rng.choice(pool[(actor, u.label)])
            audio = (ravdess_dir / path).resolve()
            extra = dict(u.extra)
            extra.update({"audio_actor": f"ravdess_{actor:02d}", "pairing": "constructed"})
            rows.append(Utterance(u.dialogue_id, u.utt_index, u.speaker, u.label, u.text,
                                  _relative(audio, out.parent), extra))
    write_manifest(out, rows)
    return out


def _relative(target: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(base))).as_posix()


# --------------------------------------------------------------------------- every voice we have

VOICE_CORPORA = ("ravdess", "crema_d", "tess")
"""The acted corpora whose actors voice the constructed dialogues of :func:`build_paired_voices`."""
_OTHER4 = {"ravdess": ("calm", "fearful", "disgust", "surprised"), "crema_d": ("fearful", "disgust"),
           "tess": ("fear", "disgust", "pleasant_surprise")}


@dataclass
class Voice:
    """One actor of an acted corpus and their clips, by 4-class label ('' = the other emotions)."""

    id: str
    corpus: str
    gender: str
    clips: dict[str, list[Path]]


def voices(data_dir: Path | None = None, corpora: Sequence[str] = VOICE_CORPORA,
           exclude: Sequence[str] = ()) -> list[Voice]:
    """Every actor of the acted corpora with clips of all four classes and of at least one other emotion
    (but those in ``exclude``)."""
    data_dir = data_dir or shared_data_dir()
    out: dict[str, Voice] = {}
    for corpus in corpora:
        folder = data_dir / corpus
        with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
            for c in csv.DictReader(f):
                if c.get("silent", "").strip() == "1" or c["speaker"] in exclude:
                    continue
                label = EMOTION4.get(c["emotion4"], "") if c["emotion4"] else ""
                if not label and c["emotion"] not in _OTHER4[corpus]:
                    continue
                v = out.setdefault(c["speaker"], Voice(c["speaker"], corpus, c["gender"], defaultdict(list)))
                v.clips[label].append((folder / c["path"]).resolve())
    return [v for v in out.values() if all(v.clips.get(k) for k in ("neutral", "happy", "sad", "angry", ""))]


def voice_groups(all_voices: Sequence[Voice], n_groups: int = 4, seed: int = 0) -> dict[str, int]:
    """Actor -> group: each (corpus, gender) dealt round robin after a seeded shuffle, so every group
    holds men and women of every corpus (a corpus with one actor lands in one group)."""
    rng = random.Random(seed)
    groups: dict[str, int] = {}
    turn = 0
    for corpus in VOICE_CORPORA:
        for gender in ("F", "M"):
            members = sorted(v.id for v in all_voices if v.corpus == corpus and v.gender == gender)
            rng.shuffle(members)
            for a in members:
                groups[a] = turn % n_groups
                turn += 1
    return groups


def build_paired_voices(text_manifest: Path, out: Path, data_dir: Path | None = None, seed: int = 0,
                        exclude: Sequence[str] = ()) -> Path:
    """Like :func:`build_paired`, with the actors of every acted corpus (RAVDESS, CREMA-D, TESS) as voices.

    IEMOCAP session *s* is voiced only by actor group *s* (:func:`voice_groups`), each dialogue's
    female and male speakers by one female and one male actor of that group, each turn by a clip of
    its label (a clip of another emotion for unlabeled context turns). ``audio_actor`` names the
    voice, ``audio_corpus`` its corpus. Actors in ``exclude`` voice nothing.
    """
    text = read_manifest(text_manifest)
    cast_pool = voices(data_dir, exclude=exclude)
    groups = voice_groups(cast_pool, seed=seed)
    by_id = {v.id: v for v in cast_pool}
    sessions = sorted({u.meta("session") for u in text.utterances})
    if len(sessions) > 4:
        raise ValueError(f"the pairing voices at most 4 sessions with 4 actor groups; found {sessions}")
    group_of_session = {s: i for i, s in enumerate(sessions)}
    rng = random.Random(seed)
    out = Path(out)
    rows: list[Utterance] = []
    for dialogue in text.dialogues():
        g = group_of_session[dialogue[0].meta("session")]
        members = {sex: sorted(a for a, gg in groups.items() if gg == g and by_id[a].gender == sex)
                   for sex in ("F", "M")}
        cast = {sex: by_id[rng.choice(m)] for sex, m in members.items() if m}
        for u in dialogue:
            sex = u.meta("gender") or u.speaker[-1:]
            voice = cast.get(sex) or cast["F"]
            audio = rng.choice(voice.clips[u.label])
            extra = dict(u.extra)
            extra.update({"audio_actor": voice.id, "audio_corpus": voice.corpus, "pairing": "constructed"})
            rows.append(Utterance(u.dialogue_id, u.utt_index, u.speaker, u.label, u.text,
                                  _relative(audio, out.parent), extra))
    write_manifest(out, rows)
    return out
