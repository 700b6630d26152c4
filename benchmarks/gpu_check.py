"""The GPU check (docs/gpu.md): one command on a single-GPU machine, within 8 minutes.

    python benchmarks/gpu_check.py            # CUDA: mt5-base and mt5-xl shapes, bf16
    python benchmarks/gpu_check.py --smoke    # CPU (or GPU), tiny shapes, well under 60 s

Randomly initialised mT5 encoders built from config (no weights, no tokenizer, no data files: the
batches are random token ids of random lengths), trained with LoRA through the trainer's own step
(``training.step.train_step``: compute_loss, the triplet objective, clipping, AdamW) and its record
(``metrics.LogWindow`` / ``step_record`` with ``flops.FlopModel``). Needs torch, transformers,
accelerate, peft, onnx and onnxruntime; not deepspeed nor datasets. Prints one ``CHECK`` line per
check (PASS or FAIL) and ``INFO`` lines; exits 1 if any check failed. ``--inject-mismatch`` gives the
second side of every comparison a differently seeded model: each agreement check must then FAIL
(the test suite runs it as the negative control).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_arithmetic import activations_per_sequence, encoder_params, lora_params

from mst5_dist import encoding
from mst5_dist.config import load_config
from mst5_dist.families import MT5_SIZES, MT5_VOCAB

# name -> (d_model, d_ff, layers, heads, vocab); d_kv 64 as in every published mT5
SHAPES = {f"mt5-{k}": (*v, MT5_VOCAB) for k, v in MT5_SIZES.items()}
SHAPES["smoke"] = (64, 128, 2, 4, 1000)
SHAPES["small-export"] = (256, 512, 4, 4, 8000)
FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"CHECK {name}: {'PASS' if ok else 'FAIL'}  {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def info(text: str) -> None:
    print(f"INFO  {text}", flush=True)


def build_encoder(shape: str, seed: int, device, dtype=torch.float32, lora: bool = True):
    """A random mT5 encoder of ``shape`` (+ LoRA all-linear r 8) on ``device``, built there directly."""
    from transformers import MT5Config, MT5EncoderModel

    from mst5_dist.lora import apply_lora
    from mst5_dist.model import SentenceEncoder

    d, ff, layers, heads, vocab = SHAPES[shape]
    config = MT5Config(vocab_size=vocab, d_model=d, d_kv=64 if d >= 512 else d // heads, d_ff=ff,
                       num_layers=layers, num_heads=heads, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                       attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        backbone = MT5EncoderModel(config).to(dtype)
    encoder = SentenceEncoder(backbone, tokenizer=None)
    for p in encoder.parameters():
        p.requires_grad_(False)
    if lora:
        cfg = load_config(None, ["lora.preset=all-linear", "lora.dropout=0.0"])
        apply_lora(encoder, cfg.lora)
        torch.manual_seed(seed + 1)
        for name, p in encoder.named_parameters():  # B = 0 would make every first step identical
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
    return encoder.to(device)


def random_ids(n: int, seq: int, vocab: int, seed: int) -> list[list[int]]:
    """3n rows (anchors, positives, negatives) of random token ids, lengths seq/2..seq."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3 * n, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (3 * n,), generator=g)
    return [row[:length].tolist() for row, length in zip(ids, lengths.tolist(), strict=True)]


class Trainer:
    """The trainer's step on one encoder, with a one-process Accelerator (mixed precision by autocast)."""

    def __init__(self, accelerator, encoder, *, chunk: int | None = None, lr: float = 1e-4, bf16: bool = True):
        from mst5_dist import distributed
        from mst5_dist.objectives.triplet import TripletObjective
        from mst5_dist.training.builders import build_chunker
        from mst5_dist.training.flops import FlopModel

        overrides = [f"optim.lr={lr}", "loss.hard_negatives=true", "train.grad_accum_steps=1"]
        if chunk:
            overrides.append(f"loss.cache_chunk_size={chunk}")
        self.cfg = load_config(None, overrides)
        params = [p for p in encoder.parameters() if p.requires_grad]
        self.accelerator, self.model = accelerator, encoder
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.objective, self.gather = TripletObjective(self.cfg), distributed.Gather(False)
        self.flops = FlopModel.from_encoder(encoder, self.cfg)
        self.device, self.bf16 = accelerator.device, bf16
        self.chunker = build_chunker(self.cfg, encoder, self.device.type, 0)  # the trainer's chunks

    def step(self, ids: list[list[int]]):
        """One optimizer step on ``ids``, collated as the trainer's collator does."""
        from mst5_dist.batch import Batch
        from mst5_dist.training.step import train_step

        batch = Batch(self.chunker(ids), rows=len(ids) // 3)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return train_step(
                iter([batch]), model=self.model, objective=self.objective, optimizer=self.optimizer,
                scheduler=self.scheduler, accelerator=self.accelerator, gather=self.gather, cfg=self.cfg,
            )  # fmt: skip


def bf16_available(device) -> bool:
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


def sync_sources(trainer: Trainer, batches) -> list[str]:
    """Host syncs raised while the steps run (CUDA's sync debug mode), as ``file:line``."""
    from mst5_dist.training import metrics

    window = metrics.LogWindow(trainer.device)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i, batch in enumerate(batches):
                window.add(i + 1, *trainer.step(batch), time.perf_counter())
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def train_check(accelerator, shape: str, n: int, seq: int, steps: int, bf16: bool) -> None:
    """Sentences/s, MFU/HFU and peak memory (next to memory_arithmetic's prediction) of LoRA steps."""
    from mst5_dist.training import metrics

    device = accelerator.device
    cuda = device.type == "cuda"
    encoder = build_encoder(shape, 0, device, torch.bfloat16 if bf16 and cuda else torch.float32)
    trainer = Trainer(accelerator, encoder, bf16=bf16)
    vocab = SHAPES[shape][4]
    batches = [random_ids(n, seq, vocab, seed) for seed in range(steps + 2)]
    for batch in batches[:2]:  # warm-up (kernels, allocator)
        trainer.step(batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        syncs = sync_sources(trainer, batches[2:3])
        ours = [s for s in syncs if "mst5_dist" in s]
        check(f"{shape} no host sync in a step", not ours,
              f"{len(syncs)} sync(s) in one step, {len(ours)} from mst5_dist {sorted(set(syncs))[:4]}")  # fmt: skip
    window = metrics.LogWindow(device)
    for i, batch in enumerate(batches[2:]):
        window.add(i + 1, *trainer.step(batch), time.perf_counter() if i == 0 else 0.0)
    summed, per_rank = window.metrics(metrics.peak_memory_mb()).pack(device)
    figures = metrics.StepMetrics.unpack(summed.cpu(), per_rank.cpu())
    elapsed = time.perf_counter() - window.started
    metrics.first_bad_step(figures)
    record = metrics.step_record(step=steps, epoch=0, window=window, figures=figures, lr=1e-4,
                                 elapsed=elapsed, world=1, accum=1, flops=trainer.flops,
                                 peak_flops=metrics.peak_bf16_flops())  # fmt: skip
    d, ff, layers, heads, _ = SHAPES[shape]
    total, _ = encoder_params(d, ff, heads, 64, layers)
    predicted = (2 * total + 16 * lora_params(d, ff, heads, 64, layers)) / 2**20
    predicted += 3 * n * activations_per_sequence(d, ff, heads, layers, seq, False) / 2**20
    mfu = f"MFU {record['mfu']:.3f} HFU {record['hfu']:.3f}" if "mfu" in record else "MFU/HFU n/a (no known peak)"
    info(f"{shape} {'bf16' if bf16 else 'fp32'} LoRA all-linear r8, {3 * n} sequences x {seq} tokens: "
         f"{record['sentences_per_s']:.1f} sentences/s, {record['step_time_s'] * 1e3:.1f} ms/step, {mfu}, "
         f"model {record['model_flops'] / 1e9:.2f} GFLOP/step, padding {record['padding_fraction']:.3f}")  # fmt: skip
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        info(f"{shape} peak memory {peak:.0f} MiB; memory_arithmetic predicts {predicted:.0f} MiB "
             f"(ratio {peak / predicted:.2f})")  # fmt: skip
    ok = math.isfinite(record["loss"]) and (("mfu" not in record) or 0 < record["mfu"] <= record["hfu"] <= 1)
    check(f"{shape} training steps", ok, f"loss {record['loss']:.4f}, grad norm {record['grad_norm']:.4f}")


def grads(encoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in encoder.named_parameters() if p.grad is not None}


def rel_diff(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)).item() for k in b)


def precision_check(accelerator, shape: str, n: int, seq: int, steps: int, inject: bool) -> None:
    """bf16 autocast vs fp32: the losses of the first steps, same weights and batches."""
    device = accelerator.device
    if not bf16_available(device):
        info("bf16 vs fp32: skipped, bf16 is not supported on this device")
        return
    vocab = SHAPES[shape][4]
    batches = [random_ids(n, seq, vocab, 100 + s) for s in range(steps)]
    losses = {}
    for bf16 in (False, True):
        encoder = build_encoder(shape, 7 if (bf16 and inject) else 0, device)
        trainer = Trainer(accelerator, encoder, lr=1e-3, bf16=bf16)
        losses[bf16] = [float(trainer.step(b)[0].loss) for b in batches]
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses[True], losses[False], strict=True))
    shown = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(losses[True], losses[False], strict=True))
    check(
        f"{shape} bf16 vs fp32 loss over {steps} steps", worst < 0.02, f"worst rel diff {worst:.2e} (bf16/fp32 {shown})"
    )


def gradcache_check(accelerator, shape: str, n: int, seq: int, chunk: int, inject: bool) -> None:
    """GradCache (loss.cache_chunk_size) on vs off: loss and LoRA gradients of one step (fp32), and memory."""
    device = accelerator.device
    batch = random_ids(n, seq, SHAPES[shape][4], 5)
    out = {}
    for cached in (False, True):
        encoder = build_encoder(shape, 3 if (cached and inject) else 0, device)
        trainer = Trainer(accelerator, encoder, chunk=chunk if cached else None, lr=1e-4, bf16=False)
        trainer.optimizer.step = lambda: None  # keep the gradients for the comparison
        trainer.optimizer.zero_grad = lambda: None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sums, _ = trainer.step(batch)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        out[cached] = (float(sums.loss), grads(encoder), peak)
    loss_diff = abs(out[True][0] - out[False][0]) / abs(out[False][0])
    grad_diff = rel_diff(out[True][1], out[False][1])
    check(f"{shape} GradCache on vs off", loss_diff < 1e-4 and grad_diff < 1e-3,
          f"loss rel diff {loss_diff:.1e}, worst LoRA grad rel diff {grad_diff:.1e}; peak memory "
          f"{out[True][2]:.0f} MiB cached (chunk {chunk}) vs {out[False][2]:.0f} MiB (nan: not measured on a CPU)")  # fmt: skip


def onnx_check(device, inject: bool) -> None:
    """Export a small random encoder to ONNX (fp32) and compare onnxruntime (CPU) with torch on ``device``."""
    import numpy as np
    import onnxruntime as ort

    from mst5_dist.export.onnx_graph import EmbeddingWrapper, export_onnx

    shape = "small-export" if device.type == "cuda" else "smoke"
    vocab = SHAPES[shape][4]
    encoder = build_encoder(shape, 0, "cpu", lora=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = EmbeddingWrapper(copy.deepcopy(encoder.backbone))
        wrapper.backbone.config._attn_implementation = "eager"
        path = export_onnx(wrapper, Path(tmp) / "model.onnx", opset=17, pad_id=0, vocab_size=vocab)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        padded = encoding.Chunker(0)(random_ids(16, 48, vocab, 9))  # one chunk, one width, input order
        batch = {"input_ids": padded.input_ids[0], "attention_mask": padded.attention_mask[0]}
        feeds = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
        ort_emb = session.run(None, feeds)[1]
    reference = build_encoder(shape, 11, "cpu", lora=False) if inject else encoder
    with torch.no_grad():
        torch_emb = reference.to(device).eval()(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    torch_emb = torch_emb.float().cpu().numpy()
    cos = (ort_emb * torch_emb).sum(-1) / np.linalg.norm(ort_emb, axis=-1) / np.linalg.norm(torch_emb, axis=-1)
    err = float(np.abs(ort_emb - torch_emb).max())
    check(f"ONNX parity, ORT (CPU) vs torch on {device.type} ({shape})", cos.min() > 0.9999 and err < 1e-3,
          f"min cosine {cos.min():.6f}, max abs diff {err:.1e}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few steps (the test suite's CPU run)")
    ap.add_argument("--inject-mismatch", action="store_true", help="negative control: every comparison must fail")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per shape")
    args = ap.parse_args(argv)
    from accelerate import Accelerator

    start = time.perf_counter()
    accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    device = accelerator.device
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    info(f"device {device} ({gpu}), torch {torch.__version__}")
    bf16 = bf16_available(device) and device.type == "cuda"
    if args.smoke:
        train_check(accelerator, "smoke", 8, 32, args.steps or 3, bf16)
        precision_check(accelerator, "smoke", 8, 32, 3, args.inject_mismatch)
        gradcache_check(accelerator, "smoke", 8, 32, 5, args.inject_mismatch)
    else:
        if device.type != "cuda":
            print("gpu_check: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
            return 2
        train_check(accelerator, "mt5-base", 64, 64, args.steps or 10, bf16)  # 192 sequences x 64
        train_check(accelerator, "mt5-xl", 32, 64, args.steps or 5, bf16)
        precision_check(accelerator, "mt5-base", 32, 64, 5, args.inject_mismatch)
        gradcache_check(accelerator, "mt5-base", 32, 64, 16, args.inject_mismatch)
    onnx_check(device, args.inject_mismatch)
    info(f"done in {time.perf_counter() - start:.1f} s; {len(FAILED)} check(s) failed {FAILED}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
