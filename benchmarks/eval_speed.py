"""Evaluation embedding speed: length-sorted batching vs naive (input-order) batching.

Embeds every sentence of the Tatoeba-36 set (both sides of the 36 LASER v1 files, about 64k
sentences; ``--per-lang N`` keeps the first N lines of each file) with the same ``TorchEmbedder``
twice, once with ``sort_by_length=True`` (what ``mst5 eval`` does) and once with
``sort_by_length=False``, and prints sentences/s of each, their ratio, and the padding fraction
(1 - real tokens / tokens fed to the encoder) of each. Order of the two runs alternates over
``--repeats`` and the best time of each is kept (other processes on a shared machine add noise).

    python benchmarks/eval_speed.py --model runs/tiny-mt5 --data-dir ../shared/data/tatoeba
    python benchmarks/eval_speed.py --model PATH_TO_MINILM --per-lang 200 --threads 1

Without ``--model`` the embedded tiny mT5 is built into a temporary folder first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: build the tiny mT5)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "tatoeba"))
    p.add_argument("--per-lang", type=int, default=None, help="first N lines of each file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default=None)
    args = p.parse_args()

    import torch

    from mst5_dist.evaluate.embedder import TorchEmbedder
    from mst5_dist.evaluate.tatoeba import TATOEBA_36, read_tatoeba

    torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from mst5_dist.tiny_default import build_tiny_mt5

        model = str(build_tiny_mt5(Path(tempfile.mkdtemp()) / "tiny-mt5"))
    texts: list[str] = []
    for lang in TATOEBA_36:
        src, eng = read_tatoeba(args.data_dir, lang)
        texts += src[: args.per_lang] + eng[: args.per_lang]
    sorted_emb = TorchEmbedder.from_pretrained(model, device=args.device, progress=False)
    naive_emb = TorchEmbedder(sorted_emb.encoder, "naive", device=args.device, progress=False, sort_by_length=False)
    sorted_emb.encode(texts[:256], batch_size=args.batch_size)  # warm-up (allocator, kernels)

    best = {"sorted": float("inf"), "naive": float("inf")}
    stats = {}
    for r in range(args.repeats):
        runs = [("sorted", sorted_emb), ("naive", naive_emb)]
        for name, emb in runs if r % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            emb.encode(texts, batch_size=args.batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
            stats[name] = emb.last_stats
    print(f"model {model}: {len(texts)} Tatoeba-36 sentences, batch {args.batch_size}, {args.threads} thread(s)")
    for name in ("sorted", "naive"):
        s = stats[name]
        pad = 1 - s["real_tokens"] / s["padded_tokens"]
        print(f"{name:>7}: {len(texts) / best[name]:9.1f} sentences/s  ({best[name]:.2f} s)  padding {pad:.1%}")
    print(f"speed-up sorted / naive: {best['naive'] / best['sorted']:.2f}x")


if __name__ == "__main__":
    main()
