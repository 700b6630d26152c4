"""Sentences/s and peak memory per rank at 1 and 2 processes for DDP, ZeRO-2 and ZeRO-3 on the
same model and global batch, through the real trainer and `accelerate launch`, in one script.

    python benchmarks/scaling.py [--steps 12] [--batch 32] [--d-model 256]

Builds a tiny mT5 (width --d-model) from the embedded tokenizer; every configuration trains the
same steps; the first 2 steps (warm-up) are left out of the mean. On a GPU machine it runs the same
launches with the GPU configs and reports MFU from the training log.
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
BACKENDS = {
    "ddp": "accelerate_cpu_ddp.yaml",
    "zero2": "accelerate_cpu_zero2.yaml",
    "zero3": "accelerate_cpu_zero3.yaml",
}


def run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def summarize(log: Path) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines()][2:]
    return {
        "sentences_per_s": mean(r["sentences_per_s"] for r in rows),
        "tokens_per_s": mean(r["tokens_per_s"] for r in rows),
        "peak_mb_per_rank": max(r["peak_memory_mb"] for r in rows),
        "mfu": mean(r["mfu"] for r in rows) if "mfu" in rows[0] else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32, help="global batch (triplets)")
    ap.add_argument("--d-model", type=int, default=256)
    args = ap.parse_args()
    from mst5_dist.tiny_default import build_tiny_mt5

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_mt5(tmp / "base", d_model=args.d_model, d_ff=4 * args.d_model, num_layers=4)
        common = [
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            f"model.name_or_path={base}",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            "train.epochs=20",
            "train.progress_bar=false",
            "train.report_to=[]",
            "model.dropout=0.0",
        ]
        results = {}
        env = dict(os.environ, OMP_NUM_THREADS="2")
        run([sys.executable, "-m", "mst5_dist.train", *common, f"train.output_dir={tmp / 'single'}"], env)
        results["1 process"] = summarize(tmp / "single" / "train_log.jsonl")
        for name, cfg in BACKENDS.items():
            text = (REPO / "ds_configs" / cfg).read_text().replace("ds_configs/", f"{REPO / 'ds_configs'}/")
            cfg_path = tmp / cfg
            cfg_path.write_text(text)
            # 2 ranks on 2 cores: one thread each, so the ranks do not fight over the cores
            env2 = dict(env, OMP_NUM_THREADS="1", **({"ACCELERATE_USE_CPU": "true"} if name == "ddp" else {}))
            run(
                [
                    sys.executable,
                    "-m",
                    "accelerate.commands.launch",
                    "--config_file",
                    str(cfg_path),
                    "-m",
                    "mst5_dist.train",
                    *common,
                    f"train.output_dir={tmp / name}",
                ],
                env2,
            )
            results[f"2 x {name}"] = summarize(tmp / name / "train_log.jsonl")
    base_sps = results["1 process"]["sentences_per_s"]
    print(f"tiny mT5 d_model {args.d_model}, 4 layers, global batch {args.batch} triplets, {args.steps} steps\n")
    print("| configuration | sentences/s | ratio to 1 process | tokens/s | peak memory per rank (MB) | MFU |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a (CPU)"
        print(
            f"| {name} | {r['sentences_per_s']:.0f} | {r['sentences_per_s'] / base_sps:.2f}x | "
            f"{r['tokens_per_s']:.0f} | {r['peak_mb_per_rank']:.0f} | {mfu} |"
        )


if __name__ == "__main__":
    main()
