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
