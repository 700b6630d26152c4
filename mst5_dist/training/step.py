"""One optimizer step: for each accumulation micro-batch, encode, take the objective's loss,
backward; then clip (or let DeepSpeed clip) and step."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mst5_dist import encoding
from mst5_dist.batch import Batch, agree_across_ranks
from mst5_dist.config import Config
from mst5_dist.distributed import Gather
from mst5_dist.training.metrics import StepSums


def compute_loss(model, batch: Batch, objective, cfg: Config, device, gather: Gather) -> tuple[torch.Tensor, Batch]:
    """The loss of ``batch`` and the batch as encoded: its chunk count agreed across the ranks (its
    counts then read the split), on ``device``. Every text is encoded in the collator's
    length-sorted chunks (GradCache: checkpointed), back in input order; the objective turns the
    embeddings into its loss."""
    batch = agree_across_ranks(batch, device).to(device)
    emb = encoding.encode(model, batch.encode, checkpointed=bool(cfg.loss.cache_chunk_size))
    return objective.loss(emb, batch, gather), batch


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


def train_step(
    batches: Iterator[Batch], *, model, objective, optimizer, scheduler, accelerator, gather: Gather, cfg: Config
) -> tuple[StepSums, torch.Tensor | float | None]:
    """``cfg.train.grad_accum_steps`` micro-batches from ``batches`` and one optimizer step of
    ``model`` (prepared by ``accelerator``); the step's sums and its gradient norm before clipping."""
    sums = StepSums(accelerator.device)
    grad_norm = None
    for _ in range(cfg.train.grad_accum_steps):
        batch = next(batches)
        with accelerator.accumulate(model):
            loss, batch = compute_loss(model, batch, objective, cfg, accelerator.device, gather)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = clip_gradients(accelerator, model, cfg)
            optimizer.step()
            optimizer.zero_grad()
        sums.add(loss, batch.counts)
    scheduler.step()
    if grad_norm is None:  # DeepSpeed before Accelerate saw a norm: ask the engine itself
        grad_norm = deepspeed_grad_norm(model)
    return sums, grad_norm
