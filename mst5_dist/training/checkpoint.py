"""Checkpoint I/O: resumable ``checkpoints/step-N/`` folders and the finished ``final/`` model.

A checkpoint is written by every rank into ``step-N.tmp`` (``accelerator.save_state``), completed by
the main process (``trainer_state.json`` last) and renamed; only a folder holding
``trainer_state.json`` under its final name counts (``layout.checkpoint_dirs``). LoRA runs keep
only trainable tensors: the frozen base (18 GB for mt5-xxl in fp32) is reloaded from
``model.name_or_path`` on resume, not copied into every checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mst5_dist import distributed
from mst5_dist.config import Config, load_config, save_config
from mst5_dist.errors import ConfigError
from mst5_dist.files import write_json
from mst5_dist.layout import (
    CHECKPOINT_CONFIG,
    CHECKPOINTS,
    FINAL_DIR,
    STATE_FILE,
    TRAINING_CONFIG,
    checkpoint_dirs,
    checkpoint_name,
)
from mst5_dist.model import SentenceEncoder
from mst5_dist.modelcard import write_model_card
from mst5_dist.versions import VERSIONS_FILE, package_versions

logger = logging.getLogger(__name__)
# Settings that fix the data order; resuming with different values would not continue the run.
RESUME_KEYS = [("train", "batch_size"), ("train", "seed"), ("train", "grad_accum_steps"), ("data", "paths")]


@dataclass
class TrainState:
    """Where the loop is; saved with every checkpoint."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch."""
    batch_in_epoch: int = 0
    """Global batches of the current epoch already consumed."""


def lora_only(cfg: Config) -> bool:
    return cfg.lora.preset != "full"


def keep_trainable_only(model_names: set[str]):
    """save_state hook (non-DeepSpeed): drop frozen tensors from the saved model weights."""

    def hook(models, weights, output_dir) -> None:
        for i, sd in enumerate(weights):
            weights[i] = {k: v for k, v in sd.items() if k in model_names}

    return hook


def register_state(accelerator, model, scheduler, cfg: Config) -> None:
    """What ``save_state`` writes besides model and optimizer: the scheduler, and (LoRA, no
    DeepSpeed) a hook that keeps only the trainable tensors."""
    accelerator.register_for_checkpointing(scheduler)
    if lora_only(cfg) and not distributed.zero_stage(accelerator):
        trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        accelerator.register_save_state_pre_hook(keep_trainable_only(trainable))


def save_checkpoint(accelerator, cfg: Config, state: TrainState, output_dir: Path) -> Path:
    """save_state into ``step-N.tmp`` on all ranks, then complete and rename on the main process."""
    root = output_dir / CHECKPOINTS
    final = root / checkpoint_name(state.step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if distributed.zero_stage(accelerator) and lora_only(cfg) else {}
    accelerator.save_state(str(tmp), **kwargs)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = {
            **asdict(state),
            "world_size": accelerator.num_processes,
            "zero_stage": distributed.zero_stage(accelerator),
        }
        save_config(cfg, tmp / CHECKPOINT_CONFIG)
        write_json(tmp / VERSIONS_FILE, package_versions())
        write_json(tmp / STATE_FILE, meta)  # last: its presence marks the checkpoint complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[: -cfg.train.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator, cfg: Config, path: Path) -> TrainState:
    import json

    saved = load_config(path / CHECKPOINT_CONFIG)
    for section, key in RESUME_KEYS:
        old, new = getattr(getattr(saved, section), key), getattr(getattr(cfg, section), key)
        if old != new:
            raise ConfigError(f"cannot resume from {path}: {section}.{key} was {old!r}, now {new!r}")
    meta = json.loads((path / STATE_FILE).read_text())
    saved_world, saved_stage = meta.pop("world_size", 1), meta.pop("zero_stage", 0)
    stage = distributed.zero_stage(accelerator)
    if saved_stage != stage:
        raise ConfigError(f"cannot resume from {path}: written under ZeRO stage {saved_stage}, now stage {stage}")
    if stage and saved_world != accelerator.num_processes:
        # ZeRO partitions optimizer state (and ZeRO-3 parameters) per rank; DeepSpeed cannot load
        # N partitions into M ranks without converting to a universal checkpoint first.
        raise ConfigError(
            f"cannot resume from {path}: written by {saved_world} ranks under ZeRO-{stage}, now "
            f"{accelerator.num_processes}; resume with {saved_world} processes, or convert it with "
            "DeepSpeed's ds_to_universal.py and load it as a universal checkpoint"
        )
    if stage:
        accelerator.load_state(str(path), load_module_strict=not lora_only(cfg))
    else:
        accelerator.load_state(str(path), strict=not lora_only(cfg))  # safetensors.load_model(strict=)
    return TrainState(**meta)


def save_final(
    accelerator, model, cfg: Config, output_dir: Path, name: str = FINAL_DIR, extra: dict[str, Any] | None = None
) -> Path:
    """The encoder as ``OUTPUT_DIR/<name>/`` (adapter + tokenizer + pooling), written atomically
    (``<name>.tmp`` renamed when complete); ``extra`` maps file names to JSON written inside it.
    ``final/`` at the end of training, ``best/`` (with ``best.json``) for ``eval.keep_best``.

    Call it on ALL ranks: under ZeRO-3 the trainable tensors are gathered from all ranks first. The
    written adapter is read back and compared, so an empty-tensor adapter can never be shipped.
    """
    from mst5_dist.files import atomic_dir

    final = output_dir / name
    encoder: SentenceEncoder = accelerator.unwrap_model(model)
    if lora_only(cfg):
        state = distributed.full_trainable_state_dict(accelerator, encoder.backbone)
    else:
        state = accelerator.get_state_dict(model)  # full fine-tuning: every weight (gathered)
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            encoder.save_pretrained(tmp, state_dict=state)
            save_config(cfg, tmp / TRAINING_CONFIG)
            write_json(tmp / VERSIONS_FILE, package_versions())  # what made this model
            write_model_card(tmp, name=output_dir.name)  # replaces peft's placeholder README.md
            for file_name, content in (extra or {}).items():
                write_json(tmp / file_name, content)
            if lora_only(cfg):
                verify_adapter(tmp, state)
    accelerator.wait_for_everyone()
    return final


def verify_adapter(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Reload the written adapter and compare it with the in-memory tensors."""
    from safetensors.torch import load_file

    written = load_file(str(path / "adapter_model.safetensors"))
    expected = {k.replace(".default.", "."): v for k, v in state.items() if "lora_" in k}
    expected = {k.removeprefix("base_model.model."): v for k, v in expected.items()}
    got = {k.removeprefix("base_model.model."): v for k, v in written.items()}
    if set(got) != set(expected):
        raise RuntimeError(f"saved adapter keys differ: missing {sorted(set(expected) - set(got))[:3]}")
    for k, v in expected.items():
        if got[k].shape != v.shape or got[k].numel() == 0 or not torch.equal(got[k], v.to(got[k].dtype)):
            raise RuntimeError(f"saved adapter tensor {k} does not match the trained one ({tuple(got[k].shape)})")
