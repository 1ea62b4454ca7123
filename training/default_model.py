"""The data of the packaged default models, and their held-out test sets.

``python -m training.default_model`` writes, under ``runs/default/``:

- ``train.csv``: the constructed IEMOCAP-text x RAVDESS-audio dialogues of Sessions 1-3
  (see :mod:`training.pairing`), each twice: with the reference transcripts and with
  recognition noise matched to pocketsphinx's measured errors on the acted clips; plus
  the RAVDESS clips of the training actors and every TESS clip as dialogues of one,
  with their reference transcripts passed through the same matched noise;
- ``test-ravdess-asr.csv`` / ``test-ravdess-ref.csv``: the clips of the held-out RAVDESS
  actors (07, 08, 15, 16; never in training, neither as clips nor as dialogue voices), with
  recognized and with reference transcripts;
- ``test-dialogues-ref.csv`` / ``test-dialogues-asr.csv``: Session 4's constructed dialogues
  (held-out IEMOCAP speakers, voiced by the held-out actors), with reference transcripts and
  with matched recognition noise;
- ``noise.json``: the measured error rates.

Needs, from :mod:`training.transcribe` (``make default-model`` runs it): ``ravdess-4-asr-test.csv``
(the held-out actors' clips, recognized), ``ravdess-4-asr-sample.csv`` and ``tess-4-asr-sample.csv``
(random samples of training clips, recognized, to measure the recognizer's errors).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .data import REPO, Utterance, read_manifest, write_manifest
from .pairing import actor_groups, build_paired
from .textnoise import corrupt, measure

HELD_OUT_GROUP = 3
OUT = REPO / "runs" / "default"
MANIFESTS = REPO / "runs" / "manifests"


def _held_out_actors() -> set[str]:
    return {f"ravdess_{a:02d}" for a, g in actor_groups().items() if g == HELD_OUT_GROUP}


def build(out: Path = OUT, seed: int = 0) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rav = read_manifest(MANIFESTS / "ravdess-4.csv")
    tess = read_manifest(MANIFESTS / "tess-4.csv")
    rav_asr_test = read_manifest(MANIFESTS / "ravdess-4-asr-test.csv")
    samples = [read_manifest(MANIFESTS / f"{c}-4-asr-sample.csv") for c in ("ravdess", "tess")]
    pairs = [(u.meta("ref_text"), u.text) for m in samples for u in m.utterances]
    rates, vocab = measure(pairs)
    (out / "noise.json").write_text(json.dumps({"rates": asdict(rates), "wer": rates.wer,
                                                "vocabulary": len(vocab)}, indent=1) + "\n")
    paired_path = MANIFESTS / "paired-iemocap-ravdess.csv"
    if not paired_path.is_file():
        build_paired(MANIFESTS / "iemocap_text-4.csv", paired_path)
    paired = read_manifest(paired_path)
    held = _held_out_actors()
    sessions = sorted({u.meta("session") for u in paired.utterances})
    test_session = sessions[HELD_OUT_GROUP]
    rng = random.Random(seed)

    def absolute(m, u: Utterance) -> Utterance:  # type: ignore[no-untyped-def]
        p = m.audio_path(u)
        return replace(u, audio=str(p.resolve()) if p else "")

    def noisy(u: Utterance, suffix: str) -> Utterance:
        extra = dict(u.extra)
        extra["ref_text"] = u.text
        return replace(u, dialogue_id=u.dialogue_id + suffix, text=corrupt(u.text, rates, vocab, rng), extra=extra)

    train: list[Utterance] = []
    test_ref: list[Utterance] = []
    test_noisy: list[Utterance] = []
    for d in paired.dialogues():
        rows = [absolute(paired, u) for u in d]
        if rows[0].meta("session") == test_session:
            assert all(u.meta("audio_actor") in held for u in rows)
            test_ref += rows
            test_noisy += [noisy(u, "") for u in rows]
        else:
            assert not any(u.meta("audio_actor") in held for u in rows)
            train += rows + [noisy(u, "~asr") for u in rows]
    rav_train = [noisy(absolute(rav, u), "") for u in rav.utterances if u.speaker not in held]
    rav_test = [absolute(rav_asr_test, u) for u in rav_asr_test.utterances]
    assert rav_test and all(u.speaker in held for u in rav_test)
    train += rav_train + [noisy(absolute(tess, u), "") for u in tess.utterances]
    files = {
        "train": write_manifest(out / "train.csv", train),
        "test-ravdess-asr": write_manifest(out / "test-ravdess-asr.csv", rav_test),
        "test-ravdess-ref": write_manifest(out / "test-ravdess-ref.csv",
                                           [replace(u, text=u.meta("ref_text")) for u in rav_test]),
        "test-dialogues-ref": write_manifest(out / "test-dialogues-ref.csv", test_ref),
        "test-dialogues-asr": write_manifest(out / "test-dialogues-asr.csv", test_noisy),
    }
    return files


def main() -> int:
    for name, path in build().items():
        m = read_manifest(path)
        print(f"{name}: {path} ({len(m)} utterances, {len(m.dialogues())} dialogues)")
    print((OUT / "noise.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
