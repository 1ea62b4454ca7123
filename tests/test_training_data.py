"""training.data and training.folds: manifest format, converters, speaker/script-disjoint folds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.__main__ import main
from training.data import (
    LABELS4,
    Manifest,
    ManifestError,
    Utterance,
    convert,
    format_rows,
    read_manifest,
    shared_data_dir,
    summarize,
    write_manifest,
)
from training.folds import (
    FoldError,
    check_disjoint,
    session_folds,
    speaker_folds,
    speaker_groups,
    speaker_script_folds,
    split_fold,
)

HEADER = "dialogue_id,utt_index,speaker,label,text,audio"

# --------------------------------------------------------------------------- IEMOCAP release fixture

# dialogue -> turns (utt id, start, end, label, text), listed out of time order on purpose
IEMOCAP_FIXTURE: dict[str, list[tuple[str, float, float, str, str]]] = {
    "Ses01F_impro01": [
        ("Ses01F_impro01_M000", 2.5, 3.5, "fru", "Do you have your forms?"),
        ("Ses01F_impro01_F000", 1.0, 2.0, "neu", "Excuse me."),
        ("Ses01F_impro01_M001", 10.25, 11.0, "xxx", "Hmm."),
        ("Ses01F_impro01_F001", 9.5, 10.0, "exc", "Yeah, finally!"),
    ],
    "Ses01F_script01_1": [
        ("Ses01F_script01_1_F000", 0.5, 1.5, "ang", "What is this?"),
        ("Ses01F_script01_1_M000", 2.0, 3.0, "sad", "I'm sorry."),
        ("Ses01F_script01_1_F001", 3.5, 4.0, "sur", "Oh."),
    ],
    "Ses02M_impro03": [
        ("Ses02M_impro03_M000", 0.7, 1.2, "hap", "We got in."),
        ("Ses02M_impro03_F000", 1.5, 2.0, "neu", "Really."),
    ],
    "Ses02M_script01_1": [
        ("Ses02M_script01_1_F000", 0.5, 1.5, "neu", "What is this?"),
        ("Ses02M_script01_1_M000", 2.0, 3.0, "ang", "I'm sorry."),
    ],
}


def build_iemocap_release(root: Path) -> Path:
    """A tiny IEMOCAP_full_release tree (2 sessions, scripted + improvised each) with 0.1 s WAVs."""
    release = root / "IEMOCAP_full_release"
    for dialogue, turns in IEMOCAP_FIXTURE.items():
        session = release / f"Session{int(dialogue[3:5])}"
        emo_dir, trans_dir = session / "dialog" / "EmoEvaluation", session / "dialog" / "transcriptions"
        (emo_dir / "Categorical").mkdir(parents=True, exist_ok=True)
        trans_dir.mkdir(parents=True, exist_ok=True)
        emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        trans = []
        for utt, start, end, label, text in turns:
            emo += [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
                    "C-E2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", ""]
            trans.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {text}")
            wav = session / "sentences" / "wav" / dialogue / f"{utt}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")
        trans.append("M: [BREATHING]")  # not a turn line: ignored
        (emo_dir / f"{dialogue}.txt").write_text("\n".join(emo) + "\n")
        (emo_dir / f"._{dialogue}.txt").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
        (trans_dir / f"{dialogue}.txt").write_text("\n".join(reversed(trans)) + "\n")
    return release


@pytest.fixture
def iemocap(tmp_path: Path) -> Manifest:
    build_iemocap_release(tmp_path / "corpus")
    return convert("iemocap_release", tmp_path / "corpus", tmp_path / "manifests" / "iemocap.csv")


def _wav(dialogue: str, utt: str) -> str:
    return f"../corpus/IEMOCAP_full_release/Session{int(dialogue[3:5])}/sentences/wav/{dialogue}/{utt}.wav"


def test_iemocap_release_converter_output(iemocap: Manifest) -> None:
    rows = [(u.dialogue_id, u.utt_index, u.speaker, u.label, u.text, u.extra["script_id"], u.extra["session"],
             u.extra["orig_label"]) for u in iemocap.utterances]
    assert rows == [
        ("Ses01F_impro01", 0, "Ses01F", "neutral", "Excuse me.", "", "Ses01", "neu"),
        ("Ses01F_impro01", 1, "Ses01M", "", "Do you have your forms?", "", "Ses01", "fru"),
        ("Ses01F_impro01", 2, "Ses01F", "happy", "Yeah, finally!", "", "Ses01", "exc"),
        ("Ses01F_impro01", 3, "Ses01M", "", "Hmm.", "", "Ses01", "xxx"),
        ("Ses01F_script01_1", 0, "Ses01F", "angry", "What is this?", "script01_1", "Ses01", "ang"),
        ("Ses01F_script01_1", 1, "Ses01M", "sad", "I'm sorry.", "script01_1", "Ses01", "sad"),
        ("Ses01F_script01_1", 2, "Ses01F", "", "Oh.", "script01_1", "Ses01", "sur"),
        ("Ses02M_impro03", 0, "Ses02M", "happy", "We got in.", "", "Ses02", "hap"),
        ("Ses02M_impro03", 1, "Ses02F", "neutral", "Really.", "", "Ses02", "neu"),
        ("Ses02M_script01_1", 0, "Ses02F", "neutral", "What is this?", "script01_1", "Ses02", "neu"),
        ("Ses02M_script01_1", 1, "Ses02M", "angry", "I'm sorry.", "script01_1", "Ses02", "ang"),
    ]
    assert [u.extra["gender"] for u in iemocap.utterances[:2]] == ["F", "M"]
    assert iemocap.labels() == LABELS4
    assert iemocap.speakers() == ["Ses01F", "Ses01M", "Ses02M", "Ses02F"]
    assert [len(d) for d in iemocap.dialogues()] == [4, 3, 2, 2]
    for u in iemocap.utterances:
        assert u.audio == _wav(u.dialogue_id, u.extra["utt_id"])
        path = iemocap.audio_path(u)
        assert path is not None and path.is_file()
        assert sf.info(str(path)).samplerate == 16000
    assert summarize(iemocap) == {"utterances": 11, "labeled": 8, "dialogues": 4, "speakers": 4,
                                  "labels": {"neutral": 3, "happy": 2, "sad": 1, "angry": 2}}
    # the manifest on disk validates with audio required
    read_manifest(iemocap.path, labels=LABELS4, require_audio=True)


def test_iemocap_release_all_labels(tmp_path: Path) -> None:
    build_iemocap_release(tmp_path)
    m = convert("iemocap_release", tmp_path / "IEMOCAP_full_release", tmp_path / "all.csv", labels="all")
    assert [u.label for u in m.dialogue("Ses01F_impro01")] == ["neu", "fru", "exc", ""]  # xxx: no agreement
    assert m.label_counts() == {"ang": 2, "exc": 1, "fru": 1, "hap": 1, "neu": 3, "sad": 1, "sur": 1}


def test_iemocap_release_custom_map(tmp_path: Path) -> None:
    build_iemocap_release(tmp_path)
    m = convert("iemocap_release", tmp_path, tmp_path / "m.csv", labels={"neu": "neutral", "fru": "angry"})
    assert m.labels() == ("neutral", "angry")
    assert [u.label for u in m.dialogue("Ses01F_impro01")] == ["neutral", "angry", "", ""]


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_iemocap_release(tmp_path)
    out = tmp_path / "out" / "m.csv"
    assert main(["convert", "iemocap_release", "--src", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "11 utterances (8 labeled), 4 dialogues, 4 speakers" in printed
    assert "neutral 3, happy 2, sad 1, angry 2" in printed
    assert len(read_manifest(out)) == 11
    assert main(["convert", "iemocap_release", "--src", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "source not found" in capsys.readouterr().err
    assert main(["convert", "iemocap_release", "--src", str(tmp_path), "--out", str(out), "--calm", "neutral"]) == 2
    assert "calm" in capsys.readouterr().err


# --------------------------------------------------------------------------- read_manifest / write_manifest


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_missing_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", ["dialogue_id,utt_index,speaker,label", "d,0,s,happy"])
    assert "missing columns: text, audio" in _error(path)


def test_unknown_label_names_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", [HEADER, "a,0,s,fear,x,", "b,0,s,happy,x,", "c,0,s,fear,x,", "d,0,s,,x,"])
    message = _error(path, labels=LABELS4)
    assert "rows 2, 4: unknown label 'fear'; allowed: neutral, happy, sad, angry" in message
    assert "row 5" not in message  # "" is an unlabeled context turn, always allowed
    assert len(read_manifest(path)) == 4  # no label set given: anything goes


def test_missing_audio_names_rows(tmp_path: Path) -> None:
    (tmp_path / "ok.wav").write_bytes(b"")
    lines = [HEADER] + [f"d{i},0,s,happy,x,clip{i}.wav" for i in range(3)] + ["e,0,s,happy,x,ok.wav", "f,0,s,sad,x,"]
    path = _write(tmp_path / "m.csv", lines)
    message = _error(path)
    assert "rows 2-4: audio file not found" in message and "clip0.wav, clip1.wav, clip2.wav" in message
    assert "rows 2-4: no audio" not in message
    assert "row 6: no audio" in _error(path, require_audio=True)
    assert len(read_manifest(path, require_audio=False)) == 5


def test_duplicate_and_gapped_indices(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", [HEADER, "d,0,s,happy,x,", "d,1,s,sad,x,", "d,1,t,sad,y,", "e,0,s,,x,",
                                       "e,2,s,sad,x,", "f,x,s,sad,x,"])
    message = _error(path)
    assert "rows 3, 4: duplicate (dialogue_id, utt_index): ('d', 1)" in message
    assert "rows 5, 6: utt_index not 0..n-1 within its dialogue: 'e' has 0, 2" in message
    assert "row 7: utt_index is not an integer >= 0: 'x'" in message


def test_many_bad_rows_are_cut_short(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", [HEADER] + [f"d{i},0,s,{'fear' if i % 2 else 'sad'},x," for i in range(40)])
    message = _error(path, labels=LABELS4)
    assert "rows 3, 5, 7, 9, 11, 13, 15, 17, 19, 21 and 10 more: unknown label 'fear'" in message
    assert format_rows([5, 6, 7, 9]) == "rows 5-7, 9"
    assert format_rows([4]) == "row 4"


def test_round_trip(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"")
    utterances = [
        Utterance("dlg,1", 0, "A", "happy", 'He said "hi", then left.\nNew line; ünïcødé ☺', "audio/a.wav",
                  {"corpus": "x", "session": "S1", "custom": "1"}),
        Utterance("dlg,1", 1, "B|C", "", "together", "", {"corpus": "x", "session": "S1", "custom": ""}),
        Utterance("solo", 0, "A", "angry", "", "", {"corpus": "x", "session": "S2", "custom": "2"}),
    ]
    path = write_manifest(tmp_path / "m.csv", reversed(utterances))
    assert path.read_text(encoding="utf-8").splitlines()[0] == HEADER + ",corpus,session,custom"
    m = read_manifest(path, labels=LABELS4)
    assert sorted(m.utterances, key=lambda u: (u.dialogue_id, u.utt_index)) == utterances
    assert [[u.utt_index for u in d] for d in m.dialogues()] == [[0], [0, 1]]  # first-seen order, time order inside
    assert m.speakers() == ["A", "B", "C"]
    assert m.audio_path(utterances[0]) == path.parent / "audio" / "a.wav"
    assert m.audio_path(utterances[1]) is None


# --------------------------------------------------------------------------- folds


def test_folds_on_fixture(iemocap: Manifest) -> None:
    sessions = session_folds(iemocap)
    assert [(f.name, f.train, f.test) for f in sessions] == [
        ("session Ses01", ("Ses02M_impro03", "Ses02M_script01_1"), ("Ses01F_impro01", "Ses01F_script01_1")),
        ("session Ses02", ("Ses01F_impro01", "Ses01F_script01_1"), ("Ses02M_impro03", "Ses02M_script01_1")),
    ]
    speakers = speaker_folds(iemocap)
    assert [(f.train, f.test) for f in speakers] == [(f.train, f.test) for f in sessions]  # IEMOCAP: the same
    assert speakers[0].name == "test speakers Ses01F, Ses01M"
    for f in speakers:
        check_disjoint(iemocap, f, by=("speaker",))
    with pytest.raises(FoldError, match="script_id in both train and test: script01_1"):
        check_disjoint(iemocap, speakers[0], by=("speaker", "script_id"))

    scripted = speaker_script_folds(iemocap)
    assert [(f.train, f.test) for f in scripted] == [
        (("Ses02M_impro03",), ("Ses01F_impro01", "Ses01F_script01_1")),
        (("Ses01F_impro01",), ("Ses02M_impro03", "Ses02M_script01_1")),
    ]
    for f in scripted:
        check_disjoint(iemocap, f, by=("speaker", "script_id"))


def _clips(n_speakers: int, per_speaker: int) -> Manifest:
    return Manifest(Path("m.csv"), [
        Utterance(f"c{s}_{i}", 0, f"spk{s:02d}", LABELS4[i % 4], "", "", {"script_id": f"sentence{i % 2}"})
        for s in range(n_speakers) for i in range(per_speaker)
    ])


def test_speaker_folds_k_groups_are_balanced_and_seeded() -> None:
    m = _clips(10, 4)
    assert len(speaker_folds(m)) == 10  # leave one speaker out
    folds = speaker_folds(m, k=3, seed=1)
    assert folds == speaker_folds(m, k=3, seed=1)
    assert sorted(len(f.test) for f in folds) == [12, 12, 16]
    assert sorted(d for f in folds for d in f.test) == sorted(m.dialogue_ids())  # every dialogue tested once
    assert [f.test for f in folds] != [f.test for f in speaker_folds(m, k=3, seed=2)]
    for f in folds:
        check_disjoint(m, f)
    with pytest.raises(FoldError, match="k must be between 2 and"):
        speaker_folds(m, k=11)


def test_speaker_script_folds_split_by_script() -> None:
    m = _clips(4, 4)
    with pytest.raises(FoldError, match="split_test_by_script"):
        speaker_script_folds(m, k=2)
    folds = speaker_script_folds(m, k=2, split_test_by_script=True)
    assert len(folds) == 4
    for f in folds:
        check_disjoint(m, f, by=("speaker", "script_id"))
        assert len(f.test) == 4 and len(f.train) == 4


def test_speakers_linked_by_dialogues_cannot_be_split() -> None:
    m = Manifest(Path("m.csv"), [Utterance("d1", 0, "A", "sad", "", ""), Utterance("d1", 1, "B", "sad", "", ""),
                                 Utterance("d2", 0, "B|C", "sad", "", ""), Utterance("d3", 0, "C", "sad", "", "")])
    assert [sorted(s) for s, _ in speaker_groups(m)] == [["A", "B", "C"]]
    with pytest.raises(FoldError, match="at least 2 groups"):
        speaker_folds(m)


def test_check_disjoint_catches_shared_dialogues(iemocap: Manifest) -> None:
    from training.folds import Fold

    with pytest.raises(FoldError, match="in both train and test"):
        check_disjoint(iemocap, Fold("bad", ("Ses01F_impro01",), ("Ses01F_impro01",)), by=())
    with pytest.raises(FoldError, match="speaker in both train and test: Ses01F, Ses01M"):
        check_disjoint(iemocap, Fold("bad", ("Ses01F_impro01",), ("Ses01F_script01_1",)))


# --------------------------------------------------------------------------- the real shared data


def _shared(folder: str) -> Path:
    path = shared_data_dir() / folder
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data is absent here; set REALTIME_SER_SHARED_DATA)")
    return path


def _report(name: str, m: Manifest) -> dict[str, object]:
    info = summarize(m)
    print(f"{name}: {info}")
    return info


@pytest.mark.shared_data
def test_real_iemocap_text(tmp_path: Path) -> None:
    m = convert("iemocap_text", _shared("iemocap_text"), tmp_path / "iemocap.csv")
    assert _report("iemocap_text", m) == {
        "utterances": 5810, "labeled": 4342, "dialogues": 120, "speakers": 8,
        "labels": {"neutral": 1324, "happy": 1246, "sad": 839, "angry": 933},
    }
    assert m.speakers() == ["Ses01F", "Ses01M", "Ses02F", "Ses02M", "Ses03M", "Ses03F", "Ses04M", "Ses04F"]
    assert Counter(u.extra["orig_label"] for u in m.utterances if not u.labeled) == {"fru": 1468}
    assert Counter(u.extra["orig_label"] for u in m.utterances if u.label == "happy") == {"hap": 504, "exc": 742}
    scripts = {u.extra["script_id"] for u in m.utterances} - {""}
    assert len(scripts) == 7 and all("script" in u.dialogue_id for u in m.utterances if u.extra["script_id"])

    sessions = session_folds(m)
    assert [(f.train, f.test) for f in speaker_folds(m)] == [(f.train, f.test) for f in sessions]
    for f in sessions:
        check_disjoint(m, f, by=("speaker", "session"))
    for f in speaker_script_folds(m):
        check_disjoint(m, f, by=("speaker", "script_id"))
        # every session holds all 7 scripts, so only improvised dialogues are left to train on
        assert f.train and all("_impro" in d for d in f.train)
        print(f"{f.name}: train {len(f.train)} dialogues, test {len(f.test)}")


@pytest.mark.shared_data
def test_real_ravdess_and_tess(tmp_path: Path) -> None:
    ravdess = _shared("ravdess")
    m4 = convert("ravdess", ravdess, tmp_path / "r4.csv")
    assert _report("ravdess 4", m4) == {"utterances": 560, "labeled": 560, "dialogues": 560, "speakers": 20,
                                        "labels": {"neutral": 80, "happy": 160, "sad": 160, "angry": 160}}
    # per actor: neutral 2 sentences x 2 repetitions (normal only) + 3 emotions x 2 x 2 x 2 intensities = 28
    assert set(Counter(u.speaker for u in m4.utterances).values()) == {28}
    assert {u.extra["script_id"] for u in m4.utterances} == {"Kids are talking by the door",
                                                            "Dogs are sitting by the door"}
    assert all(p is not None and p.is_file() for p in map(m4.audio_path, m4.utterances[:20]))
    all8 = convert("ravdess", ravdess, tmp_path / "r8.csv", labels="all")
    assert _report("ravdess all", all8)["utterances"] == 1200 and len(all8.labels()) == 8
    calm = convert("ravdess", ravdess, tmp_path / "rc.csv", calm="neutral")
    assert calm.label_counts()["neutral"] == 240
    folds = speaker_script_folds(m4, k=5, split_test_by_script=True)
    assert len(folds) == 10
    for f in folds:
        check_disjoint(m4, f, by=("speaker", "script_id"))

    tess = convert("tess", _shared("tess"), tmp_path / "t.csv")
    assert _report("tess 4", tess) == {"utterances": 799, "labeled": 799, "dialogues": 799, "speakers": 1,
                                       "labels": {"neutral": 200, "happy": 200, "sad": 200, "angry": 199}}
    assert len(convert("tess", _shared("tess"), tmp_path / "t7.csv", labels="all")) == 1399
    with pytest.raises(FoldError):
        speaker_folds(tess)


@pytest.mark.shared_data
def test_real_meld_and_emorynlp(tmp_path: Path) -> None:
    meld = convert("meld", _shared("meld_text"), tmp_path / "meld.csv")
    assert _report("meld", meld) == {"utterances": 11098, "labeled": 9142, "dialogues": 1152, "speakers": 274,
                                     "labels": {"neutral": 5180, "happy": 1906, "sad": 794, "angry": 1262}}
    assert Counter(u.extra["split"] for u in meld.utterances) == {"train": 9989, "dev": 1109}
    dev = split_fold(meld, "dev")
    assert (len(dev.train), len(dev.test)) == (1038, 114)
    with pytest.raises(FoldError):  # the Friends cast links every speaker
        speaker_folds(meld)

    emory = convert("emorynlp", _shared("emorynlp_text"), tmp_path / "emorynlp.csv")
    assert _report("emorynlp", emory) == {"utterances": 9489, "labeled": 6757, "dialogues": 827, "speakers": 238,
                                          "labels": {"neutral": 3095, "happy": 2099, "sad": 595, "angry": 968}}
    joint = [u for u in emory.utterances if len(u.speakers) > 1]
    assert len(joint) == 61 and all("|" in u.speaker for u in joint)
    assert Counter(u.extra["split"] for u in emory.utterances) == {"train": 7551, "dev": 954, "test": 984}
    with pytest.raises(FoldError, match="too unbalanced"):  # 236 of 238 speakers are one linked group
        speaker_folds(emory)
    test = split_fold(emory)
    assert (len(test.train), len(test.test)) == (748, 79)


def test_asr_emotion_held_out_model_is_trained_again_when_the_recipe_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m training.asr_emotion`` keeps its held-out model while neither the training rows nor
    the recipe (``configs/train/default.toml``, resolved) change, and trains it again when one does."""
    from training import asr_emotion, train

    trained: list[dict] = []

    def fake_export(cfg: train.ExperimentConfig, out: Path, **_: object) -> None:
        trained.append(cfg.to_dict())
        out.mkdir(parents=True, exist_ok=True)
        (out / "card.json").write_text("{}")

    overrides: list[str] = []
    real_load = train.load_config
    monkeypatch.setattr(train, "export_final", fake_export)
    monkeypatch.setattr(train, "load_config", lambda path, sets: real_load(path, [*sets, *overrides]))
    rows = [Utterance(f"d{g}", 0, f"s{g}", "happy", "hi", "", {"group": g}) for g in "0123"]
    manifest = Manifest(tmp_path / "all.csv", rows)
    for _ in range(2):
        asr_emotion.held_out_model(manifest, "3", tmp_path)
    assert len(trained) == 1
    overrides.append("train.weight_average = 0.9")
    asr_emotion.held_out_model(manifest, "3", tmp_path)
    assert len(trained) == 2 and trained[1]["train"]["weight_average"] == 0.9
    asr_emotion.held_out_model(Manifest(tmp_path / "all.csv", rows[1:]), "3", tmp_path)
    assert len(trained) == 3
