"""The ``train_log.jsonl`` records: loss, gradient norm, throughput, padding, memory, FLOPs and (on a
GPU of known peak) MFU / HFU of the steps since the previous record, summed on the device between
records so that a step needs no host sync; and the exact NaN/inf check of every step."""

from __future__ import annotations

import math
import resource
from typing import Any

import torch

from mst5_dist.errors import MstError


class NonFinite(MstError):
    """The loss or gradient norm of a step is NaN or infinite; nothing of that step was written."""


def check_finite(step: int, values: dict[str, float | None]) -> None:
    """Stop at the first non-finite loss or gradient norm, before the log line, checkpoint or model
    that would follow it is written (a NaN checkpoint would be resumed from as if it were good)."""
    bad = [k for k, v in values.items() if v is not None and not math.isfinite(v)]
    if bad:
        shown = ", ".join(f"{k} = {values[k]}" for k in bad)
        raise NonFinite(
            f"step {step}: {shown} (non-finite); stopped before writing anything of this step or later ones. "
            "Lower optim.lr, check loss.temperature and the data; the last checkpoint (if any) is unchanged"
        )


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


class StepSums:
    """Per-step sums over micro-batches: the loss stays on the device (no host sync); the counts
    the host knows anyway (real tokens, padded tokens = rows x width of each chunk the encoder ran,
    sentences, chunks, attended widths) stay on the host."""

    COUNTS = ("real_tokens", "padded_tokens", "sentences", "chunks", "real_attended", "padded_attended")

    def __init__(self, device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.counts = [0] * len(self.COUNTS)

    def add(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        self.loss += loss.detach().to(torch.float64)
        self.counts = [a + batch[k] for a, k in zip(self.counts, self.COUNTS, strict=True)]


class LogWindow:
    """What the steps since the previous record add up to, kept on the device so that a step needs
    no host sync; ``metrics`` reads it at the next record (a logged, evaluated, checkpointed or last
    step). It also keeps, exactly, the first step whose loss or gradient norm was not finite (its
    number and both values, chosen with ``torch.where``), checked at every record before anything
    is written."""

    def __init__(self, device) -> None:
        self.device = device
        self.bad = torch.zeros(3, dtype=torch.float64, device=device)  # step (0: none), loss, grad norm
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.grad_norm = torch.zeros((), dtype=torch.float64, device=self.device)
        self.counts = [0] * len(StepSums.COUNTS)
        self.steps, self.started, self.has_norm = 0, None, False

    def add(self, step: int, sums: StepSums, grad_norm, started: float) -> None:
        """One optimizer step; ``grad_norm`` a device tensor, a float or None; ``started`` its start time."""
        self.started = started if self.started is None else self.started
        self.steps += 1
        self.loss += sums.loss
        self.counts = [a + b for a, b in zip(self.counts, sums.counts, strict=True)]
        norm = torch.full((), math.nan if grad_norm is None else 0.0, dtype=torch.float64, device=self.device)
        if grad_norm is not None:
            self.has_norm = True
            norm = torch.as_tensor(grad_norm, dtype=torch.float64).to(self.device).reshape(())
            self.grad_norm += norm
        finite = torch.isfinite(sums.loss) & (torch.isfinite(norm) | (grad_norm is None))
        values = torch.stack([torch.full_like(norm, step), sums.loss, norm])
        self.bad = torch.where((self.bad[0] == 0) & ~finite, values, self.bad)

    def device_values(self, peak_mb: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(to sum over ranks: loss and counts; to gather per rank: peak memory, grad norm, bad step)."""
        counts = torch.tensor(self.counts, dtype=torch.float64, device=self.device)
        summed = torch.cat([self.loss.reshape(1), counts])
        per_rank = torch.cat([torch.tensor([peak_mb], dtype=torch.float64, device=self.device),
                              self.grad_norm.reshape(1), self.bad])  # fmt: skip
        return summed, per_rank


def first_bad_step(per_rank: torch.Tensor) -> None:
    """Raise ``NonFinite`` naming the first non-finite step of any rank (rows of ``device_values``'s
    per-rank part, on the CPU) and what was not finite there."""
    rows = [r for r in per_rank.tolist() if r[2] > 0]
    if not rows:
        return
    step = min(r[2] for r in rows)
    at = [r for r in rows if r[2] == step]
    loss = next((r[3] for r in at if not math.isfinite(r[3])), None)
    norm = next((r[4] for r in at if not math.isfinite(r[4])), None)
    check_finite(int(step), {"loss": loss, "grad_norm": norm})


def step_record(
    *, step: int, epoch: int, window: LogWindow, summed: torch.Tensor, per_rank: torch.Tensor, lr: float,
    elapsed: float, world: int, accum: int, flops, peak_flops: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The record of the window's steps, from ``summed`` (reduced over ranks) and ``per_rank``
    (gathered), both on the CPU; rates over ``elapsed``, the wall time since the window began."""
    loss, real, padded, sentences, chunks, real_att, padded_att = (float(v) for v in summed)
    steps = window.steps
    model = flops.model_flops(real, real_att) / steps
    hardware = flops.hardware_flops(padded, padded_att) / steps
    record = {
        "step": step,
        "epoch": epoch,
        "steps_in_record": steps,
        "loss": loss / (world * accum * steps),
        "grad_norm": float(per_rank[0, 1]) / steps if window.has_norm else None,
        "lr": lr,
        "sentences_per_s": sentences / elapsed,
        "tokens_per_s": real / elapsed,
        "padding_fraction": 1.0 - real / padded,
        "real_tokens": real / steps,  # per step, all ranks: the useful tokens ...
        "padded_tokens": padded / steps,  # ... and what the encoder ran (rows x width of each chunk)
        "chunks": chunks / (world * steps),  # encoder calls per rank per step (all micro-batches)
        "step_time_s": elapsed / steps,
        "peak_memory_mb": float(per_rank[0, 0]),  # the main process's (rank 0)
        "peak_memory_mb_per_rank": [round(float(m), 1) for m in per_rank[:, 0]],
        "world_size": world,
        "model_flops": model,
        "hardware_flops": hardware,
    }
    if peak_flops is not None:
        record["mfu"] = model * steps / elapsed / (peak_flops * world)
        record["hfu"] = hardware * steps / elapsed / (peak_flops * world)
    return record
