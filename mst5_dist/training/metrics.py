"""The ``train_log.jsonl`` record of one optimizer step: loss, gradient norm, throughput, padding,
memory and (on a GPU) model FLOP utilisation."""

from __future__ import annotations

import math
import resource
from typing import Any

import torch

from mst5_dist.errors import MstError


class NonFinite(MstError):
    """The loss or gradient norm of a step is NaN or infinite; nothing of that step was written."""


def check_finite(record: dict[str, Any]) -> None:
    """Stop at the first non-finite loss or gradient norm, before the step's log line, checkpoint
    or model is written (a NaN checkpoint would be resumed from as if it were good)."""
    bad = [k for k in ("loss", "grad_norm") if record.get(k) is not None and not math.isfinite(record[k])]
    if bad:
        values = ", ".join(f"{k} = {record[k]}" for k in bad)
        raise NonFinite(
            f"step {record['step']}: {values} (non-finite); stopped before writing anything of this step. "
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
    """Per-step sums over micro-batches, kept on the device (no host sync until the step ends):
    loss, real tokens, padded tokens (what the encoder ran: rows x width of each chunk), sentences,
    chunks."""

    def __init__(self, device) -> None:
        self.values = torch.zeros(5, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        self.values[0] += loss.detach().to(torch.float64)
        self.values[1:] += torch.tensor(
            [batch["real_tokens"], batch["padded_tokens"], batch["sentences"], batch["chunks"]],
            dtype=torch.float64,
            device=self.values.device,
        )


def step_record(
    *, step: int, epoch: int, sums: torch.Tensor, grad_norm: float | None, lr: float, elapsed: float,
    world: int, accum: int, total_params: int, peak_flops: float | None,
) -> dict[str, Any]:  # fmt: skip
    """``sums``: the step's ``StepSums`` reduced (summed) over ranks, on the CPU."""
    loss, real, padded, sentences, chunks = (float(v) for v in sums)
    record = {
        "step": step,
        "epoch": epoch,
        "loss": loss / (world * accum),
        "grad_norm": grad_norm,
        "lr": lr,
        "sentences_per_s": sentences / elapsed,
        "tokens_per_s": real / elapsed,
        "padding_fraction": 1.0 - real / padded,
        "chunks": chunks / world,  # encoder calls per rank in the step (all micro-batches)
        "step_time_s": elapsed,
        "peak_memory_mb": peak_memory_mb(),
        "world_size": world,
    }
    if peak_flops is not None:
        # 6 x parameters x tokens per step (forward 2, backward 4) over the GPUs' bf16 peak.
        record["mfu"] = 6 * total_params * padded / elapsed / (peak_flops * world)
    return record
