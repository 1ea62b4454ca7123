"""Export a trained model, or several averaged, to ONNX with its model card, and check ONNX against torch.

Several models of one recipe (trained with different seeds) export as one graph whose outputs are
their mean: per probability output, the normalized geometric mean of their calibrated
probabilities; the mean of the audio's weight. The graph's inputs and outputs are those of one
model, so the runtime is the same for both.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from realtime_ser.emotion.model import CARD_FORMAT, CARD_VERSION, SHIFT, EmotionModel, sha256_file

from .models import EmotionModel as TorchModel

OPSET = 17


class _Wrapper(nn.Module):
    """Softmax outputs with fixed names; one input per modality plus the mask."""

    def __init__(self, model: TorchModel) -> None:
        super().__init__()
        self.model = model
        self.mods = model.cfg.modalities

    def scores(self, *args: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Calibrated logits of each output (fused, then per modality) and the audio's weight (gated models)."""
        names = input_names(self.model)
        inputs = dict(zip(names, args, strict=True))
        out = self.model(inputs.get("audio"), inputs.get("text"), inputs["mask"], calibrated=True,
                         audio_shift=inputs.get(SHIFT))
        logits = [out["logits"]] + ([out[m] for m in self.mods] if self.model.cfg.fused else [])
        return logits, out["reliability"] if self.model.cfg.audio_gate else None

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, reliability = self.scores(*args)
        return tuple([torch.softmax(x, -1) for x in logits] + ([reliability] if reliability is not None else []))


class _Averaged(nn.Module):
    """Several models of one configuration as one: each probability output is the softmax of the mean
    of their calibrated log-probabilities (a normalized geometric mean), the audio's weight the mean
    of theirs.

    The arithmetic mean of calibrated probabilities is less confident than its accuracy warrants
    (on the default recipe's folds: ECE 0.042 against 0.021 for one model); the geometric mean keeps
    one model's calibration (0.023) with the same accuracy (``training/RESULTS.md``).
    """

    def __init__(self, models: Sequence[TorchModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(_Wrapper(m) for m in models)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, weights = zip(*(cast(_Wrapper, m).scores(*args) for m in self.members), strict=True)
        outputs = [torch.softmax(torch.stack([torch.log_softmax(x, -1) for x in output]).mean(0), -1)
                   for output in zip(*logits, strict=True)]
        if weights[0] is not None:
            outputs.append(torch.stack(weights).mean(0))
        return tuple(outputs)


def members(model: TorchModel | Sequence[TorchModel]) -> list[TorchModel]:
    """The models of an export (one, or several to average), checked to be interchangeable."""
    models = [model] if isinstance(model, TorchModel) else list(model)
    if not models:
        raise ValueError("nothing to export: no model given")
    first = models[0].cfg.to_dict()
    for i, m in enumerate(models[1:], 1):
        if m.cfg.to_dict() != first:
            raise ValueError(f"models to average must share one configuration; model {i} differs from model 0")
    return models


def _graph(models: list[TorchModel]) -> nn.Module:
    return _Wrapper(models[0]) if len(models) == 1 else _Averaged(models)


def input_names(model: TorchModel) -> list[str]:
    """One input per modality, the speaker shift of a speaker-adaptive model, then the mask."""
    return [*model.cfg.modalities, *([SHIFT] if model.cfg.speaker_shift else []), "mask"]


def output_names(model: TorchModel) -> list[str]:
    """Calibrated probabilities (fused, then per modality) and, for a gated model, the audio's weight."""
    names = ["probs"] + ([f"{m}_probs" for m in model.cfg.modalities] if model.cfg.fused else [])
    return names + (["audio_reliability"] if model.cfg.audio_gate else [])


def export_onnx(model: TorchModel | Sequence[TorchModel], path: Path) -> Path:
    models = [m.eval() for m in members(model)]
    model = models[0]
    cfg = model.cfg
    b, t = 2, 5
    names = input_names(model)
    args = [torch.randn(b, t, cfg.dims["audio" if n == SHIFT else n]) for n in names[:-1]]
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 3:] = False
    outs = output_names(model)
    axes = {n: {0: "batch", 1: "turns"} for n in names + outs}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The tracer's notes on shape arithmetic and on GRU batch sizes: the exported graph is
        # checked against torch on several batch and dialogue sizes after export instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(_graph(models), tuple(args + [mask]), str(path), input_names=names, output_names=outs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return path


def max_difference(model: TorchModel | Sequence[TorchModel], runtime: EmotionModel, seed: int = 0) -> float:
    """Largest |torch - onnxruntime| over all outputs on random padded dialogue batches of several shapes
    (for several models, against the mean of their outputs).

    The features are drawn around the model's own normalization statistics (mean + 2 std x
    N(0, 1)), i.e. inputs like those it will see: raw N(0, 1) vectors would sit tens of
    standard deviations away for some features and test float saturation, not the export.
    """
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    models = [m.eval() for m in members(model)]
    model, graph = models[0], _graph(models)

    def features(b: int, t: int, m: str) -> torch.Tensor:
        mean = getattr(model, f"mean_{m}", torch.zeros(model.cfg.dims[m]))
        std = getattr(model, f"std_{m}", torch.ones(model.cfg.dims[m]))
        return mean + std * torch.randn(b, t, model.cfg.dims[m], generator=g) * 2

    for b, t in ((1, 1), (1, 7), (3, 12), (4, 30)):
        inputs = {m: features(b, t, m) for m in model.cfg.modalities}
        if model.cfg.speaker_shift:
            # a speaker's offset: a fraction of a standard deviation of each audio feature
            inputs[SHIFT] = model.std_audio * torch.randn(b, t, model.cfg.dims["audio"], generator=g) * 0.5
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        lengths[0] = t
        mask = torch.arange(t)[None] < lengths[:, None]
        with torch.no_grad():
            ref = graph(*inputs.values(), mask)
        got = runtime.score({m: x.numpy() for m, x in inputs.items()}, mask.numpy())
        keys = [name.removesuffix("_probs") for name in output_names(model)]
        for k, r in zip(keys, ref, strict=True):
            valid = mask.numpy()
            worst = max(worst, float(np.abs(got[k][valid] - r.numpy()[valid]).max()))
    return worst


def export_model(model: TorchModel | Sequence[TorchModel], out_dir: Path | str, *, name: str, version: str,
                 features: dict[str, Any], max_turns: int, training: dict[str, Any],
                 metrics: dict[str, Any] | None = None, licences: list[dict[str, str]] | None = None,
                 tolerance: float = 1e-4) -> EmotionModel:
    """Write ``model.onnx`` and ``card.json`` into ``out_dir``, load them back and check parity with torch.

    Several models (one recipe, different seeds) become one graph that outputs their mean
    (:class:`_Averaged`); the card says how many (``members``).
    """
    out_dir = Path(out_dir)
    models = members(model)
    onnx_path = export_onnx(models, out_dir / "model.onnx")
    cfg = models[0].cfg
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "labels": list(cfg.labels),
        "modalities": list(cfg.modalities),
        "inputs": {m: {"dim": int(cfg.dims[m])} for m in cfg.modalities} | (
            {SHIFT: {"dim": int(cfg.dims["audio"]), "note": "each turn's speaker shift (features.audio.speaker_norm): "
                     "the classifier reads audio less it, the audio gate the raw audio"}}
            if cfg.speaker_shift else {}),
        "outputs": output_names(models[0]),
        "causal": cfg.causal,
        "context": {"max_turns": int(max_turns),
                    "note": "the runtime scores turn n from the last max_turns turns up to n" if cfg.causal
                    else "offline model: scores a whole dialogue at once"},
        "architecture": cfg.to_dict(),
        "members": {"count": len(models),
                    "note": "one model" if len(models) == 1 else
                    f"{len(models)} models of this architecture (trained with different seeds) averaged: "
                    "each probability output is the softmax of the mean of their calibrated log-probabilities, "
                    "audio_reliability the mean of theirs"},
        "features": features,
        "training": training,
        "metrics": metrics or {},
        "licences": licences or [],
        "export": {"torch": torch.__version__, "opset": OPSET, "python": platform.python_version()},
        "files": {"model.onnx": sha256_file(onnx_path)},
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    runtime = EmotionModel.load(out_dir)
    diff = max_difference(models, runtime)
    if diff > tolerance:
        raise RuntimeError(f"ONNX output differs from torch by {diff:.2e} (> {tolerance:.0e})")
    card["export"]["max_abs_difference_vs_torch"] = diff
    (out_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return runtime
