"""LoRA presets on peft: ``qv``, ``all-linear`` or ``full`` fine-tuning of the encoder."""

from __future__ import annotations

import logging
import re

from torch import nn

from mst5_dist.config import LoraConfig
from mst5_dist.distributed import numel
from mst5_dist.errors import ConfigError
from mst5_dist.families import family
from mst5_dist.model import SentenceEncoder

logger = logging.getLogger(__name__)


def target_modules(model_type: str, cfg: LoraConfig) -> list[str] | str:
    """``lora.target_modules`` when set, else the family's preset (see ``families.py``)."""
    if cfg.target_modules:
        return cfg.target_modules
    return family(model_type).lora_presets[cfg.preset]


def check_targets(backbone: nn.Module, targets: list[str] | str) -> None:
    """Every name in ``lora.target_modules`` must match a linear layer of this model as peft matches
    it (the whole name or its last dotted parts; a string is one regex over whole names): a target
    matching nothing would silently train less than asked and still be listed in adapter_config.json."""
    names = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear | nn.Embedding)]
    if isinstance(targets, str):
        unmatched = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        available = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(
            f"lora.target_modules: {', '.join(map(repr, unmatched))} {'matches' if len(unmatched) == 1 else 'match'} "
            f"no layer of this "
            f"{backbone.config.model_type} model (its layer names: {', '.join(available)})"
        )


def apply_lora(encoder: SentenceEncoder, cfg: LoraConfig) -> SentenceEncoder:
    """Wrap the backbone with LoRA (or unfreeze everything for ``full``), in place."""
    if cfg.preset == "full":
        for p in encoder.backbone.parameters():
            p.requires_grad_(True)
        return encoder
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if cfg.target_modules:  # a preset lists every family member's names; some are unused by design
        check_targets(encoder.backbone, cfg.target_modules)
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
    on = [n for n, m in backbone.named_modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not on:  # a model class that ignores the request would silently keep every activation
        raise RuntimeError(f"{type(backbone).__name__}: gradient checkpointing did not switch on in any module")
    logger.info(f"gradient checkpointing: on in {len(on)} modules (activations recomputed in backward)")


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(numel(p) for p in module.parameters() if p.requires_grad)
    total = sum(numel(p) for p in module.parameters())
    return trainable, total
