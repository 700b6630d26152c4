"""Peak memory and sentences/s vs global batch size, cached (GradCache) vs uncached training.

    python benchmarks/memory_vs_batch.py [--batches 32,128,512,2048] [--chunk 64] [--d-model 256]

Each configuration is a separate trainer process (peak RSS is per process; on a GPU the trainer
logs CUDA max allocated instead), 3 optimizer steps, the first left out of the speed mean. Data:
Tatoeba pairs from ../shared/data (anchor = English sentence, positive = its translation, hard
negative = the next pair's translation), so that a batch of 2048 has 2048 distinct source ids.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MST5_SHARED_DATA", REPO.parent / "shared" / "data"))


def tatoeba_triplets(out: Path, n: int) -> None:
    rows = []
    for eng in sorted((DATA / "tatoeba").glob("tatoeba.*-eng.eng")):
        other = eng.with_suffix("." + eng.name.split(".")[1].split("-")[0])
        pairs = list(zip(eng.read_text().splitlines(), other.read_text().splitlines()))
        for i, (en, xx) in enumerate(pairs):
            rows.append(
                {
                    "anchor": en,
                    "positive": xx,
                    "negative": pairs[(i + 1) % len(pairs)][1],
                    "source_id": f"{eng.name}:{i}",
                }
            )
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:n]))


def run(base: Path, data: Path, out: Path, batch: int, chunk: int | None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "mst5_dist.train",
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        f"model.name_or_path={base}",
        f"data.paths=[{data}]",
        f"train.batch_size={batch}",
        "train.max_steps=3",
        "train.epochs=1",
        f"train.output_dir={out}",
        "train.progress_bar=false",
        "train.report_to=[]",
        f"loss.cache_chunk_size={chunk or 'null'}",
        "model.max_seq_length=64",
        "data.bucket_batches=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"peak_mb": max(r["peak_memory_mb"] for r in log), "sps": mean(r["sentences_per_s"] for r in log[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,128,512,2048")
    ap.add_argument("--chunk", type=int, default=64, help="loss.cache_chunk_size (sequences)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    from mst5_dist.tiny_default import build_tiny_mt5

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_mt5(tmp / "base", d_model=args.d_model, d_ff=4 * args.d_model, num_layers=args.layers)
        data = tmp / "pairs.jsonl"
        tatoeba_triplets(data, 4 * max(batches))
        results = {(b, c): run(base, data, tmp / f"run-{b}-{c}", b, c) for b in batches for c in (None, args.chunk)}
    print(f"mT5 d_model {args.d_model}, {args.layers} layers, max 64 tokens, chunk {args.chunk} sequences\n")
    print(
        "| global batch (triplets) | uncached peak MB | cached peak MB | uncached sent/s | cached sent/s | "
        "cached / uncached speed |"
    )
    print("|---|---|---|---|---|---|")
    for b in batches:
        u, c = results[(b, None)], results[(b, args.chunk)]
        print(
            f"| {b} | {u['peak_mb']:.0f} | {c['peak_mb']:.0f} | {u['sps']:.0f} | {c['sps']:.0f} | "
            f"{c['sps'] / u['sps']:.2f}x |"
        )
    first, last = results[(batches[0], args.chunk)], results[(batches[-1], args.chunk)]
    ufirst, ulast = results[(batches[0], None)], results[(batches[-1], None)]
    print(
        f"\npeak memory growth {batches[0]} -> {batches[-1]}: cached {last['peak_mb'] / first['peak_mb']:.2f}x, "
        f"uncached {ulast['peak_mb'] / ufirst['peak_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
