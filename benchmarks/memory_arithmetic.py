"""Memory arithmetic behind the ds_configs choice (README, "Which launch config"): parameters,
LoRA optimizer state and activations per sequence for the mT5 encoders, from their public configs.

    python benchmarks/memory_arithmetic.py [--seq-len 64] [--sequences 384] [--gpus 8]

Activations use the per-layer estimate of Korthikanti et al. (2022) for a bf16 transformer layer,
s*h*(34 + 5*a*s/h) bytes per sequence (s tokens, h width, a heads), scaled by d_ff/(4h) for the
feed-forward part of mT5's wider gated FFN; with gradient checkpointing only each layer's input
(2*s*h bytes) is kept plus one layer's full activations.
"""

from __future__ import annotations

import argparse

from mst5_dist.families import MT5_SIZES

# google/mt5-* configs (one table, in mst5_dist.evaluate.sweep): d_model, d_ff, heads, d_kv, layers.
MT5 = {f"mt5-{size}": (d, ff, heads, 64, layers) for size, (d, ff, layers, heads) in MT5_SIZES.items()}
VOCAB = 250_112
GB = 1024**3


def encoder_params(d, ff, heads, dkv, layers) -> tuple[int, int]:
    inner = heads * dkv
    per_layer = 4 * d * inner + 3 * d * ff + 2 * d  # q,k,v,o + wi_0,wi_1,wo + 2 RMS norms
    return VOCAB * d + layers * per_layer + d, per_layer


def lora_params(d, ff, heads, dkv, layers, r=8) -> int:
    inner = heads * dkv
    per_layer = 4 * r * (d + inner) + 2 * r * (d + ff) + r * (ff + d)
    return layers * per_layer


def activations_per_sequence(d, ff, heads, layers, s, checkpointing: bool) -> float:
    attn = s * d * (10 + 5 * heads * s / d)  # attention block part of 34 + 5as/h
    mlp = s * d * 24 * ff / (4 * d)  # MLP part, scaled to the real d_ff
    full_layer = attn + mlp
    if checkpointing:
        return layers * 2 * s * d + full_layer
    return layers * full_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=64, help="padded tokens per sentence")
    ap.add_argument("--sequences", type=int, default=384, help="sentences per step (128 triplets = 384)")
    ap.add_argument("--gpus", type=int, default=8)
    a = ap.parse_args()
    print(
        f"| model | encoder params | bf16 weights | LoRA params (all-linear r8) | LoRA AdamW+grads fp32 | "
        f"activations/seq (no ckpt / ckpt) | step activations per GPU, {a.sequences} seqs x {a.seq_len} tok on "
        f"{a.gpus} GPUs (no ckpt / ckpt) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (d, ff, h, dkv, layers) in MT5.items():
        total, _ = encoder_params(d, ff, h, dkv, layers)
        lora = lora_params(d, ff, h, dkv, layers)
        act = activations_per_sequence(d, ff, h, layers, a.seq_len, False)
        act_ck = activations_per_sequence(d, ff, h, layers, a.seq_len, True)
        per_gpu = a.sequences / a.gpus
        print(
            f"| {name} | {total / 1e9:.2f} B | {2 * total / GB:.1f} GiB | {lora / 1e6:.1f} M | "
            f"{16 * lora / GB:.2f} GiB | {act / 2**20:.0f} / {act_ck / 2**20:.0f} MiB | "
            f"{per_gpu * act / GB:.1f} / {per_gpu * act_ck / GB:.1f} GiB |"
        )


if __name__ == "__main__":
    main()
