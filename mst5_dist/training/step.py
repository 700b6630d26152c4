"""One optimizer step: for each accumulation micro-batch, encode, take the objective's loss,
backward; then clip (or let DeepSpeed clip) and step."""

from __future__ import annotations

from typing import Any

import torch

from mst5_dist import encoding
from mst5_dist.config import Config
from mst5_dist.training.metrics import StepSums


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """The batch's tensors (and its chunked sequences) on ``device``; to a GPU through pinned memory
    without blocking (a plain copy from pageable memory would wait for the GPU to finish the queued
    work: a sync per step)."""
    return {k: v.to(device) if isinstance(v, encoding.ChunkedBatch) else encoding.move(v, device)
            for k, v in batch.items()}  # fmt: skip


def compute_loss(model, batch: dict[str, Any], objective, cfg: Config, device, gather) -> torch.Tensor:
    """Every text of the batch is encoded in the collator's length-sorted chunks (GradCache:
    checkpointed), back in input order; the objective turns the embeddings into its loss. The
    batch's token and chunk counts are updated in place when the ranks agree on a chunk count."""
    encoding.agree_across_ranks(batch, device)
    batch = to_device(batch, device)
    emb = encoding.encode(model, batch["encode"], checkpointed=bool(cfg.loss.cache_chunk_size))
    return objective.loss(emb, batch, gather)


def clip_gradients(accelerator, model, cfg: Config) -> torch.Tensor | float | None:
    """Global grad norm BEFORE clipping. One process and DDP: a device tensor (no host sync).
    DeepSpeed clips inside its engine step, which Accelerate runs within ``backward``: Accelerate
    hands back the float the engine already read (None before the engine has a norm)."""
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    return norm.detach() if isinstance(norm, torch.Tensor) else norm


def deepspeed_grad_norm(model) -> float | torch.Tensor | None:
    """DeepSpeed's norm of the step (a float it already read back, or a tensor)."""
    get = getattr(model, "get_global_grad_norm", None)
    return get() if get else None


def train_step(run, loader) -> tuple[StepSums, torch.Tensor | float | None]:
    """``grad_accum_steps`` micro-batches from ``loader`` and one optimizer step."""
    accelerator, model, optimizer, cfg = run.accelerator, run.model, run.optimizer, run.cfg
    sums = StepSums(accelerator.device)
    grad_norm = None
    for _ in range(cfg.train.grad_accum_steps):
        batch = next(loader)
        with accelerator.accumulate(model):
            loss = compute_loss(model, batch, run.objective, cfg, accelerator.device, run.gather)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = clip_gradients(accelerator, model, cfg)
            optimizer.step()
            optimizer.zero_grad()
        sums.add(loss, batch)
    run.scheduler.step()
    if grad_norm is None:  # DeepSpeed before Accelerate saw a norm: ask the engine itself
        grad_norm = deepspeed_grad_norm(model)
    return sums, grad_norm
