"""LoRA presets on peft: ``qv``, ``all-linear`` or ``full`` fine-tuning of the encoder."""

from __future__ import annotations

from torch import nn

from mst5_dist.config import LoraConfig
from mst5_dist.model import T5_FAMILY, SentenceEncoder

# T5 attention projections are q/k/v/o; the feed-forward is wi (T5 v1.0) or wi_0/wi_1 (gated,
# mT5 and T5 v1.1) plus wo. Names that match nothing in a given model are simply unused.
T5_PRESETS = {"qv": ["q", "v"], "all-linear": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]}
# BERT/XLM-R: a regex, so the unused pooler.dense (outside "encoder.") is never wrapped: it gets
# no gradient, which DDP would report as an unused parameter.
BERT_PRESETS = {
    "qv": r".*encoder\..*\.(query|value)$",
    "all-linear": r".*encoder\..*\.(query|key|value|dense)$",
}


def target_modules(model_type: str, cfg: LoraConfig) -> list[str] | str:
    if cfg.target_modules:
        return cfg.target_modules
    presets = T5_PRESETS if model_type in T5_FAMILY else BERT_PRESETS
    return presets[cfg.preset]


def apply_lora(encoder: SentenceEncoder, cfg: LoraConfig) -> SentenceEncoder:
    """Wrap the backbone with LoRA (or unfreeze everything for ``full``), in place."""
    if cfg.preset == "full":
        for p in encoder.backbone.parameters():
            p.requires_grad_(True)
        return encoder
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules(encoder.model_type, cfg),
        bias="none",
    )
    encoder.backbone = get_peft_model(encoder.backbone, peft_cfg)
    return encoder


def enable_gradient_checkpointing(encoder: SentenceEncoder) -> None:
    """Non-reentrant checkpointing: gradients reach LoRA weights even though the frozen
    embedding output does not require grad (the reentrant variant would silently drop them)."""
    backbone = encoder.backbone
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(backbone, "enable_input_require_grads"):
        backbone.enable_input_require_grads()


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    from mst5_dist.distributed import numel

    trainable = sum(numel(p) for p in module.parameters() if p.requires_grad)
    total = sum(numel(p) for p in module.parameters())
    return trainable, total
