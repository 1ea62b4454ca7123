"""The data of the packaged models: every voice we have, in four groups for honest held-out figures.

``python -m training.default_model`` writes ``runs/default/all.csv``: everything the packaged
models are trained on, each row with the ``group`` (0-3) it is held out with in the
cross-validation of ``configs/train/default_cv.toml``:

- **Constructed dialogues** (:func:`training.pairing.build_paired_voices`): IEMOCAP Sessions 1-4,
  each voiced by the actors of one voice group (RAVDESS, CREMA-D and TESS actors mixed), twice:
  with the reference transcripts (``kind = dialogue_ref``) and with recognition noise matched to
  the recognizer's measured errors on the acted clips (``dialogue_asr``);
- **Acted clips** (``kind = clip``): every 4-class clip of RAVDESS, CREMA-D and TESS as a dialogue of
  one, in its actor's voice group, with its (lexically neutral) sentence under the same noise.

So group *g* holds IEMOCAP session *g*'s speakers and dialogues and the voices of group *g*: a
model trained on the other three groups has heard neither the voices, nor the speakers, nor the
dialogues it is tested on. ``voice_corpus`` names the corpus of the voice of every row. The two
actors of the bundled ``demo-voices`` recording are in none of it.

Also writes ``noise.json`` (the measured error rates). Needs, from :mod:`training.transcribe`
(``make default-model`` runs it), ``ravdess-4-asr-sample.csv`` and ``tess-4-asr-sample.csv``:
random samples of clips, recognized, to measure the recognizer's errors.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .data import REPO, Utterance, convert, read_manifest, write_manifest
from .demo_voices import DEMO_ACTORS
from .pairing import VOICE_CORPORA, build_paired_voices, voice_groups, voices
from .textnoise import corrupt, measure

OUT = REPO / "runs" / "default"
MANIFESTS = REPO / "runs" / "manifests"


def _manifest(name: str) -> Path:
    path = MANIFESTS / f"{name}-4.csv"
    if not path.is_file():
        convert(name, None, path, labels="4")
    return path


def build(out: Path = OUT, seed: int = 0) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    samples = [read_manifest(MANIFESTS / f"{c}-4-asr-sample.csv") for c in ("ravdess", "tess")]
    pairs = [(u.meta("ref_text"), u.text) for m in samples for u in m.utterances]
    rates, vocab = measure(pairs)
    (out / "noise.json").write_text(json.dumps({"rates": asdict(rates), "wer": rates.wer,
                                                "vocabulary": len(vocab)}, indent=1) + "\n")
    paired_path = MANIFESTS / "paired-iemocap-voices.csv"
    build_paired_voices(_manifest("iemocap_text"), paired_path, seed=seed, exclude=DEMO_ACTORS)
    paired = read_manifest(paired_path)
    groups = voice_groups(voices(exclude=DEMO_ACTORS), seed=seed)
    sessions = sorted({u.meta("session") for u in paired.utterances})
    rng = random.Random(seed)

    def row(u: Utterance, path: Path | None, **extra: str) -> Utterance:
        meta = {**u.extra, **extra}
        return replace(u, audio=str(path.resolve()) if path else "", extra=meta)

    def noisy(u: Utterance, suffix: str, **extra: str) -> Utterance:
        return replace(u, dialogue_id=u.dialogue_id + suffix, text=corrupt(u.text, rates, vocab, rng),
                       extra={**u.extra, "ref_text": u.text, **extra})

    rows: list[Utterance] = []
    for d in paired.dialogues():
        group = str(sessions.index(d[0].meta("session")))
        assert all(str(groups[u.meta("audio_actor")]) == group for u in d)
        ref = [row(u, paired.audio_path(u), group=group, kind="dialogue_ref", voice_corpus=u.meta("audio_corpus"))
               for u in d]
        rows += ref
        rows += [noisy(u, "~asr", kind="dialogue_asr") for u in ref]
    for corpus in VOICE_CORPORA:
        clips = read_manifest(_manifest(corpus))
        for u in clips.utterances:
            if u.speaker not in groups:
                continue  # the demo's actors, and any actor without clips of every class
            clip = row(u, clips.audio_path(u), group=str(groups[u.speaker]), kind="clip", voice_corpus=corpus)
            rows.append(noisy(clip, ""))
    return {"all": write_manifest(out / "all.csv", rows)}


def main() -> int:
    for name, path in build().items():
        m = read_manifest(path)
        kinds: dict[str, int] = {}
        for u in m.utterances:
            kinds[u.meta("kind")] = kinds.get(u.meta("kind"), 0) + 1
        print(f"{name}: {path} ({len(m)} utterances, {len(m.dialogues())} dialogues; {kinds})")
    print((OUT / "noise.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
