"""Gradient probe: loss and full LoRA gradients of ONE step on fixed rows, written by rank 0.

Run directly (1 process, the global batch) or under `accelerate launch` (N ranks, each its slice of
the same global batch); the test compares the two. Uses the trainer's own setup and loss code.

    python grad_probe.py --base DIR --out FILE [--accum A] [--global-batch G] [--chunks C,..] [--tokens T,..]
                         [--set section.key=value ...]

Cases: every loss.cache_chunk_size of --chunks x every loss.chunk_tokens of --tokens (``none``: one
width; without --tokens the config's default, and the case keys carry no ``tokens=``) x hard
negatives on and off (accumulation 1); ``--set`` overrides any other config key for every case
(``loss.symmetric=true``, ``loss.matryoshka_dims=[..]``). ``--fault`` breaks a path on purpose (a
negative control for the comparison): ``order`` skips restoring the input order, ``mask`` pads
with attention mask 1 (both on the length-aware path), ``gather`` replaces the autograd all-gather
with a plain one (same losses; the other ranks' share of each rank's gradient is lost).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mst5_dist import distributed, encoding, objectives
from mst5_dist.batch import Batch
from mst5_dist.collate import BatchCollator
from mst5_dist.config import load_config
from mst5_dist.data import read_jsonl
from mst5_dist.tiny_default import builtin_path
from mst5_dist.training.builders import build_encoder, configure_deepspeed, setup_accelerator
from mst5_dist.training.step import compute_loss

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--chunks", default="0", help="comma-separated loss.cache_chunk_size values (0: no GradCache)")
    ap.add_argument("--tokens", default=None, help="comma-separated loss.chunk_tokens values (none: one width)")
    ap.add_argument("--overhead", type=int, default=None, help="loss.chunk_overhead_tokens (default: auto)")
    ap.add_argument("--fault", choices=["order", "mask", "gather"], default=None)
    ap.add_argument("--set", action="append", default=[], help="a config override for every case")
    args = ap.parse_args()
    G, A = args.global_batch, args.accum
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"model.name_or_path={args.base}",
            "model.dropout=0.0",
            "lora.dropout=0.0",
            f"train.batch_size={G}",
            f"train.grad_accum_steps={A}",
            "train.report_to=[]",
            "train.output_dir=/tmp/unused-probe",
            *args.set,
        ],
    )
    accelerator = setup_accelerator(cfg)
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero lora_B so that every LoRA tensor gets a gradient
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    world, rank = accelerator.num_processes, accelerator.process_index
    local = G // world
    rows = read_jsonl(builtin_path("tiny_nli")).rows[::6]  # one row per source example
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=0.0)
    configure_deepspeed(accelerator, cfg, local, encoder.embedding_dim)
    model, optimizer = accelerator.prepare(encoder, optimizer)
    names = [n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    params = [p for _, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    deepspeed = accelerator.state.deepspeed_plugin is not None
    results = {}
    if args.overhead is not None:
        cfg.loss.chunk_overhead_tokens = args.overhead
    tokens = [None] if args.tokens is None else [None if t == "none" else int(t) for t in args.tokens.split(",")]
    default_tokens = cfg.loss.chunk_tokens
    hards = [True, False] if A == 1 else [True]
    cases = [(c, t, h) for c in map(int, args.chunks.split(",")) for t in tokens for h in hards]
    for chunk, tok, hard in cases:
        cfg.loss.hard_negatives, cfg.loss.cache_chunk_size = hard, chunk or None
        cfg.loss.chunk_tokens = default_tokens if args.tokens is None else tok
        objective = objectives.build(cfg)
        gather = (PlainGather if args.fault == "gather" else distributed.Gather)(cfg.loss.gather_across_ranks)
        chunker = encoding.chunker(
            cfg.loss, encoder.tokenizer.pad_token_id, accelerator.device.type, encoder.packing is not None
        )
        collator = BatchCollator(encoder.tokenizer, 64, objective, chunker)
        losses, chunk_counts, planned = [], [], []
        for micro in range(A):
            batch = collator(rows[micro * G : (micro + 1) * G][rank * local : (rank + 1) * local])
            if args.fault in ("order", "mask") and cfg.loss.chunk_tokens is not None:
                break_on_purpose(batch, args.fault)
            planned.append(accelerator.gather(torch.tensor([batch.counts.chunks], device=accelerator.device)).tolist())
            if deepspeed:
                # The engine itself: accelerator.backward would also run engine.step() at the
                # boundary, and the gradients must be read between backward and step.
                loss, batch = compute_loss(model, batch, objective, cfg, accelerator.device, gather)
                model.backward(loss)
                if micro < A - 1:
                    model.step()  # not a boundary: only advances DeepSpeed's micro-step counter
            else:
                with accelerator.accumulate(model):
                    loss, batch = compute_loss(model, batch, objective, cfg, accelerator.device, gather)
                    accelerator.backward(loss)
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            chunk_counts.append(batch.counts.chunks)
        if deepspeed:
            from deepspeed.utils import safe_get_full_grad

            grads = {n: safe_get_full_grad(p).detach().cpu().clone() for n, p in zip(names, params)}
        else:
            grads = {n: p.grad.detach().cpu().clone() for n, p in zip(names, params)}
        key = f"chunk={chunk},hard={hard}" + ("" if args.tokens is None else f",tokens={tok}")
        results[key] = {"losses": losses, "grads": grads, "chunks": chunk_counts, "planned": planned}
        if deepspeed:
            model.step()  # boundary step with lr 0: weights unchanged, gradients cleared, counter advanced
        else:
            optimizer.zero_grad(set_to_none=True)
            for p in params:
                p.grad = None
    if accelerator.is_main_process:
        torch.save(results, args.out)
    accelerator.wait_for_everyone()
    # The results are on disk and every rank passed the barrier. Under heavy CPU load a ZeRO-3 rank
    # once aborted in interpreter teardown ("terminate called without an active exception", a
    # background thread destroyed at exit): not what this probe measures, so leave without teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class PlainGather(distributed.Gather):
    """The negative control ``gather``: an all_gather without autograd, this rank's own slice kept as
    the local tensor (the usual hand-written version): every rank's loss is right, but the gradient
    the other ranks' losses send to this rank's embeddings never arrives."""

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.across:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.detach().contiguous())
        parts[self.rank] = tensor
        return torch.cat(parts)


def break_on_purpose(batch: Batch, fault: str) -> None:
    """The negative controls: a chunker that forgets the input order, or pads with mask 1."""
    chunked = batch.encode
    if fault == "order":
        chunked.restore = None
    else:
        chunked.attention_mask = [torch.ones_like(m) for m in chunked.attention_mask]


if __name__ == "__main__":
    with distributed.process_group():  # the probe is its own entry point (main leaves by os._exit)
        main()
