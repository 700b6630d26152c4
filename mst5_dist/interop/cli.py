"""``mst5 import-adapter``: a published (PEFT 0.4-era) LoRA adapter as one of our model folders."""

from __future__ import annotations

import argparse

from mst5_dist.commands import positive_int
from mst5_dist.errors import run_command
from mst5_dist.interop.adapter import MST5_CARD, import_adapter


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="adapter folder (adapter_config.json + adapter_model.bin/.safetensors) or Hub repo id")
    p.add_argument("--base", required=True, help="T5-family base (e.g. google/mt5-xxl or a local folder)")
    p.add_argument("--output", required=True, help="folder to write (as OUTPUT.tmp, renamed when complete)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=MST5_CARD["normalize"],
                   help="L2-normalise embeddings (m-ST5 card: no)")  # fmt: skip
    p.add_argument("--pooling", choices=["mean", "cls"], default=MST5_CARD["pooling"])
    p.add_argument("--fast-tokenizer", action="store_true", help="use the fast tokenizer (m-ST5 card: slow)")
    p.add_argument("--max-seq-length", type=positive_int, default=512)
    p.add_argument("--drop-decoder", action="store_true", help="import the encoder part of a seq2seq adapter")
    p.add_argument("--no-verify", action="store_true", help="skip loading the base to check the written adapter")
    p.add_argument("--verify-dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--base-license", default=None, help="licence of the base model, for the model card")
    p.add_argument("--data", default=None, help="training data, for the model card (default: the source card's)")
    p.add_argument("--data-license", default=None, help="licence of the training data (default: the source card's)")
    p.add_argument("--adapter-license", default=None, help="licence of the adapter (default: the source card's)")


def run_import(args: argparse.Namespace) -> int:
    def job() -> None:
        out = import_adapter(
            args.src,
            args.base,
            args.output,
            pooling=args.pooling,
            normalize=args.normalize,
            tokenizer_use_fast=args.fast_tokenizer,
            max_seq_length=args.max_seq_length,
            drop_decoder=args.drop_decoder,
            overwrite=args.overwrite,
            verify=not args.no_verify,
            verify_dtype=args.verify_dtype,
            base_license=args.base_license,
            data=args.data,
            data_license=args.data_license,
            adapter_license=args.adapter_license,
        )
        print(f"adapter imported to {out} (load with SentenceEncoder.from_pretrained, mst5 eval / export)")

    return run_command("mst5 import-adapter", job)
