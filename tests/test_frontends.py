"""training.frontends: folds, scores, the choice rule, and a quick run on real clips."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.data import Manifest, Utterance, shared_data_dir
from training.folds import check_disjoint
from training.frontends import (
    ClassifierConfig,
    choose,
    fit_predict,
    gender_balanced_folds,
    main,
    make_frontend,
    opensmile_available,
    scores,
    stratified_folds,
    summary,
)


def clip_manifest(males: int, females: int, clips_each: int = 3) -> Manifest:
    utts = [
        Utterance(f"{s}_{i}", 0, s, "happy", "", "", {"gender": g})
        for g, n in (("M", males), ("F", females))
        for k in range(n)
        for s in [f"{g}{k:02d}"]
        for i in range(clips_each)
    ]
    return Manifest(Path("manifest.csv"), utts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gender_balanced_folds_are_speaker_disjoint_and_balanced(seed: int) -> None:
    manifest = clip_manifest(10, 10)
    folds = gender_balanced_folds(manifest, 5, seed)
    assert len(folds) == 5
    tested = [d for f in folds for d in f.test]
    assert sorted(tested) == sorted(manifest.dialogue_ids())  # every clip tested exactly once
    for fold in folds:
        check_disjoint(manifest, fold)
        speakers = {manifest.dialogue(d)[0].speaker for d in fold.test}
        assert sorted(s[0] for s in speakers) == ["F", "F", "M", "M"]


def test_gender_balanced_folds_depend_on_the_seed_and_refuse_uneven_genders() -> None:
    manifest = clip_manifest(10, 10)
    assert gender_balanced_folds(manifest, 5, 0) != gender_balanced_folds(manifest, 5, 1)
    assert gender_balanced_folds(manifest, 5, 0) == gender_balanced_folds(manifest, 5, 0)
    with pytest.raises(ValueError, match="do not split into 5 equal folds"):
        gender_balanced_folds(clip_manifest(9, 10), 5, 0)


def test_stratified_folds_partition_and_spread_each_label() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 21
    folds = stratified_folds(labels, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))
    for fold in folds:
        counts = {lab: sum(labels[i] == lab for i in fold) for lab in "abc"}
        assert counts["a"] == 10 and counts["b"] == 6 and counts["c"] in (4, 5)


def test_scores_accuracy_and_uar() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 0, 0, 0, 1])
    s = scores(y, p)
    assert s["accuracy"] == pytest.approx(100 * 5 / 6)
    assert s["uar"] == pytest.approx(100 * (1.0 + 0.5) / 2)
    agg = summary([{"accuracy": 50.0, "uar": 40.0}, {"accuracy": 60.0, "uar": 40.0}])
    assert agg["accuracy"]["mean"] == 55.0 and agg["accuracy"]["std"] == pytest.approx(math.sqrt(50))
    assert agg["uar"]["std"] == 0.0


def test_classifier_learns_a_separable_problem_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 20)) * 3
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.standard_normal((120, 20))
    cfg = ClassifierConfig(epochs=20)
    pred = fit_predict(x[::2], y[::2], x[1::2], 3, seed=0, config=cfg)
    assert np.mean(pred == y[1::2]) > 0.9
    assert np.array_equal(pred, fit_predict(x[::2], y[::2], x[1::2], 3, seed=0, config=cfg))


def _acc(ours: float, other: float, std: float = 0.5) -> dict[str, Any]:
    def task(v: float) -> dict[str, Any]:
        return {"uar": {"mean": v, "std": std}}

    return {"ours": {t: task(ours) for t in ("ravdess8_speaker_cv", "ravdess4_speaker_cv")},
            "egemaps": {t: task(other) for t in ("ravdess8_speaker_cv", "ravdess4_speaker_cv")}}


def test_choice_keeps_ours_unless_opensmile_is_clearly_better() -> None:
    assert choose(_acc(50.0, 51.5))["frontend"] == "ours"  # within the 2-point margin
    assert choose(_acc(50.0, 53.0, std=2.0))["frontend"] == "ours"  # within 2 std
    assert choose(_acc(50.0, 53.0))["frontend"] == "egemaps"
    assert choose(_acc(50.0, 45.0))["uar_margin_over_ours"]["egemaps"]["ravdess4_speaker_cv"] == -5.0


def test_unknown_front_end_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="ours, egemaps, compare"):
        make_frontend("mfcc")
    assert main(["--frontends", "ours,mfcc", "--data", str(shared_data_dir())]) == 2 or not shared_data_dir().is_dir()


def test_missing_data_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--data", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.shared_data
@pytest.mark.slow
def test_quick_run_writes_every_table(tmp_path: Path) -> None:
    data = shared_data_dir()
    if not ((data / "ravdess" / "manifest.csv").is_file() and (data / "tess" / "manifest.csv").is_file()):
        pytest.skip(f"needs RAVDESS and TESS in {data} (absent here; set REALTIME_SER_SHARED_DATA)")
    if not opensmile_available():
        pytest.skip("needs the opensmile package (pip install opensmile) for the eGeMAPS front end")
    out = tmp_path / "results"
    assert main(["--quick", "--data", str(data), "--out-dir", str(out), "--cache", str(tmp_path / "cache")]) == 0
    report = json.loads((out / "frontends.json").read_text())
    assert report["settings"]["quick"] is True
    assert report["git_commit"] and report["machine"]["cpu_count"]
    assert set(report["timing"]) == {"ours", "egemaps", "ours+egemaps"}
    assert report["timing"]["ours"]["dim"] == 75 and report["timing"]["egemaps"]["dim"] == 88
    for name in ("ours", "egemaps", "ours+egemaps"):
        tasks = report["accuracy"][name]
        assert {"ravdess8_speaker_cv", "ravdess4_speaker_cv", "tess7_within", "tess4_within",
                "ravdess4_to_tess4", "tess4_to_ravdess4"} <= set(tasks)
        for result in tasks.values():
            assert 0.0 <= result["accuracy"]["mean"] <= 100.0 and 0.0 <= result["uar"]["mean"] <= 100.0
    assert set(report["augmentation"]) == {"none", "augmented", "telephone", "augmented+telephone"}
    for by_test in report["augmentation"].values():
        assert set(by_test) == set(report["augmentation_tests"]) and len(by_test) == 4
    assert report["choice"]["frontend"] in ("ours", "egemaps", "ours+egemaps")
    md = (out / "frontends.md").read_text()
    for heading in ("## (a) Extraction time", "## (b) Accuracy", "## (c) What augmentation buys",
                    "## Runtime front end", "audEERING"):
        assert heading in md
    # The feature cache is filled, under each front end's name.
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {"ours", "egemaps"}
