"""The m-ST5 trainer: LoRA contrastive fine-tuning of a sentence encoder through Accelerate.

    train(cfg)  =  setup  ->  loop  ->  save  ->  cleanup

One process, one GPU, DDP or DeepSpeed ZeRO: the same code. Cross-rank negatives come from the
autograd all-gather in ``losses.info_nce``; the sampler gives every rank an equal slice of a
global batch; checkpoints are written under a temporary name and renamed when complete.

Usage: ``mst5 train --config FILE [section.key=value ...] [--resume latest|PATH]`` or
``python -m mst5_dist.train ...`` (so ``accelerate launch -m mst5_dist.train ...`` works).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mst5_dist import distributed, modular
from mst5_dist.atomic import atomic_dir
from mst5_dist.config import Config, ConfigError, load_config, save_config
from mst5_dist.data import DataError, GlobalBatchSampler, TripletCollator, load_dataset, token_lengths
from mst5_dist.evaluate.sts import EvalDataError, evaluate_sts, read_stsb_csv
from mst5_dist.gradcache import chunked_embeddings
from mst5_dist.interop import write_model_card
from mst5_dist.lora import apply_lora, count_parameters, enable_gradient_checkpointing
from mst5_dist.losses import info_nce
from mst5_dist.model import T5_FAMILY, ModelError, SentenceEncoder

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a checkpoint was written, resume with --resume latest
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
# Settings that fix the data order; resuming with different values would not continue the run.
RESUME_KEYS = [("train", "batch_size"), ("train", "seed"), ("train", "grad_accum_steps"), ("data", "paths")]


class Interrupted(RuntimeError):
    """Training stopped on a signal after writing a checkpoint."""


@dataclass
class TrainState:
    """Where the loop is; saved with every checkpoint."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch."""
    batch_in_epoch: int = 0
    """Global batches of the current epoch already consumed."""


class StopRequest:
    """SIGINT / SIGTERM / SIGUSR1 set a flag; the loop checkpoints at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting
        self.signum = signum


# ------------------------------------------------------------------------------------ setup


def resolve_mixed_precision(cfg: Config) -> str:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


def setup_accelerator(cfg: Config):
    from accelerate import Accelerator

    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg),
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with="tensorboard" if cfg.train.tensorboard else None,
        project_dir=cfg.train.output_dir,
        kwargs_handlers=distributed.process_group_kwargs(),
    )
    distributed.check_world_size(accelerator.num_processes)
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


def build_data(cfg: Config, encoder: SentenceEncoder, world_size: int, rank: int, log, device="cpu"):
    need_neg = cfg.loss.hard_negatives
    if cfg.modular.stage == "cla":
        modular.check_cla_config(cfg)
    dataset = load_dataset(cfg.data, cfg.train.seed, need_negative=need_neg, log=log)
    lengths = (
        token_lengths(dataset, encoder.tokenizer, encoder.max_seq_length, need_neg)
        if cfg.data.length_grouping
        else None
    )
    sampler = GlobalBatchSampler(
        dataset["source_id"],
        cfg.train.batch_size,
        world_size=world_size,
        rank=rank,
        seed=cfg.train.seed,
        lengths=lengths,
        bucket_batches=cfg.data.bucket_batches,
    )
    if cfg.modular.stage == "cla":  # the other side of each pair: frozen pivot-language vectors
        table = modular.build_pivot_table(cfg, dataset, device, log)
        collator = modular.PivotCollator(encoder.tokenizer, encoder.max_seq_length, table, cfg.train.seed)
    else:
        collator = TripletCollator(encoder.tokenizer, encoder.max_seq_length, need_neg)
    return dataset, sampler, collator


def build_optimizer(cfg: Config, encoder: SentenceEncoder, total_steps: int):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    o = cfg.optim
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = math.ceil(total_steps * o.warmup_ratio)
    if o.scheduler == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    return optimizer, scheduler


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


# ------------------------------------------------------------------------------------ checkpoints


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a ``.tmp`` folder is an unfinished write)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator, cfg: Config, state: TrainState, output_dir: Path) -> Path:
    """save_state into ``step-N.tmp`` on all ranks, then rename on the main process.

    LoRA runs keep only trainable tensors: the frozen base (18 GB for mt5-xxl in fp32) is
    reloaded from ``model.name_or_path`` on resume, not copied into every checkpoint.
    """
    root = output_dir / CHECKPOINTS
    final = root / f"step-{state.step:08d}"
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
        (tmp / STATE_FILE).write_text(json.dumps(meta) + "\n")
        save_config(cfg, tmp / "config.yaml")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[: -cfg.train.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def lora_only(cfg: Config) -> bool:
    return cfg.lora.preset != "full"


def keep_trainable_only(model_names: set[str]):
    """save_state hook (non-DeepSpeed): drop frozen tensors from the saved model weights."""

    def hook(models, weights, output_dir) -> None:
        for i, sd in enumerate(weights):
            weights[i] = {k: v for k, v in sd.items() if k in model_names}

    return hook


def load_checkpoint(accelerator, cfg: Config, path: Path) -> TrainState:
    saved = load_config(path / "config.yaml")
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
    accelerator, model, cfg: Config, output_dir: Path, name: str = "final", extra: dict[str, Any] | None = None
) -> Path:
    """The encoder as ``OUTPUT_DIR/<name>/`` (adapter + tokenizer + pooling), written atomically
    (``<name>.tmp`` renamed when complete); ``extra`` maps file names to JSON written inside it.
    ``final/`` at the end of training, ``best/`` (with ``best.json``) for ``eval.keep_best``.

    Call it on ALL ranks: under ZeRO-3 the trainable tensors are gathered from all ranks first. The
    written adapter is read back and compared, so an empty-tensor adapter can never be shipped.
    """
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
            save_config(cfg, tmp / "training_config.yaml")
            write_model_card(tmp, name=output_dir.name)  # replaces peft's placeholder README.md
            for file_name, content in (extra or {}).items():
                (tmp / file_name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
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


# ------------------------------------------------------------------------------------ loop


def compute_loss(model, batch: dict[str, Any], cfg: Config, device) -> torch.Tensor:
    """Anchors, positives and negatives are encoded together (one forward, or GradCache chunks)."""
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    if cfg.loss.cache_chunk_size:
        emb = chunked_embeddings(model, ids, mask, cfg.loss.cache_chunk_size)
    else:
        emb = model(ids, mask)
    n = batch["n"]
    gather = None if cfg.loss.gather_across_ranks else (lambda t: t)
    if "pivot" in batch:  # modular CLA stage: one side of every pair is a frozen pivot vector
        anchors, positives = modular.cla_pairs(emb, batch["pivot"].to(device), batch["flip"].to(device))
        return info_nce(anchors, positives, None, temperature=cfg.loss.temperature, gather=gather)
    negatives = emb[2 * n : 3 * n] if cfg.loss.hard_negatives else None
    return info_nce(emb[:n], emb[n : 2 * n], negatives, temperature=cfg.loss.temperature, gather=gather)


# Dense bf16 tensor-core peak FLOP/s per GPU, by device name (for MFU).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def peak_bf16_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(cfg: Config, resume: str | None = None, *, keep_process_group: bool = False) -> Path:
    """Run the recipe; return ``OUTPUT_DIR/final``. Raises ``Interrupted`` after a signal.

    ``keep_process_group``: more runs follow in this process (``train-modular``'s stages), so the
    process group outlives this run; the caller ends it with ``distributed.shutdown()``.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    # ---- setup (nothing is written until the data and model load without error)
    accelerator = setup_accelerator(cfg)
    log = accelerator.print
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    output_dir = Path(cfg.train.output_dir)
    encoder = build_encoder(cfg)
    trainable, total = count_parameters(encoder)
    log(f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / max(total, 1):.3f}%)")
    world, rank = accelerator.num_processes, accelerator.process_index
    dataset, sampler, collator = build_data(cfg, encoder, world, rank, log, accelerator.device)
    # The source-id rule can leave a different number of batches in each epoch's order.
    accum = cfg.train.grad_accum_steps
    epoch_batches = [0] * cfg.train.epochs
    # Last epoch first: the sampler caches one epoch, so epoch 0 (where the loop starts) is not
    # built twice, and `sampler.dropped` below is epoch 0's.
    for e in reversed(range(cfg.train.epochs)):
        epoch_batches[e] = len(sampler.global_batches(e)) // accum * accum
    if epoch_batches[0] == 0:
        raise DataError(
            f"{len(dataset)} triplets give no full step of {cfg.train.batch_size} x {accum} "
            "(lower train.batch_size or add data)"
        )
    total_steps = sum(epoch_batches) // accum
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    log(
        f"data: {len(dataset)} triplets, {epoch_batches[0]} global batches of {cfg.train.batch_size} in epoch 0 "
        f"({sampler.dropped} rows left out), {world} process(es), {total_steps} optimizer steps"
    )
    eval_pairs = read_stsb_csv(cfg.eval.sts_path) if cfg.eval.sts_path else None
    if cfg.eval.keep_best and eval_pairs is None:
        raise ConfigError("eval.keep_best=true needs eval.sts_path (the evaluation whose best model it keeps)")
    optimizer, scheduler = build_optimizer(cfg, encoder, total_steps)
    configure_deepspeed(accelerator, cfg, sampler.local_batch, encoder.embedding_dim)
    model, optimizer = accelerator.prepare(encoder, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if lora_only(cfg) and not distributed.zero_stage(accelerator):
        trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        accelerator.register_save_state_pre_hook(keep_trainable_only(trainable))

    state = TrainState()
    if resume:
        ckpt = find_resume_checkpoint(output_dir, resume)
        if ckpt is None:
            log(f"--resume {resume}: no checkpoint in {output_dir / CHECKPOINTS}, starting from scratch")
        else:
            state = load_checkpoint(accelerator, cfg, ckpt)
            log(f"resumed from {ckpt} at step {state.step}")
    best_value = previous_best(output_dir, cfg, state.step)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")
    if cfg.train.tensorboard:
        accelerator.init_trackers("tensorboard")
    log_file = output_dir / "train_log.jsonl"
    stop = StopRequest()
    stop.install()

    # ---- loop
    device = accelerator.device
    mfu_flops = peak_bf16_flops()
    progress = tqdm(
        total=total_steps, initial=state.step, disable=not (accelerator.is_main_process and cfg.train.progress_bar)
    )
    model.train()
    while state.step < total_steps:
        if state.batch_in_epoch >= epoch_batches[state.epoch]:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        sampler.set_epoch(state.epoch, state.batch_in_epoch)
        # A private generator: creating a DataLoader iterator draws from the global torch RNG,
        # which would shift the dropout masks of a resumed run against an uninterrupted one.
        loader = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, generator=torch.Generator()))
        while state.step < total_steps and state.batch_in_epoch < epoch_batches[state.epoch]:
            start = time.perf_counter()
            sums = torch.zeros(4, dtype=torch.float64)  # loss, real tokens, padded tokens, sentences
            grad_norm = None
            for _ in range(cfg.train.grad_accum_steps):
                batch = next(loader)
                with accelerator.accumulate(model):
                    loss = compute_loss(model, batch, cfg, device)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = clip_gradients(accelerator, model, cfg)
                    optimizer.step()
                    optimizer.zero_grad()
                state.batch_in_epoch += 1
                sums += torch.tensor(
                    [loss.item(), batch["real_tokens"], batch["padded_tokens"], batch["input_ids"].shape[0]],
                    dtype=torch.float64,
                )
            scheduler.step()
            state.step += 1
            if grad_norm is None:  # DeepSpeed clips inside its step and keeps the norm
                grad_norm = deepspeed_grad_norm(model)
            sums = accelerator.reduce(sums.to(device), reduction="sum").cpu()
            elapsed = time.perf_counter() - start
            record = {
                "step": state.step,
                "epoch": state.epoch,
                "loss": sums[0].item() / (world * cfg.train.grad_accum_steps),
                "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                "sentences_per_s": sums[3].item() / elapsed,
                "tokens_per_s": sums[1].item() / elapsed,
                "padding_fraction": 1.0 - sums[1].item() / sums[2].item(),
                "step_time_s": elapsed,
                "peak_memory_mb": peak_memory_mb(),
                "world_size": world,
            }
            per_rank_mem = accelerator.gather(torch.tensor([record["peak_memory_mb"]], device=device))
            record["peak_memory_mb_per_rank"] = [round(float(m), 1) for m in per_rank_mem.cpu()]
            if mfu_flops is not None:
                # 6 x parameters x tokens per step (forward 2, backward 4) over the GPUs' bf16 peak.
                record["mfu"] = 6 * total * sums[2].item() / elapsed / (mfu_flops * world)
            every = cfg.eval.every_steps
            if eval_pairs is not None and ((every and state.step % every == 0) or state.step == total_steps):
                record["eval_sts_spearman"] = run_eval(accelerator, model, eval_pairs, cfg)
                log(f"step {state.step}: STS Spearman x100 = {record['eval_sts_spearman']:.2f}")
                if cfg.eval.keep_best:
                    best_value = save_if_best(accelerator, model, cfg, output_dir, record, best_value)
            if accelerator.is_main_process and state.step % cfg.train.log_every == 0:
                with log_file.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{record['loss']:.4f}")
            if cfg.train.tensorboard:
                accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.step)
            progress.update(1)
            if distributed.any_rank(stop.signum is not None, device):
                path = save_checkpoint(accelerator, cfg, state, output_dir)
                progress.close()
                raise Interrupted(
                    f"stopped by signal at step {state.step}; checkpoint {path}; rerun with --resume latest"
                )
            if cfg.train.save_every and state.step % cfg.train.save_every == 0 and state.step < total_steps:
                save_checkpoint(accelerator, cfg, state, output_dir)
    progress.close()

    # ---- save
    save_checkpoint(accelerator, cfg, state, output_dir)
    final = save_final(accelerator, model, cfg, output_dir)
    log(f"done: {state.step} steps, model in {final}")

    # ---- cleanup
    accelerator.wait_for_everyone()  # one DDP run aborted at exit without this barrier
    if keep_process_group:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()  # also destroys the process group
    return final


def run_eval(accelerator, model, pairs, cfg: Config) -> float:
    encoder = accelerator.unwrap_model(model)
    score = evaluate_sts(encoder, pairs, cfg.eval.batch_size)
    encoder.train()
    return score


BEST_DIR, BEST_FILE = "best", "best.json"


def previous_best(output_dir: Path, cfg: Config, step: int) -> float:
    """The value ``eval.keep_best`` must beat: on resume, the one in ``best/best.json``; else -inf."""
    path = output_dir / BEST_DIR / BEST_FILE
    if not cfg.eval.keep_best or step == 0 or not path.is_file():
        return -math.inf
    info = json.loads(path.read_text(encoding="utf-8"))
    return float(info["value"]) if info.get("metric") == cfg.eval.best_metric else -math.inf


def save_if_best(accelerator, model, cfg: Config, output_dir: Path, record: dict[str, Any], best: float) -> float:
    """Write ``best/`` (all ranks, like ``final/``) when this evaluation beats ``best``; return the new best.

    Every rank decides on the main process's score, so all of them enter the (collective) save or none.
    """
    from accelerate.utils import broadcast

    metric = cfg.eval.best_metric
    value = torch.tensor([record[f"eval_{metric}"]], dtype=torch.float64, device=accelerator.device)
    value = float(broadcast(value, from_process=0).item())
    if not value > best:  # higher is better; NaN never improves
        return best
    info = {"step": record["step"], "metric": metric, "log_key": f"eval_{metric}", "value": value}
    save_final(accelerator, model, cfg, output_dir, name=BEST_DIR, extra={BEST_FILE: info})
    record["saved_best"] = True
    accelerator.print(f"step {record['step']}: new best {metric} = {value:.4f}, model in {output_dir / BEST_DIR}")
    return value


def clip_gradients(accelerator, model, cfg: Config) -> float | None:
    """Global grad norm BEFORE clipping (None under DeepSpeed, which clips in its own step)."""
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    return None if norm is None else float(norm)


def deepspeed_grad_norm(model) -> float | None:
    get = getattr(model, "get_global_grad_norm", None)
    norm = get() if get else None
    return None if norm is None else float(norm)


# ------------------------------------------------------------------------------------ CLI


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")


def run_train(args: argparse.Namespace) -> int:
    """Exit code 0 only when training completed; otherwise one line on stderr says why."""
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume)
        return 0
    except Interrupted as e:
        print(f"mst5 train: interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, DataError, EvalDataError, ModelError, FileNotFoundError) as e:
        print(f"mst5 train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mst5 train: aborted (second interrupt); last complete checkpoint kept", file=sys.stderr)
        return 130
    except Exception as e:
        traceback.print_exc()
        print(f"mst5 train: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mst5_dist.train", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
