"""One table of encoder families: which transformers class builds the encoder stack, which modules
the LoRA presets target, and the published mT5 shapes. Model loading, adapter import, the sweep's
parameter counts and the memory arithmetic all read it. Data only (class NAMES, not classes), so
it sits in the bottom layer without importing transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    encoder_class: str
    """transformers class that builds the encoder stack alone (``AutoModel`` for encoder-only types)."""
    lora_presets: dict[str, list[str] | str]
    """``qv`` / ``all-linear`` -> peft ``target_modules`` (a list of names or one regex)."""
    keeps_fp16: bool = True
    """False: activations overflow fp16 (T5 family), so fp16 weights and autocast are refused."""


# T5 attention projections are q/k/v/o; the feed-forward is wi (T5 v1.0) or wi_0/wi_1 (gated,
# mT5 and T5 v1.1) plus wo. Names that match nothing in a given model are simply unused.
_T5_PRESETS: dict[str, list[str] | str] = {
    "qv": ["q", "v"],
    "all-linear": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
}
# BERT/XLM-R: a regex, so the unused pooler.dense (outside "encoder.") is never wrapped: it gets
# no gradient, which DDP would report as an unused parameter.
_BERT_PRESETS: dict[str, list[str] | str] = {
    "qv": r".*encoder\..*\.(query|value)$",
    "all-linear": r".*encoder\..*\.(query|key|value|dense)$",
}

FAMILIES: dict[str, Family] = {
    "t5": Family("T5EncoderModel", _T5_PRESETS, keeps_fp16=False),
    "mt5": Family("MT5EncoderModel", _T5_PRESETS, keeps_fp16=False),
    "umt5": Family("UMT5EncoderModel", _T5_PRESETS, keeps_fp16=False),
}
DEFAULT_FAMILY = Family("AutoModel", _BERT_PRESETS)
T5_FAMILY = frozenset(k for k, f in FAMILIES.items() if not f.keeps_fp16)


# Sequence packing (``loss.pack_sequences``): how a packed row gives each token its position in its
# own sequence. "relative": T5 relative attention bias depends only on distances, which packing keeps
# within a sequence (no position ids); "absolute": BERT's position ids 0..n-1; "after_padding":
# RoBERTa / XLM-R count positions from padding_idx + 1. Types not listed are never packed.
PACKED_POSITIONS = {
    "t5": "relative",
    "mt5": "relative",
    "umt5": "relative",
    "bert": "absolute",
    "roberta": "after_padding",
    "xlm-roberta": "after_padding",
}


def family(model_type: str) -> Family:
    """The family of a transformers ``model_type`` (BERT-like encoders for anything not listed)."""
    return FAMILIES.get(model_type, DEFAULT_FAMILY)


# Published mT5 architectures (d_model, d_ff, layers, heads); all use d_kv 64, a 250,112-piece
# vocabulary and gated-GELU feed-forward blocks (t5x gin files / the Hub config.json files).
MT5_VOCAB = 250112
MT5_SIZES = {
    "small": (512, 1024, 8, 6),
    "base": (768, 2048, 12, 12),
    "large": (1024, 2816, 24, 16),
    "xl": (2048, 5120, 24, 32),
    "xxl": (4096, 10240, 24, 64),
}
