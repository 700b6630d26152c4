"""The objects a run is made of, each built from the config: accelerator, encoder, data, optimizer."""

from __future__ import annotations

import logging

import torch

from mst5_dist import distributed, encoding
from mst5_dist.collate import BatchCollator
from mst5_dist.config import Config, ConfigError
from mst5_dist.data import (
    DataError,
    GlobalBatchSampler,
    load_cached,
    source_codes,
    token_lengths,
)
from mst5_dist.errors import ModelError
from mst5_dist.families import T5_FAMILY
from mst5_dist.lora import apply_lora, enable_gradient_checkpointing
from mst5_dist.model import SentenceEncoder
from mst5_dist.objectives import SetupContext
from mst5_dist.training.flops import attention_ratio
from mst5_dist.training.schedules import build_scheduler

logger = logging.getLogger(__name__)


def resolve_mixed_precision(cfg: Config) -> str:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


# The package each ``train.report_to`` tracker needs (Accelerate drops a missing one with a warning).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "comet_ml": "comet_ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}  # fmt: skip


def trackers(cfg: Config) -> list:
    """``log_with`` for ``train.report_to``: TensorBoard as a tracker object named "tensorboard" (its
    events stay in ``OUTPUT_DIR/tensorboard/`` whatever the project name), the others by name.
    A tracker whose package is missing is a config error, not a run that silently logs nowhere."""
    import importlib.util

    from accelerate.tracking import TensorBoardTracker

    missing = [n for n in cfg.train.report_to if importlib.util.find_spec(TRACKER_PACKAGES[n]) is None]
    if missing:
        extra = " (pip install -e '.[mlflow]')" if "mlflow" in missing else ""
        raise ConfigError(f"train.report_to: {', '.join(missing)} not installed{extra}")
    return [
        TensorBoardTracker("tensorboard", cfg.train.output_dir) if name == "tensorboard" else name
        for name in dict.fromkeys(cfg.train.report_to)
    ]


def setup_accelerator(cfg: Config):
    """An Accelerator on the process group the entry point created (``distributed.process_group``)."""
    from accelerate import Accelerator

    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg),
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=trackers(cfg) or None,
        project_dir=cfg.train.output_dir,
    )
    distributed.check_world_size(accelerator.num_processes)
    if accelerator.num_processes > 1 and accelerator.distributed_type.value == "NO":
        # reduce / gather would silently be identities: every rank would log only its own numbers
        raise RuntimeError(f"{accelerator.num_processes} processes but Accelerate runs them as not distributed")
    return accelerator


def build_encoder(cfg: Config) -> SentenceEncoder:
    m = cfg.model
    encoder = SentenceEncoder.from_pretrained(
        m.name_or_path,
        pooling=m.pooling,
        normalize=m.normalize,
        max_seq_length=m.max_seq_length,
        dtype=m.dtype,
        tokenizer_use_fast=m.tokenizer_use_fast,
        attn_implementation=m.attn_implementation,
        dropout=m.dropout,
        merge_adapters=m.merge_adapters,
    )
    if encoder.model_type in T5_FAMILY and cfg.train.mixed_precision == "fp16":
        raise ModelError("train.mixed_precision=fp16 is refused for T5-family models (they overflow fp16); use bf16")
    for p in encoder.parameters():
        p.requires_grad_(False)
    apply_lora(encoder, cfg.lora)
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(encoder)
    return encoder


def build_data(cfg: Config, encoder: SentenceEncoder, objective, world_size: int, rank: int, device="cpu"):
    """(dataset, sampler, collator) for ``objective``; the objective's own setup runs on the data."""
    need_neg = "negative" in objective.columns
    # Rank 0 parses the data and computes what every rank needs (source-id codes, token lengths)
    # into the cache; the other ranks wait, then only read it.
    with distributed.main_process_first():
        dataset, folder = load_cached(cfg.data, cfg.train.seed, need_negative=need_neg)
        codes = source_codes(dataset, folder)
        lengths = (
            token_lengths(dataset, encoder.tokenizer, encoder.max_seq_length, objective.columns, folder)
            if cfg.data.length_grouping
            else None
        )
    sampler = GlobalBatchSampler(
        codes,
        cfg.train.batch_size,
        world_size=world_size,
        rank=rank,
        seed=cfg.train.seed,
        lengths=lengths,
        bucket_batches=cfg.data.bucket_batches,
    )
    objective.setup(SetupContext(cfg, dataset, device))
    chunks = build_chunker(cfg, encoder, torch.device(device).type, encoder.tokenizer.pad_token_id or 0)
    return dataset, sampler, BatchCollator(encoder.tokenizer, encoder.max_seq_length, objective, chunks)


def build_chunker(cfg: Config, encoder: SentenceEncoder, device_type: str, pad_id: int) -> encoding.Chunker:
    """The run's chunker: packed rows where the encoder can take them (priced by its attention
    cost), padded chunks otherwise (said once in the log)."""
    packable = encoder.packing is not None
    if cfg.loss.pack_sequences and cfg.loss.chunk_tokens is not None and not packable:
        logger.info(f"loss.pack_sequences: not for {encoder.model_type} with {encoder.pooling} pooling: padded chunks")
    ratio = attention_ratio(encoder.backbone) if packable else None
    return encoding.chunker(cfg.loss, pad_id, device_type, packable, ratio)


def plan_steps(cfg: Config, sampler: GlobalBatchSampler, n_rows: int) -> tuple[list[int], int]:
    """(global batches used in each epoch, optimizer steps in the run).

    The source-id rule can leave a different number of batches in each epoch's order. Plans are
    built last epoch first: the sampler caches one epoch, so epoch 0 (where the loop starts) is not
    built twice, and ``sampler.dropped`` afterwards is epoch 0's.
    """
    accum = cfg.train.grad_accum_steps
    epoch_batches = [0] * cfg.train.epochs
    for e in reversed(range(cfg.train.epochs)):
        epoch_batches[e] = len(sampler.global_batches(e)) // accum * accum
    if epoch_batches[0] == 0:
        raise DataError(
            f"{n_rows} triplets give no full step of {cfg.train.batch_size} x {accum} "
            "(lower train.batch_size or add data)"
        )
    total_steps = sum(epoch_batches) // accum
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    return epoch_batches, total_steps


def build_optimizer(cfg: Config, encoder: SentenceEncoder, total_steps: int):
    o = cfg.optim
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return optimizer, build_scheduler(cfg, optimizer, total_steps)


def configure_deepspeed(accelerator, cfg: Config, local_batch: int, hidden: int) -> None:
    """Fill DeepSpeed's "auto" fields from our config: we pass no dataloader to prepare (so
    Accelerate cannot infer the batch) and our wrapper has no ``model.config`` (so it cannot
    size ZeRO-3 buckets); the bucket sizes follow Accelerate's own rule of thumb."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    zero = ds.setdefault("zero_optimization", {})
    for key, value in {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }.items():
        if zero.get(key) == "auto":
            zero[key] = value
    ds["train_micro_batch_size_per_gpu"] = local_batch
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum_steps
    ds["train_batch_size"] = local_batch * accelerator.num_processes * cfg.train.grad_accum_steps
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.optim.max_grad_norm  # Accelerate would silently pick 1.0
