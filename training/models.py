"""The conversational emotion model family (Wu, Lu, Dai, ICASSP 2023), in torch.

Every model reads a dialogue: per-utterance feature vectors of one or two
modalities, shape ``(batch, turns, dim)``, and a ``mask`` of the real turns
(dialogues are right-padded to the longest in the batch). Each modality goes
through the same branch:

    projection (Linear, ReLU, dropout) -> GRU over the turns -> multi-head self-attention
    (residual, LayerNorm) -> classifier (Linear)

Two modalities are fused at one of four depths, by one of three methods:

- ``early``: the projected utterance vectors, before the GRU (one shared GRU/attention/classifier);
- ``middle``: the GRU outputs, before the attention;
- ``late``: the attention outputs, before the classifier;
- ``logits``: each branch's class logits.

- ``add``: sum (vectors have the same size by construction);
- ``concat``: concatenation, projected back to the branch size (or to the classes, at ``logits``);
- ``attention``: a learned softmax weight per modality and turn, computed from both
  (``w_m = softmax_m(v . tanh(W h_m))``), then the weighted sum.

*Perspective loss* (Wu et al.) adds to the fused loss one loss per modality. Every
fusion depth therefore also produces per-modality logits: at ``logits`` depth the
branches' own, at the other depths an auxiliary linear head on the modality's
representation at the fusion point. These per-modality scores are what the
runtime reports as ``emotion.modalities``.

``causal=True`` makes the model usable live: the GRU is unidirectional and the
attention is masked so that turn *t* sees only turns ``<= t``. The offline model
uses a bidirectional GRU (two unidirectional GRUs; the backward one reads each
dialogue reversed *within its length*, so padding never leaks into real turns,
and the graph exports to ONNX without packed sequences).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

DEPTHS = ("early", "middle", "late", "logits")
METHODS = ("add", "concat", "attention")
MODALITIES = ("audio", "text")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model; stored in the model card so the runtime can check inputs."""

    modalities: tuple[str, ...] = ("audio", "text")
    """Which inputs the model reads: a non-empty subset of ``audio``, ``text`` (in that order)."""
    dims: dict[str, int] = field(default_factory=lambda: {"audio": 75, "text": 384})
    """Input feature size per modality."""
    labels: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
    hidden: int = 128
    """Size of the projected utterance vectors, the GRU output and the attention."""
    heads: int = 4
    dropout: float = 0.3
    input_dropout: float = 0.1
    """Dropout on the raw features (the text vectors especially are easy to overfit)."""
    causal: bool = False
    fusion_depth: str = "late"
    fusion_method: str = "concat"
    audio_gate: bool = False
    """Scale the audio branch's logits down for audio far outside the training data (a
    Mahalanobis distance in the principal subspace of the training features): a voice or a
    synthetic sound unlike any seen then cannot overrule the words. Needs ``logits`` fusion."""
    gate_dims: int = 0
    """The audio gate reads the first this many values of the audio vector (0 = all of it): the whole
    speech encoder's, when a shallower encoder's vector follows it (``features.speech_extra_layers``:
    synthetic speech is far from every training voice in the encoder's output, not in its first layer)."""
    turn_residual: bool = False
    """Add each turn's own projected vector to the dialogue GRU's output at that turn, so the classifier
    reads the turn itself beside its context (a turn whose emotion differs from the turns before it
    is not drowned by them)."""
    speaker_shift: bool = False
    """The audio input comes with a speaker shift per turn (``features.speaker_norm``): the classifier
    reads the audio vector less the shift, the audio gate the raw vector (a voice's offset taken
    out, synthetic speech would look like a known voice). Set by the trainer; an input of the graph."""

    def __post_init__(self) -> None:
        mods = tuple(self.modalities)
        if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities!r}")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in mods))
        object.__setattr__(self, "labels", tuple(self.labels))
        missing = [m for m in self.modalities if m not in self.dims]
        if missing:
            raise ValueError(f"dims gives no input size for {missing}")
        if self.fusion_depth not in DEPTHS:
            raise ValueError(f"fusion_depth must be one of {DEPTHS}, got {self.fusion_depth!r}")
        if self.fusion_method not in METHODS:
            raise ValueError(f"fusion_method must be one of {METHODS}, got {self.fusion_method!r}")
        if self.hidden % self.heads or self.hidden % 2:
            raise ValueError(f"hidden ({self.hidden}) must be even and divisible by heads ({self.heads})")
        if len(self.labels) < 2:
            raise ValueError("a classifier needs at least 2 labels")
        if self.speaker_shift and "audio" not in self.modalities:
            raise ValueError("speaker_shift needs the audio input")
        if self.audio_gate and not (self.fused and self.fusion_depth == "logits" and "audio" in self.modalities):
            raise ValueError("audio_gate needs an audio + text model fused at 'logits' depth")
        if not 0 <= self.gate_dims <= self.dims.get("audio", 0):
            raise ValueError(f"gate_dims must be 0 (all) .. the audio input's size, got {self.gate_dims}")

    @property
    def fused(self) -> bool:
        return len(self.modalities) > 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["labels"] = list(self.labels)
        d["dims"] = {m: int(self.dims[m]) for m in self.modalities}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        for key in ("modalities", "labels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# --------------------------------------------------------------------------- pieces


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` (B, T, D) within its length; padding stays where it is."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
    last = (lengths - 1).unsqueeze(1)  # (B, 1)
    idx = torch.where(t <= last, last - t, t)  # (B, T)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class DialogueGRU(nn.Module):
    """GRU over the turns: unidirectional (causal) or two directions concatenated, output size ``hidden``."""

    def __init__(self, hidden: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        if causal:
            self.fwd = nn.GRU(hidden, hidden, batch_first=True)
        else:
            self.fwd = nn.GRU(hidden, hidden // 2, batch_first=True)
            self.bwd = nn.GRU(hidden, hidden // 2, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.fwd(x)
        if self.causal:
            return out
        back, _ = self.bwd(reverse_within(x, lengths))
        return torch.cat([out, reverse_within(back, lengths)], dim=-1)


class DialogueAttention(nn.Module):
    """Multi-head self-attention over the turns with a residual connection and LayerNorm.

    Written out (rather than ``nn.MultiheadAttention``) so the ONNX graph keeps the batch
    and turn dimensions dynamic.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, dh)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, T, T)
        # A query may not look at padding keys, nor at future keys when causal. Padded
        # queries still see turn 0, so no row is all blocked (no NaN).
        blocked = ~mask[:, None, None, :]
        if self.causal:
            pos = torch.arange(t, device=x.device)
            blocked = blocked | (pos[None, :] > pos[:, None])[None, None]
        scores = scores.masked_fill(blocked, float("-inf"))
        attn = self.drop(torch.softmax(scores, dim=-1))
        y = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.norm(x + self.drop(self.out(y)))


class AudioGate(nn.Module):
    """How far an utterance's (standardized) audio features lie from the training data, as a weight in (0, 1].

    ``d`` is one minus the mean cosine similarity to the ``neighbours`` nearest of a bank of training
    utterances, in the top principal directions of the training features: small for any voice like
    those heard in training (clean or augmented), large for sounds unlike all of them (synthetic
    speech, say). The weight is 1 up to the threshold ``d0`` (a high quantile of ``d`` for training
    utterances that are not in the bank, i.e. as for an unheard voice from the same population) and
    decays as ``exp(-(d - d0) / scale)`` beyond it. All of it is fixed from training statistics
    (:meth:`fit`), never learned, so it cannot learn to trust a voice it has not heard.
    """

    # Buffers (registered in __init__).
    mean: Tensor
    proj: Tensor
    bank: Tensor
    bounds: Tensor

    def __init__(self, dim: int, components: int = 256, bank: int = 1500, neighbours: int = 10) -> None:
        super().__init__()
        self.neighbours = neighbours
        k = min(components, dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("proj", torch.zeros(k, dim))
        self.register_buffer("bank", torch.zeros(bank, k))
        self.register_buffer("bounds", torch.tensor([1e9, 1.0]))

    def _unit(self, x: Tensor) -> Tensor:
        z = (x - self.mean) @ self.proj.T
        return z / z.norm(dim=-1, keepdim=True).clamp(min=1e-6)

    def distance(self, x: Tensor) -> Tensor:
        sims = self._unit(x) @ self.bank.T
        k = min(self.neighbours, self.bank.shape[0])
        return 1.0 - torch.topk(sims, k, dim=-1).values.mean(-1)

    def forward(self, x: Tensor) -> Tensor:
        d0, scale = self.bounds[0], self.bounds[1]
        return torch.exp(-torch.relu(self.distance(x) - d0) / scale)

    @torch.no_grad()
    def fit(self, x: Tensor, quantile: float = 0.995, seed: int = 0) -> None:
        """Principal directions, bank and threshold from training features ``x`` (N, dim): the bank is a
        seeded random draw of them, the threshold the ``quantile`` of ``d`` over the rest and the scale
        an eighth of its distance from their median (past the threshold the weight falls fast)."""
        x = torch.as_tensor(x, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=g)
        n_bank = min(self.bank.shape[0], len(x) // 2)
        bank, rest = x[order[:n_bank]], x[order[n_bank:]]
        mean = x.mean(0)
        _, _, vt = torch.linalg.svd((x - mean).double(), full_matrices=False)
        k = self.proj.shape[0]
        self.mean.copy_(mean)
        self.proj.zero_()
        self.proj[: min(k, vt.shape[0])] = vt[:k].float()
        self.bank.zero_()
        self.bank[:n_bank] = self._unit(bank)
        if n_bank < self.bank.shape[0]:  # a small training set: repeat it rather than leave zero rows
            self.bank[n_bank:] = self.bank[torch.arange(self.bank.shape[0] - n_bank) % max(1, n_bank)]
        d = self.distance(rest)
        hi = torch.quantile(d, quantile)
        scale = ((hi - d.median()) / 8).clamp(min=1e-3)
        self.bounds.copy_(torch.stack([hi, scale]))


class Fusion(nn.Module):
    """Fuse per-modality tensors of the same shape (B, T, size) into one of shape (B, T, out)."""

    def __init__(self, method: str, size: int, n: int, out: int) -> None:
        super().__init__()
        self.method = method
        if method == "concat":
            self.proj = nn.Linear(size * n, out)
        elif method == "attention":
            self.score = nn.Sequential(nn.Linear(size, size), nn.Tanh(), nn.Linear(size, 1, bias=False))
        if method != "concat" and size != out:
            raise ValueError("add and attention fusion keep the size")

    def forward(self, parts: list[Tensor]) -> Tensor:
        if self.method == "add":
            return torch.stack(parts, 0).sum(0)
        if self.method == "concat":
            return self.proj(torch.cat(parts, dim=-1))
        stacked = torch.stack(parts, dim=-2)  # (B, T, M, size)
        weights = torch.softmax(self.score(stacked), dim=-2)  # (B, T, M, 1)
        return (weights * stacked).sum(-2)


class Branch(nn.Module):
    """The stages of one branch after the projection: GRU, attention, classifier (any may be absent)."""

    def __init__(self, cfg: ModelConfig, gru: bool, attention: bool, classifier: bool) -> None:
        super().__init__()
        self.gru = DialogueGRU(cfg.hidden, cfg.causal) if gru else None
        self.residual = cfg.turn_residual
        self.attention = DialogueAttention(cfg.hidden, cfg.heads, cfg.dropout, cfg.causal) if attention else None
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, len(cfg.labels)) if classifier else None


class EmotionModel(nn.Module):
    """Unimodal or fused dialogue emotion classifier; see the module docstring.

    ``forward(audio, text, mask)`` takes the modalities the config names (pass
    ``None`` for the others) and returns ``{"logits": (B, T, C), "audio": ..., "text": ...}``
    where the per-modality entries exist for fused models.
    """

    # Buffers (registered in __init__): the temperatures, and the input statistics of each
    # modality the config names.
    temperature: Tensor
    mean_audio: Tensor
    std_audio: Tensor
    mean_text: Tensor
    std_text: Tensor
    gate_mean: Tensor
    gate_std: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = len(cfg.labels)
        h = cfg.hidden
        self.input_drop = nn.Dropout(cfg.input_dropout)
        # Feature standardization lives in the model (and so in the ONNX graph): the runtime
        # feeds raw features and cannot get the training statistics wrong.
        for m in cfg.modalities:
            self.register_buffer(f"mean_{m}", torch.zeros(cfg.dims[m]))
            self.register_buffer(f"std_{m}", torch.ones(cfg.dims[m]))
        # Temperatures of the outputs (fused first, then each modality), fitted after training on
        # held-out data (:func:`training.calibration.fit_temperature`); 1 = uncalibrated.
        self.outputs = ["logits", *(cfg.modalities if cfg.fused else ())]
        self.register_buffer("temperature", torch.ones(len(self.outputs)))
        if cfg.audio_gate:
            g = cfg.gate_dims or cfg.dims["audio"]
            self.gate = AudioGate(g)
            # The gate standardizes the raw audio vector (its first gate_dims values) by its own statistics:
            # with a speaker shift, the classifier's statistics are those of the shifted vectors.
            self.register_buffer("gate_mean", torch.zeros(g))
            self.register_buffer("gate_std", torch.ones(g))
        self.proj = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(cfg.dims[m], h), nn.ReLU(), nn.Dropout(cfg.dropout)) for m in cfg.modalities
        })
        depth = DEPTHS.index(cfg.fusion_depth) if cfg.fused else len(DEPTHS)
        # Per-modality stages before the fusion point, shared stages after it.
        self.branches = nn.ModuleDict({
            m: Branch(cfg, gru=depth > 0, attention=depth > 1, classifier=depth > 2) for m in cfg.modalities
        })
        if cfg.fused:
            out = c if cfg.fusion_depth == "logits" else h
            self.fusion = Fusion(cfg.fusion_method, out, len(cfg.modalities), out)
            self.shared = Branch(cfg, gru=depth < 1, attention=depth < 2, classifier=depth < 3)
            if cfg.fusion_depth != "logits":
                self.aux = nn.ModuleDict({m: nn.Linear(h, c) for m in cfg.modalities})

    def forward(self, audio: Tensor | None, text: Tensor | None, mask: Tensor,
                calibrated: bool = False, audio_shift: Tensor | None = None) -> dict[str, Tensor]:
        """Logits per output; ``calibrated`` divides each by its fitted temperature. A gated model
        also returns ``reliability`` (B, T): the weight its audio logits got in the fusion.
        ``audio_shift`` (B, T, Da): the speaker shift of each turn's audio, taken from the vector
        the classifier reads, not from the one the gate reads (none: zeros)."""
        inputs = {"audio": audio, "text": text}
        mask = mask.bool()
        lengths = mask.sum(1).clamp(min=1)
        hs: dict[str, Tensor] = {}
        raw: dict[str, Tensor] = {}
        for m in self.cfg.modalities:
            x = inputs[m]
            if x is None:
                raise ValueError(f"this model needs the {m} input")
            if m == "audio":
                raw[m] = x
                if audio_shift is not None:
                    x = x - audio_shift
            x = (x - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")
            h = self.proj[m](self.input_drop(x))
            hs[m] = self._run(cast(Branch, self.branches[m]), h, mask, lengths)
        if not self.cfg.fused:
            out = {"logits": hs[self.cfg.modalities[0]]}
        else:
            parts = {m: hs[m] for m in self.cfg.modalities}
            reliability = None
            if self.cfg.audio_gate:
                gated = raw["audio"][..., : self.gate_mean.shape[0]]
                reliability = self.gate((gated - self.gate_mean) / self.gate_std)
                parts["audio"] = parts["audio"] * reliability.unsqueeze(-1)
            fused = self._run(self.shared, self.fusion(list(parts.values())), mask, lengths)
            out = {"logits": fused}
            for m in self.cfg.modalities:
                out[m] = (hs[m] if self.cfg.fusion_depth == "logits"
                          else self.aux[m](cast(Branch, self.branches[m]).drop(hs[m])))
            if reliability is not None:
                out["reliability"] = reliability
        if calibrated:
            for i, k in enumerate(self.outputs):
                out[k] = out[k] / self.temperature[i]
        return out

    @staticmethod
    def _run(branch: Branch, h: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        if branch.gru is not None:
            g = branch.drop(branch.gru(h, lengths))
            h = g + h if branch.residual else g
        if branch.attention is not None:
            h = branch.attention(h, mask)
        if branch.classifier is not None:
            h = branch.classifier(branch.drop(h))
        return h

    def set_normalization(self, modality: str, mean: Tensor, std: Tensor) -> None:
        """Standardize ``modality`` inputs with these training-set statistics (std floored at 1e-6)."""
        getattr(self, f"mean_{modality}").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"std_{modality}").copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))

    def branch_parameters(self, modality: str) -> list[nn.Parameter]:
        """The parameters that belong to one modality only (for frozen / warm-start fusion training)."""
        params = list(self.proj[modality].parameters()) + list(self.branches[modality].parameters())
        return params


def load_unimodal_into(fused: EmotionModel, unimodal: EmotionModel, modality: str) -> int:
    """Copy a trained unimodal model's projection and branch stages into a fused model's branch.

    Stages that exist in both (projection, and GRU/attention/classifier before the fusion
    point) are copied; returns how many tensors were copied. Used for the *frozen* and
    *warm start* fusion strategies (Pepino et al.).
    """
    if unimodal.cfg.modalities != (modality,):
        raise ValueError(f"expected a {modality}-only model, got {unimodal.cfg.modalities}")
    copied = 0
    src = unimodal.state_dict()
    dst = fused.state_dict()
    updates = {}
    for key, value in src.items():
        for target in (key,):
            if target in dst and dst[target].shape == value.shape and (
                key.startswith(f"proj.{modality}.") or key.startswith(f"branches.{modality}.")
                or key in (f"mean_{modality}", f"std_{modality}")
            ):
                updates[target] = value
    dst.update(updates)
    fused.load_state_dict(dst)
    copied = len(updates)
    return copied
