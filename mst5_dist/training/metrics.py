"""The ``train_log.jsonl`` records: loss, gradient norm, throughput, padding, memory, FLOPs and (on a
GPU of known peak) MFU / HFU of the steps since the previous record, summed on the device between
records so that a step needs no host sync; and the exact NaN/inf check of every step."""

from __future__ import annotations

import math
import resource
from dataclasses import astuple, dataclass, field, fields
from typing import Any

import torch

from mst5_dist.encoding import Counts
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
    (``encoding.Counts``: real and padded tokens, sentences, chunks, attended widths) are the host's."""

    def __init__(self, device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.counts = Counts()

    def add(self, loss: torch.Tensor, counts: Counts) -> None:
        self.loss += loss.detach().to(torch.float64)
        self.counts += counts


# A StepMetrics field's metadata: summed over the ranks or gathered per rank; "of": a dataclass of
# numbers, packed field by field.
SUM, PER_RANK = {"gathered": False}, {"gathered": True}


@dataclass
class StepMetrics:
    """The figures of a record's steps, by name. One rank's are device tensors or host numbers;
    ``pack`` lays them out as the two float64 device tensors the recipe reduces over the ranks
    (summed fields) and gathers from them (the rest): the record's one host sync. ``unpack`` names
    the results again: a summed field is then a number, a gathered field a list by rank."""

    loss: Any = field(metadata=SUM)
    """The micro-batch losses, summed."""
    counts: Counts = field(metadata={**SUM, "of": Counts})
    """What the encoder ran."""
    peak_memory_mb: Any = field(metadata=PER_RANK)
    """The process's peak memory."""
    grad_norm: Any = field(metadata=PER_RANK)
    """The steps' gradient norms, summed (0 where no norm was known)."""
    bad_step: Any = field(metadata=PER_RANK)
    """The first step whose loss or gradient norm was not finite (0: none) ..."""
    bad_loss: Any = field(metadata=PER_RANK)
    """... its loss ..."""
    bad_grad_norm: Any = field(metadata=PER_RANK)
    """... and its gradient norm (NaN where it had none)."""

    def pack(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(to sum over ranks, to gather per rank): 1-D float64 tensors on ``device``."""
        parts: dict[bool, list] = {False: [], True: []}
        for f in fields(self):
            value = getattr(self, f.name)
            parts[f.metadata["gathered"]] += astuple(value) if f.metadata.get("of") else [value]
        return vector(parts[False], device), vector(parts[True], device)

    @classmethod
    def unpack(cls, summed: torch.Tensor, gathered: torch.Tensor) -> StepMetrics:
        """The named figures of ``pack``'s tensors once reduced (``summed``) and gathered (every
        rank's part, concatenated or stacked), on the CPU."""
        width = sum(f.metadata["gathered"] for f in fields(cls))
        values = {False: iter(summed.tolist()), True: iter(gathered.reshape(-1, width).T.tolist())}
        named = {}
        for f in fields(cls):
            source = values[f.metadata["gathered"]]
            of = f.metadata.get("of")
            named[f.name] = of(*(next(source) for _ in fields(of))) if of else next(source)
        return cls(**named)


def vector(values: list, device) -> torch.Tensor:
    """Device tensors and host numbers as one 1-D float64 tensor on ``device``."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])


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
        self.counts = Counts()
        self.steps, self.started, self.has_norm = 0, None, False

    def add(self, step: int, sums: StepSums, grad_norm, started: float) -> None:
        """One optimizer step; ``grad_norm`` a device tensor, a float or None; ``started`` its start time."""
        self.started = started if self.started is None else self.started
        self.steps += 1
        self.loss += sums.loss
        self.counts += sums.counts
        norm = torch.full((), math.nan if grad_norm is None else 0.0, dtype=torch.float64, device=self.device)
        if grad_norm is not None:
            self.has_norm = True
            norm = torch.as_tensor(grad_norm, dtype=torch.float64).to(self.device).reshape(())
            self.grad_norm += norm
        finite = torch.isfinite(sums.loss) & (torch.isfinite(norm) | (grad_norm is None))
        values = torch.stack([torch.full_like(norm, step), sums.loss, norm])
        self.bad = torch.where((self.bad[0] == 0) & ~finite, values, self.bad)

    def metrics(self, peak_mb: float) -> StepMetrics:
        """This rank's figures of the window (``peak_mb``: its peak memory)."""
        step, loss, norm = self.bad
        return StepMetrics(self.loss, self.counts, peak_mb, self.grad_norm, step, loss, norm)


def first_bad_step(figures: StepMetrics) -> None:
    """Raise ``NonFinite`` naming the first non-finite step of any rank (``figures`` unpacked) and
    what was not finite there."""
    rows = [r for r in zip(figures.bad_step, figures.bad_loss, figures.bad_grad_norm, strict=True) if r[0] > 0]
    if not rows:
        return
    step = min(r[0] for r in rows)
    at = [r for r in rows if r[0] == step]
    loss = next((r[1] for r in at if not math.isfinite(r[1])), None)
    norm = next((r[2] for r in at if not math.isfinite(r[2])), None)
    check_finite(int(step), {"loss": loss, "grad_norm": norm})


def step_record(
    *, step: int, epoch: int, window: LogWindow, figures: StepMetrics, lr: float, elapsed: float, world: int,
    accum: int, flops, peak_flops: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The record of the window's steps, from ``figures`` (reduced over ranks and gathered,
    unpacked); rates over ``elapsed``, the wall time since the window began."""
    c, steps = figures.counts, window.steps
    model = flops.model_flops(c.real_tokens, c.real_attended) / steps
    hardware = flops.hardware_flops(c.padded_tokens, c.padded_attended) / steps
    record = {
        "step": step,
        "epoch": epoch,
        "steps_in_record": steps,
        "loss": figures.loss / (world * accum * steps),
        "grad_norm": figures.grad_norm[0] / steps if window.has_norm else None,
        "lr": lr,
        "sentences_per_s": c.sentences / elapsed,
        "tokens_per_s": c.real_tokens / elapsed,
        "padding_fraction": 1.0 - c.real_tokens / c.padded_tokens,
        "real_tokens": c.real_tokens / steps,  # per step, all ranks: the useful tokens ...
        "padded_tokens": c.padded_tokens / steps,  # ... and what the encoder ran (rows x width of each chunk)
        "chunks": c.chunks / (world * steps),  # encoder calls per rank per step (all micro-batches)
        "step_time_s": elapsed / steps,
        "peak_memory_mb": figures.peak_memory_mb[0],  # the main process's (rank 0)
        "peak_memory_mb_per_rank": [round(m, 1) for m in figures.peak_memory_mb],
        "world_size": world,
        "model_flops": model,
        "hardware_flops": hardware,
    }
    if peak_flops is not None:
        record["mfu"] = model * steps / elapsed / (peak_flops * world)
        record["hfu"] = hardware * steps / elapsed / (peak_flops * world)
    return record
