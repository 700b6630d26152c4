"""CPU embedding throughput: ONNX Runtime fp32 and int8 vs PyTorch eager, same model.

    python benchmarks/export_speed.py [--model TRAIN_OUTPUT_OR_MODEL] [--threads 2] [--seconds 2]

Without --model it builds a random mT5 encoder of d_model 384, 6 layers, vocab 32k (the tokenizer
of the embedded default) and exports it with `export_model(..., quantize="int8")` (gates included).
Batch sizes 1/8/64, short (~12 tokens) and long (~120 tokens) inputs; pre-tokenised, so the
figures are model time only. Also prints what ONNX Runtime's graph optimiser fused.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHORT = "The train to the airport leaves every twenty minutes."
LONG = " ".join([SHORT, "Поезд в аэропорт отправляется каждые двадцать минут.", "去机场的火车每二十分钟发一班。"] * 4)


def build_random_model(root: Path) -> Path:
    from transformers import MT5Config, MT5EncoderModel

    from mst5_dist.tiny_default import build_tiny_mt5

    tok = build_tiny_mt5(root / "tok")
    cfg = MT5Config(vocab_size=32_000, d_model=384, d_kv=64, d_ff=1024, num_layers=6, num_heads=6)
    torch.manual_seed(0)
    out = root / "mt5-384"
    MT5EncoderModel(cfg).save_pretrained(str(out))
    for f in tok.iterdir():
        if "token" in f.name or f.name.startswith("spiece"):
            shutil.copy(f, out / f.name)
    return out


def rate(fn, n_rows: int, seconds: float) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        done += n_rows
    return done / (time.perf_counter() - t0)


def fusions(onnx_path: Path, threads: int) -> dict[str, tuple[int, int]]:
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.intra_op_num_threads = threads
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        before = collections.Counter(n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)
        after = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return {
        op: (before.get(op, 0), after.get(op, 0)) for op in sorted(set(before) | set(after)) if before[op] != after[op]
    }


def main() -> None:
    import onnxruntime as ort

    from mst5_dist.export.pipeline import export_model
    from mst5_dist.model import SentenceEncoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="mst5-bench-"))
    try:
        src = Path(args.model) if args.model else build_random_model(root)
        export_model(src, root / "export", quantize="int8")
        exp = root / "export"
        enc = SentenceEncoder.from_pretrained(exp).eval()  # the merged checkpoint, same weights
        sessions = {}
        for variant, file in (("fp32", "onnx/model.onnx"), ("int8", "onnx/model_qint8.onnx")):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sessions[variant] = ort.InferenceSession(str(exp / file), opts, providers=["CPUExecutionProvider"])
        print(f"threads {args.threads}; sentences/s (ratio vs PyTorch eager)")
        print(f"{'input':>6} {'batch':>5} {'tokens':>6} {'torch':>9} {'ort fp32':>16} {'ort int8':>16}")
        for name, text in (("short", SHORT), ("long", LONG)):
            for bs in (1, 8, 64):
                batch = enc.tokenizer([text] * bs, return_tensors="np", padding=True, truncation=True, max_length=128)
                feeds = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
                tt = {k: torch.from_numpy(v) for k, v in feeds.items()}

                def run_torch(tt=tt):
                    with torch.inference_mode():
                        enc(tt["input_ids"], tt["attention_mask"])

                t = rate(run_torch, bs, args.seconds)
                r = {
                    v: rate(lambda s=s, f=feeds: s.run(["sentence_embedding"], f), bs, args.seconds)
                    for v, s in sessions.items()
                }
                print(
                    f"{name:>6} {bs:>5} {feeds['input_ids'].shape[1]:>6} {t:>9.1f} "
                    f"{r['fp32']:>9.1f} ({r['fp32'] / t:.2f}x) {r['int8']:>9.1f} ({r['int8'] / t:.2f}x)"
                )
        print("ORT_ENABLE_ALL graph changes (op: before -> after):")
        for op, (b, a) in fusions(exp / "onnx/model.onnx", args.threads).items():
            print(f"  {op}: {b} -> {a}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
