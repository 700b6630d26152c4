"""FLOP accounting of a training step: the model FLOPs of the real tokens (for MFU) and the FLOPs
the hardware executed (for HFU: padding and recomputation included). The formula (docs/training.md,
"FLOP accounting"):

* ``N``: weights of the linear layers every token passes through (attention q/k/v/o, feed-forward
  wi/wi_0/wi_1/wo, BERT's query/key/value/dense). Not counted: the embedding table (a lookup), norms,
  biases, element-wise ops and BERT's pooler (one token per sentence, and unused by mean pooling).
* ``A``: the LoRA adapter weights (A and B matrices; 0 for full fine-tuning).
* attention: per layer and per token, ``Q K^T`` and ``softmax V`` cost ``2 s d_attn`` FLOPs each
  (``s`` the width the token attends over, ``d_attn`` = heads x head width): ``4 L d_attn s``.
* forward per token: ``2N + 2A + 4 L d_attn s``. Backward: full fine-tuning twice the forward (input
  and weight gradients): ``6N`` in all. A frozen base (LoRA) only passes input gradients: ``2N``,
  the adapter's input and weight gradients ``4A``, attention (no weights) twice its forward.
* recomputation: gradient checkpointing and GradCache's graph-free first pass
  (``loss.cache_chunk_size``) each run the forward once more (hardware FLOPs only).

Model FLOPs use the real tokens (``s`` = each sentence's own length); hardware FLOPs the padded
batch (``s`` = the width a row was encoded at). This is the standard accounting, not autograd's
exact count: e.g. under LoRA the first layer's projections of the frozen embeddings get no input
gradient, which the formula still counts (tests/test_flops.py measures both against
``torch.utils.flop_counter``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_", ".lora_magnitude")
OFF_TOKEN_PATH = ("pooler",)


def linear_weights(backbone: nn.Module) -> tuple[int, int]:
    """(base, adapter) weights of the linear layers on the token path, counted from their shapes
    (ZeRO-3 leaves sharded parameters with 0 elements; ``in_features x out_features`` stays)."""
    base = adapter = 0
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Linear) or any(k in name for k in OFF_TOKEN_PATH):
            continue
        weights = module.in_features * module.out_features
        if any(k in f".{name}." for k in ADAPTER_MARKERS):
            adapter += weights
        else:
            base += weights
    return base, adapter


def attention_width(config) -> int:
    """``L x d_attn``: layers times the width of the attention scores' matmuls."""
    layers = getattr(config, "num_layers", None) or config.num_hidden_layers
    inner = config.num_heads * config.d_kv if hasattr(config, "d_kv") else config.hidden_size
    return layers * inner


def attention_ratio(backbone: nn.Module) -> float:
    """Attention FLOPs per token and attended key over linear FLOPs per token, ``4 L d_attn / 2N``:
    what a wider packed row costs (``encoding.pack_width``)."""
    base, adapter = linear_weights(backbone)
    return 2 * attention_width(backbone.config) / max(base + adapter, 1)


@dataclass(frozen=True)
class FlopModel:
    """The per-step FLOP formula of one run, built once in setup from the encoder and the config."""

    base: int
    """``N``: linear weights on the token path (frozen under LoRA)."""
    adapter: int
    """``A``: LoRA weights (0 for full fine-tuning)."""
    attention: int
    """``L x d_attn``."""
    full: bool
    """Full fine-tuning: the base gets weight gradients too."""
    recompute: int
    """Extra forward passes the hardware runs (gradient checkpointing, GradCache: one each)."""

    @classmethod
    def from_encoder(cls, encoder, cfg) -> FlopModel:
        base, adapter = linear_weights(encoder.backbone)
        recompute = int(bool(cfg.model.gradient_checkpointing)) + int(bool(cfg.loss.cache_chunk_size))
        full = cfg.lora.preset == "full"
        return cls(base, adapter, attention_width(encoder.backbone.config), full, recompute)

    def forward(self, tokens: float, attended: float) -> float:
        """Forward FLOPs of ``tokens`` tokens whose attended widths sum to ``attended`` (= sum of s^2
        over the rows)."""
        return 2 * (self.base + self.adapter) * tokens + 4 * self.attention * attended

    def backward(self, tokens: float, attended: float) -> float:
        weights = 4 * self.base if self.full else 2 * self.base + 4 * self.adapter
        return weights * tokens + 8 * self.attention * attended

    def model_flops(self, real_tokens: float, real_attended: float) -> float:
        """The step's useful work: forward and backward of the real tokens, no recomputation."""
        return self.forward(real_tokens, real_attended) + self.backward(real_tokens, real_attended)

    def hardware_flops(self, padded_tokens: float, padded_attended: float) -> float:
        """What was executed: the padded batch, with each recomputed forward."""
        fwd = self.forward(padded_tokens, padded_attended)
        return (1 + self.recompute) * fwd + self.backward(padded_tokens, padded_attended)
