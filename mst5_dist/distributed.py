"""Everything that touches ``torch.distributed`` lives here (and only here).

At world size 1 every helper is the identity, so the same training code runs on one CPU, one GPU
or many ranks without branches.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from mst5_dist.errors import MstError

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 600.0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_env_rank() -> bool:
    """Rank 0 as the launcher set it (RANK), usable before and after a process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """The process group of a launched multi-process run (``WORLD_SIZE`` > 1), owned by the entry
    point: created before the first run, destroyed after the last, so runs inside (``train``, each
    stage of ``train-modular``) neither create nor destroy it. A no-op in a single process.

    On a machine without CUDA the backend must be gloo: left to choose, Accelerate + DeepSpeed pick
    one that leaves every rank thinking it is alone (world 1, all "main"). ``timeout_s`` bounds every
    collective: a hung or stopped rank makes the others fail after that long instead of waiting.
    """
    created = False
    _TIMEOUT_S[0] = timeout_s
    if launched_world_size() > 1 and not (dist.is_available() and dist.is_initialized()):
        from accelerate import PartialState

        # What Accelerator(kwargs_handlers=[InitProcessGroupKwargs(...)]) would do, done once here
        # (later Accelerator objects of this process share this state), with Accelerate's own
        # reading of ACCELERATE_USE_CPU: without it plain DDP on CPU would be "not distributed".
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        PartialState(cpu=cpu, backend=_backend(), timeout=timedelta(seconds=timeout_s))
        created = True
    yield
    if created and dist.is_initialized():
        dist.barrier()  # one DDP run aborted at exit (SIGABRT) without a last barrier
        dist.destroy_process_group()


class CollectiveTimeout(MstError):
    """A collective got no answer from the other ranks in time; the message says which one."""


_TIMEOUT_S = [DEFAULT_TIMEOUT_S]


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a collective's timeout (gloo raises it; a stopped or hung peer never answers) into one
    line naming ``what`` this rank was waiting for, instead of a backend traceback."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if is_distributed() and ("Timed out" in text or "timeout" in text.lower()):
            raise CollectiveTimeout(
                f"{what}: no answer from the other ranks within train.collective_timeout_s={_TIMEOUT_S[0]:g} s "
                f"(rank {dist.get_rank()} of {dist.get_world_size()}: another rank hung, was stopped or died)"
            ) from None
        raise


# How long the other ranks wait for rank 0 inside ``main_process_first``: building a cache of
# millions of rows can take longer than the default group's collective timeout.
MAIN_FIRST_TIMEOUT_S = 3 * 3600.0


@contextlib.contextmanager
def main_process_first(timeout_s: float = MAIN_FIRST_TIMEOUT_S) -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it: rank 0 fills a file cache
    (the parsed data, its token lengths) that the others then only read. The identity in a single
    process. The wait is a barrier on a gloo side group with its own timeout (``timeout_s``),
    so it holds on NCCL jobs and outlasts the default group's timeout. If rank 0 raises, the
    others are released at once and run the block themselves (failing the same way) instead of
    waiting out the timeout."""
    if not is_distributed():
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    main = dist.get_rank() == 0
    try:
        if not main:
            dist.barrier(group=group)
        try:
            yield
        finally:
            if main:
                dist.barrier(group=group)
    finally:
        dist.destroy_process_group(group)


class Gather:
    """The cross-rank gather a loss uses, with this rank's index (the label offset of its rows).

    ``across_ranks`` (``loss.gather_across_ranks``) on: the autograd all-gather below (identity at
    world size 1); off: the identity, and each rank scores only its own rows.
    """

    def __init__(self, across_ranks: bool = True) -> None:
        self.across = across_ranks and is_distributed()
        self.rank = rank() if self.across else 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_gather_with_grad(tensor) if self.across else tensor


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of ITS slice summed over all ranks.

    Every rank's loss depends on every rank's embeddings (they are its negatives), so the gradient
    w.r.t. this rank's embeddings is the sum of what all ranks' losses send back. An all_reduce of
    the full gradient followed by slicing does exactly that and works on gloo as well as NCCL
    (gloo has no reduce_scatter). DDP / ZeRO then average parameter gradients over ranks, which
    turns "sum of local means" into the mean loss over the global batch: no manual rescaling.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.n = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank in rank order, keeping autograd. Identity at world 1.

    All ranks must pass the same shape: the data sampler guarantees equal per-rank batches.
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (used to stop all ranks together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest ``value`` of any rank, on every rank."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def from_main(fn):
    """``fn()`` computed on rank 0 only and its (picklable) result handed to every rank: work all
    ranks need once (verifying a checkpoint's files), without every rank reading everything."""
    if not is_distributed():
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, fn())]
        except Exception as e:  # every rank raises it, instead of the others waiting forever
            box = [(False, e)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def launched_world_size() -> int:
    """World size announced by the launcher (torchrun / accelerate / deepspeed / SLURM srun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_world_size(num_processes: int) -> None:
    """Fail loudly if the launcher's WORLD_SIZE, the process group and Accelerate disagree."""
    launched = launched_world_size()
    group = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not (launched == group == num_processes):
        raise RuntimeError(
            f"world size mismatch: launcher WORLD_SIZE={launched}, process group={group}, "
            f"accelerate num_processes={num_processes}. On CPU the process group must use gloo; "
            "launch with one of the configs in ds_configs/."
        )


def zero_stage(accelerator) -> int:
    """DeepSpeed ZeRO stage of this run (0 when DeepSpeed is not in use)."""
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) if plugin else 0


def full_trainable_state_dict(accelerator, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters as full CPU tensors, on every rank.

    Under ZeRO-3 each rank holds only a shard (a saved adapter would be tensors of shape (0,),
    the known peft/DeepSpeed trap): all ranks must enter ``GatheredParameters`` together.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    return {n: p.detach().cpu().clone() for n, p in named}


def numel(p: torch.nn.Parameter) -> int:
    """Parameter size, also for a ZeRO-3 partitioned parameter (whose local numel is 0)."""
    return getattr(p, "ds_numel", None) or p.numel()
