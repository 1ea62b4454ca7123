"""A text encoder that learned the task: all-MiniLM-L6-v2 fine-tuned on emotional dialogue lines.

The packaged sentence encoder was trained to tell what sentences are *about*; whether a line
sounds angry or sad is only a faint direction in its space. Fine-tuning its top layers on
labeled conversational lines (IEMOCAP, and MELD and EmoryNLP from the Friends series, under one
4-class map: see :data:`training.data.LABEL_MAPS`) makes the emotion the main direction, while
the dialogue model on top keeps reading the context of the earlier turns.

- **What is trained.** The top :attr:`FinetuneConfig.layers` transformer layers (the lower ones
  stay frozen: cheaper on a CPU, and they hold the general language knowledge), through the same
  mean pooling and L2 normalisation the runtime applies, with a linear classifier on top that is
  thrown away afterwards: the dialogue model reads the encoder's sentence vectors.
- **What is kept.** Only the trained layers, as float16 arrays (:func:`save_delta`, a few MB).
  :func:`realtime_ser.features.text.prepare_finetuned_encoder` rebuilds the encoder from the
  installed all-MiniLM-L6-v2 and those layers and exports it to ONNX like the plain one; the
  trainer computes its text features with that very ONNX export, as the runtime would.
- **Result** (``configs/train/text_finetuned.toml``, training/RESULTS.md): on IEMOCAP's session
  folds the causal dialogue model gains nothing over the frozen encoder (73.2% against 73.4%),
  the offline one 2.5 points; the packaged models keep the frozen encoder.
- **Folds.** An experiment fine-tunes one encoder per fold on that fold's training dialogues only
  (the test session's lines are never seen, neither by the encoder nor by the dialogue model).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    layers: int = 2
    """Top transformer layers trained (of 6); the rest stay frozen."""
    epochs: int = 3
    batch_size: int = 32
    lr: float = 4e-5
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    max_length: int = 64
    """Tokens per line in training (longer lines are cut; the runtime reads up to 128)."""
    scale: float = 20.0
    """The classifier reads the L2-normalised sentence vector times this (a cosine classifier)."""
    seed: int = 0
    threads: int = 2


def _labels_index(labels: Sequence[str]) -> dict[str, int]:
    return {lab: i for i, lab in enumerate(labels)}


_BOTTOM: dict[tuple[str, int, int], Any] = {}
"""Outputs of the frozen lower layers per (line, max_length, frozen layers), kept for the process:
every fold of an experiment fine-tunes on mostly the same lines."""


def _bottom_states(model: Any, tokenizer: Any, texts: Sequence[str], cfg: FinetuneConfig, frozen: int) -> list[Any]:
    """The frozen layers' output for each line (float16 tensors of shape (tokens, hidden)), computed once."""
    import torch

    todo = sorted({t for t in texts if (t, cfg.max_length, frozen) not in _BOTTOM}, key=len)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
            hidden = model(**enc, output_hidden_states=True).hidden_states[frozen]
            for j, text in enumerate(chunk):
                n = int(enc["attention_mask"][j].sum())
                _BOTTOM[(text, cfg.max_length, frozen)] = hidden[j, :n].to(torch.float16).clone()
    return [_BOTTOM[(t, cfg.max_length, frozen)] for t in texts]


def finetune(texts: Sequence[str], labels: Sequence[str], classes: Sequence[str], cfg: FinetuneConfig,
             source: Path | None = None) -> dict[str, np.ndarray]:
    """Fine-tune the top layers of the packaged MiniLM on ``texts`` -> ``labels``; return the trained
    layers' weights (name -> float32 array), the delta :func:`save_delta` writes.

    The frozen lower layers' outputs are computed once per line (:data:`_BOTTOM`), so each step runs
    only the trained layers: about a third of the work of the whole encoder on a CPU."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from realtime_ser.features.text import packaged_source

    source = source or packaged_source()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True, use_fast=True)
    model = AutoModel.from_pretrained(str(source), local_files_only=True, attn_implementation="eager")
    n_layers = model.config.num_hidden_layers
    frozen = n_layers - cfg.layers
    top = model.encoder.layer[frozen:]
    trained = [f"encoder.layer.{i}." for i in range(frozen, n_layers)]
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(t) for t in trained))
    t0 = time.perf_counter()
    states = _bottom_states(model, tokenizer, texts, cfg, frozen)
    log.info("lower %d layers of %d lines in %.0f s", frozen, len(texts), time.perf_counter() - t0)
    head = torch.nn.Linear(model.config.hidden_size, len(classes))
    index = _labels_index(classes)
    y_all = np.array([index[lab] for lab in labels], dtype=np.int64)
    counts = np.bincount(y_all, minlength=len(classes)).astype(np.float64)
    weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(classes), dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": cfg.lr}, {"params": head.parameters(), "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(texts) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                              * max(0.0, 1 - s / max(1, steps)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    order = list(range(len(texts)))
    rng = random.Random(cfg.seed)
    for epoch in range(cfg.epochs):
        rng.shuffle(order)
        # Batches of similar length pad little: sort within large random chunks.
        chunks = [sorted(order[i : i + cfg.batch_size * 20], key=lambda j: len(states[j]))
                  for i in range(0, len(order), cfg.batch_size * 20)]
        batches = [c[i : i + cfg.batch_size] for c in chunks for i in range(0, len(c), cfg.batch_size)]
        rng.shuffle(batches)
        top.train()
        total = 0.0
        for b in batches:
            length = max(len(states[j]) for j in b)
            h = torch.zeros(len(b), length, model.config.hidden_size)
            mask = torch.zeros(len(b), length)
            for row, j in enumerate(b):
                h[row, : len(states[j])] = states[j].float()
                mask[row, : len(states[j])] = 1.0
            additive = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
            for layer in top:
                h = layer(h, attention_mask=additive)
                h = h[0] if isinstance(h, tuple) else h
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            vec = torch.nn.functional.normalize(pooled, dim=-1)
            loss = loss_fn(head(cfg.scale * vec), torch.from_numpy(y_all[b]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        log.info("text fine-tuning epoch %d/%d: loss %.3f (%d lines, %.0f s)", epoch + 1, cfg.epochs,
                 total / len(texts), len(texts), time.perf_counter() - t0)
    return {name: p.detach().cpu().numpy().astype(np.float32) for name, p in model.named_parameters()
            if p.requires_grad}


def save_delta(delta: dict[str, np.ndarray], path: Path, info: dict[str, Any]) -> Path:
    """Write the trained layers (float16) and what they were trained on into one ``.npz``."""
    import json
    import os
    import tempfile

    from realtime_ser.features.text import packaged_fingerprint

    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {f"w/{k}": v.astype(np.float16) for k, v in delta.items()}
    meta = {"base": "all-MiniLM-L6-v2", "base_sha256": packaged_fingerprint(), **info}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:  # written whole, then renamed: a parallel run never reads half a file
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def lines(manifest: Any, dialogue_ids: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The labeled lines (text, label) of a manifest's dialogues (all, or those named)."""
    ids = set(dialogue_ids) if dialogue_ids is not None else None
    texts, labels = [], []
    for u in manifest.utterances:
        if u.labeled and u.text.strip() and (ids is None or u.dialogue_id in ids):
            texts.append(u.text)
            labels.append(u.label)
    return texts, labels


def config_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    return asdict(cfg)


# --------------------------------------------------------------------------- encoders for folds

EXTRA_CORPORA = ("meld", "emorynlp")
"""Corpora whose labeled lines may be added to the fine-tuning data (never to a test fold)."""


EXTRA_PER_CORPUS = 1500
"""Lines drawn from each extra corpus (as evenly over the classes as it allows, fixed seed): enough to
widen the vocabulary beyond IEMOCAP's, few enough for fine-tuning on a CPU."""


def extra_lines(names: Sequence[str], classes: Sequence[str], limit: int = EXTRA_PER_CORPUS
                ) -> tuple[list[str], list[str]]:
    """Labeled lines of the extra corpora under the 4-class map (lines of other emotions dropped), at
    most ``limit`` per corpus, drawn class by class."""
    from .data import convert
    from .train import runs_dir

    texts: list[str] = []
    labels: list[str] = []
    for name in names:
        if name not in EXTRA_CORPORA:
            raise ValueError(f"features.text_extra: {name!r} is not one of {EXTRA_CORPORA}")
        out = runs_dir() / "manifests" / f"{name}-4.csv"
        from .data import read_manifest

        manifest = read_manifest(out) if out.is_file() else convert(name, None, out, labels="4")
        t, y = lines(manifest)
        rng = random.Random(0)
        by_class = {c: [i for i, lab in enumerate(y) if lab == c] for c in classes}
        for idx in by_class.values():
            rng.shuffle(idx)
        keep: list[int] = []
        while len(keep) < limit and any(by_class.values()):
            for c in classes:
                if by_class[c] and len(keep) < limit:
                    keep.append(by_class[c].pop())
        texts += [t[i] for i in keep]
        labels += [y[i] for i in keep]
    return texts, labels


def encoder_for(texts: Sequence[str], labels: Sequence[str], classes: Sequence[str],
                cfg: FinetuneConfig | None = None, cache: Path | None = None) -> str:
    """The name of a prepared encoder fine-tuned on exactly these lines (fine-tuned, saved under
    ``runs/text-encoders/`` and exported into the model cache the first time; reused after)."""
    import hashlib
    import json

    from realtime_ser import prepare
    from realtime_ser.features.text import prepare_finetuned_encoder

    from .train import runs_dir

    cfg = cfg or FinetuneConfig()
    blob = json.dumps({"cfg": asdict(cfg), "classes": list(classes), "lines": sorted(zip(texts, labels, strict=True))},
                      sort_keys=True)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]
    name = f"all-MiniLM-L6-v2-ser-{digest}"
    delta = runs_dir() / "text-encoders" / f"{name}.npz"
    if not delta.is_file():
        log.info("fine-tuning the text encoder on %d lines (%s)", len(texts), name)
        weights = finetune(texts, labels, classes, cfg)
        save_delta(weights, delta, {"config": asdict(cfg), "classes": list(classes), "lines": len(texts)})
    prepare_finetuned_encoder(prepare.PrepareOptions(cache=cache or prepare.cache_dir()), delta, name)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.text_finetune --out FILE``: fine-tune on every labeled IEMOCAP line
    (Sessions 1-4) and the extra corpora, and write the delta (for an encoder of one's own:
    prepare it with :func:`realtime_ser.features.text.prepare_finetuned_encoder` and name it in a
    config's ``features.text_encoder_name``)."""
    import argparse
    import json

    from .data import LABELS4, convert, read_manifest
    from .train import runs_dir

    parser = argparse.ArgumentParser(prog="python -m training.text_finetune", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the .npz delta to write")
    parser.add_argument("--extra", default=",".join(EXTRA_CORPORA),
                        help="comma-separated extra corpora (default: meld,emorynlp; '' for none)")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = runs_dir() / "manifests" / "iemocap_text-4.csv"
    iemocap = read_manifest(out) if out.is_file() else convert("iemocap_text", None, out, labels="4")
    texts, labels = lines(iemocap)
    counts = {"iemocap_text (Sessions 1-4)": len(texts)}
    for name in (e for e in args.extra.split(",") if e):
        et, el = extra_lines([name], LABELS4)
        texts, labels = texts + et, labels + el
        counts[name] = len(et)
    cfg = FinetuneConfig(epochs=args.epochs)
    weights = finetune(texts, labels, LABELS4, cfg)
    info = {"config": asdict(cfg), "classes": list(LABELS4), "lines": len(texts), "data": counts}
    save_delta(weights, args.out, info)
    print(json.dumps(info))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
