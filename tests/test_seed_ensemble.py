"""training.seed_ensemble: seeds pooled from several runs, disjoint groups, refused mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.seed_ensemble import main

LABELS = ["neutral", "angry"]
Y = np.array([0, 0, 0, 1, 1, 1])
FOLD = np.array([0, 0, 0, 1, 1, 1])


def _probs(wrong: list[int]) -> np.ndarray:
    """Right with 0.9 on every turn but those in ``wrong``, where it leans to the other class with 0.6."""
    p = np.zeros((len(Y), 2))
    for i, c in enumerate(Y):
        conf = 0.4 if i in wrong else 0.9
        p[i, c], p[i, 1 - c] = conf, 1 - conf
    return p


def _run(folder: Path, name: str, seeds: dict[int, np.ndarray], variants: tuple[str, ...] = ("base",),
         fold: np.ndarray = FOLD, kind: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True)
    docs = []
    for i, variant in enumerate(variants, 1):
        order = sorted(seeds)
        np.savez_compressed(folder / f"predictions-{i}.npz", logits=np.concatenate([seeds[s] for s in order]),
                            y=np.tile(Y, len(order)), fold=np.tile(fold, len(order)),
                            seed=np.repeat(order, len(Y)),
                            **({"by:kind": np.tile(kind, len(order))} if kind is not None else {}))
        docs.append({"variant": variant, "config": {"model": {"labels": LABELS}},
                     "predictions": f"predictions-{i}.npz"})
    (folder / "metrics.json").write_text(json.dumps({"name": name, "variants": docs}))
    return folder


def test_seeds_of_two_runs_form_disjoint_ensembles(tmp_path: Path) -> None:
    # Each seed is wrong on a different pair of turns; three of them averaged are right on all six.
    first = _run(tmp_path / "a", "cfg", {0: _probs([0, 3]), 1: _probs([1, 4]), 2: _probs([2, 5])})
    second = _run(tmp_path / "b", "cfg", {3: _probs([0, 3]), 4: _probs([1, 4]), 5: _probs([2, 5]),
                                         6: _probs([])})
    out = tmp_path / "out" / "ens"
    assert main([str(first), str(second), "--out", str(out)]) == 0
    [r] = json.loads(out.with_suffix(".json").read_text())
    assert r["seeds"] == [0, 1, 2, 3, 4, 5, 6] and r["groups"] == [[0, 1, 2], [3, 4, 5]]  # seed 6 left over
    assert r["single"]["weighted_accuracy"]["mean"] == pytest.approx((6 * 4 / 6 + 1) / 7)
    assert r["ensemble"]["weighted_accuracy"]["mean"] == pytest.approx(1.0)
    assert r["ensemble"]["weighted_accuracy"]["std"] == pytest.approx(0.0)
    assert "| cfg | 6 | 0-6 |" in out.with_suffix(".md").read_text()


def test_mismatched_runs_and_ambiguous_variants_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = _run(tmp_path / "a", "cfg", {0: _probs([]), 1: _probs([])})
    other_folds = _run(tmp_path / "b", "cfg", {2: _probs([])}, fold=np.array([1, 1, 1, 0, 0, 0]))
    assert main([str(first), str(other_folds), "--out", str(tmp_path / "x")]) == 2
    assert "does not score the same test turns" in capsys.readouterr().err
    twice = _run(tmp_path / "c", "cfg", {1: _probs([])})
    assert main([str(first), str(twice), "--out", str(tmp_path / "x")]) == 2
    assert "seed 1 of cfg is already given" in capsys.readouterr().err
    grid = _run(tmp_path / "d", "cfg", {0: _probs([])}, variants=("audio=speech", "audio=acoustic"))
    assert main([str(grid), "--out", str(tmp_path / "x")]) == 2
    assert "name one as" in capsys.readouterr().err
    assert main([f"{grid}:audio=acoustic", "--out", str(tmp_path / "x")]) == 0
    assert main([f"{grid}:nope", "--out", str(tmp_path / "x")]) == 2
    assert "no variant 'nope'" in capsys.readouterr().err


def test_each_value_of_a_report_by_column_is_scored_apart(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Seeds 0 and 1 both wrong on turn 0 (a clip), each right on every dialogue turn but one of its own.
    kind = np.array(["clip", "clip", "dialogue", "dialogue", "dialogue", "clip"])
    run = _run(tmp_path / "a", "cfg", {0: _probs([0, 2]), 1: _probs([0, 3])}, kind=kind)
    out = tmp_path / "ens"
    assert main([str(run), "--k", "2", "--by", "kind", "--out", str(out)]) == 0
    [r] = json.loads(out.with_suffix(".json").read_text())
    clip, dialogue = r["by"]["kind"]["clip"], r["by"]["kind"]["dialogue"]
    assert clip["n"] == 3 and dialogue["n"] == 3
    assert clip["single"]["weighted_accuracy"]["mean"] == pytest.approx(2 / 3)
    assert clip["ensemble"]["weighted_accuracy"]["mean"] == pytest.approx(2 / 3)  # the same mistake stays
    assert dialogue["single"]["weighted_accuracy"]["mean"] == pytest.approx(2 / 3)
    assert dialogue["ensemble"]["weighted_accuracy"]["mean"] == pytest.approx(1.0)  # different mistakes cancel
    assert "| cfg, kind = dialogue | 3 | 0-1 |" in out.with_suffix(".md").read_text()
    assert main([str(run), "--k", "2", "--by", "corpus", "--out", str(out)]) == 2
    assert "kept no column 'corpus'; it has: kind" in capsys.readouterr().err


def test_log_probabilities_average_to_a_normalized_geometric_mean(tmp_path: Path) -> None:
    from training.seed_ensemble import combine

    a, b = np.array([[0.9, 0.1]]), np.array([[0.5, 0.5]])
    np.testing.assert_allclose(combine([a, b]), [[0.7, 0.3]])
    g = np.sqrt([0.45, 0.05])
    np.testing.assert_allclose(combine([a, b], "logprobs"), [g / g.sum()])
    # Two confident models that agree stay as confident; their arithmetic mean with a hesitant one is less so.
    run = _run(tmp_path / "a", "cfg", {0: _probs([]), 1: _probs([]), 2: _probs([0])})
    out = tmp_path / "ens"
    assert main([str(run), "--combine", "logprobs", "--out", str(out)]) == 0
    [r] = json.loads(out.with_suffix(".json").read_text())
    assert r["combine"] == "logprobs" and r["ensemble"]["weighted_accuracy"]["mean"] == pytest.approx(1.0)
    assert "log-probabilities averaged" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="combine must be one of"):
        combine([a], "median")


def test_runs_of_different_models_form_ensembles_across_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Two configs (two text encoders, say) with the same seeds: each ensemble takes one seed of each.
    a = _run(tmp_path / "a", "cfg", {0: _probs([0, 3]), 1: _probs([1])})
    b = _run(tmp_path / "b", "cfg", {0: _probs([0]), 1: _probs([2]), 2: _probs([4])})
    c = _run(tmp_path / "c", "other", {5: _probs([0, 4]), 7: _probs([])})
    out = tmp_path / "ens"
    assert main([str(a), str(b), "--out", str(out)]) == 2  # as seeds of one config, seed 0 twice
    assert "already given" in capsys.readouterr().err
    assert main([str(a), str(b), str(c), "--across", "mix", "--combine", "logprobs", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in results] == [str(a), str(b), str(c), "mix"]
    mix = results[-1]
    assert mix["across"] == [str(a), str(b), str(c)] and mix["k"] == 3
    assert mix["groups"] == [[f"{a}:0", f"{b}:0", f"{c}:5"], [f"{a}:1", f"{b}:1", f"{c}:7"]]  # b's seed 2 unused
    assert mix["seeds"] == [f"{a}:0", f"{a}:1", f"{b}:0", f"{b}:1", f"{b}:2", f"{c}:5", f"{c}:7"]
    assert mix["single"]["weighted_accuracy"]["mean"] == pytest.approx((4 + 5 + 5 + 5 + 5 + 4 + 6) / 7 / 6)
    # Ensemble 0: all three wrong on turn 0, two of three right on turns 3 and 4; ensemble 1 right on all.
    each = [e["weighted_accuracy"] for e in mix["ensemble_each"]]
    assert each == pytest.approx([5 / 6, 1.0])
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Models of several runs averaged across them") and "| mix | 6 | 7 models |" in text
    other_labels = _run(tmp_path / "d", "cfg", {0: _probs([])})
    doc = json.loads((other_labels / "metrics.json").read_text())
    doc["variants"][0]["config"]["model"]["labels"] = ["happy", "sad"]
    (other_labels / "metrics.json").write_text(json.dumps(doc))
    assert main([str(a), str(other_labels), "--across", "mix", "--out", str(out)]) == 2
    assert "differ from" in capsys.readouterr().err
    assert main([str(a), "--across", "mix", "--out", str(out)]) == 2
    assert "at least two runs" in capsys.readouterr().err
