"""``mst5 export`` and ``mst5 embed``. Exit codes (``mst5_dist.errors``): 0 done, 2 bad model /
input / arguments, 3 parity gate failed (nothing left under OUTPUT), 1 anything else."""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mst5_dist.commands import positive_int
from mst5_dist.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, BadInput, run_command
from mst5_dist.export.int8 import RECIPE_NAMES
from mst5_dist.files import atomic_write_bytes
from mst5_dist.outputs import check_output, claim, refuse_link

logger = logging.getLogger(__name__)
__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE_FAILED", "read_texts", "run_embed", "run_export"]


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="training output (with final/) or a final/-style model dir")
    p.add_argument("--output", required=True, help="export folder to write (written as OUTPUT.tmp, then renamed)")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="precision of the primary graph")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write a dynamic int8 graph (CPU)")
    p.add_argument(
        "--int8-recipe",
        choices=["auto", *RECIPE_NAMES],
        default="auto",
        help="int8 recipe: auto = the first of per_channel, per_channel_matmul, per_channel_matmul_keep_fp32 "
        "that passes the gate; a name forces that one",
    )
    p.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's transformer optimizer")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--triton", action="store_true", help="also write a Triton model repository under OUTPUT/triton")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument(
        "--monolingual",
        action="store_true",
        help="modular model: also export each language module without its CLA adapter (under mono/)",
    )


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a folder written by `mst5 export`")
    p.add_argument("--input", required=True, help="texts.txt (one per line) or .jsonl (string or {'text': ...})")
    p.add_argument("--output", required=True, help="embeddings .npy (float32, rows in input order)")
    p.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    p.add_argument(
        "--variant",
        choices=["fp32", "fp16", "int8", "fp32_optimized"],
        default=None,
        help="default: the export's primary; fp32_optimized: the ORT-optimised fp32 graph, when the export kept it",
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--lang", default=None, help="modular export: the texts' language code (routes by manifest.json)")
    p.add_argument(
        "--monolingual", action="store_true", help="modular export: use the language module without CLA (mono/)"
    )


def run_export(args: argparse.Namespace) -> int:
    def job() -> None:
        from mst5_dist.export.pipeline import export_model
        from mst5_dist.layout import MODULAR_MANIFEST
        from mst5_dist.modular.onnx import export_modular

        kwargs = dict(dtype=args.dtype, quantize=args.quantize, opset=args.opset, triton=args.triton)
        if (Path(args.model) / MODULAR_MANIFEST).is_file():
            export_modular(args.model, args.output, monolingual=args.monolingual, overwrite=args.overwrite, **kwargs)
        else:
            recipes = None if args.int8_recipe == "auto" else (args.int8_recipe,)
            export_model(
                args.model, args.output, overwrite=args.overwrite, int8_recipes=recipes, optimize=not args.no_optimize,
                **kwargs,
            )  # fmt: skip

    return run_command("mst5 export", job)


def read_texts(path: Path, field: str = "text") -> list[str]:
    """One text per line (``.txt``), or per JSON line (a string or ``{field: str}``); a bad line is
    an error naming the file, line and field."""
    if not path.is_file():
        raise BadInput(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    texts = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise BadInput(f"{path}:{n}: bytes that are not valid UTF-8 (at byte {e.start})") from None
            if path.suffix != ".jsonl":
                texts.append(line)
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInput(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if isinstance(row, dict):
                if not isinstance(row.get(field), str):
                    raise BadInput(f"{path}:{n}: field '{field}' missing or not a string")
                row = row[field]
            if not isinstance(row, str):
                raise BadInput(f"{path}:{n}: expected a string or an object with '{field}'")
            try:
                row.encode("utf-8")
            except UnicodeEncodeError:  # a "\ud800" JSON escape: not text any tokenizer takes
                raise BadInput(
                    f"{path}:{n}: field '{field}': contains a lone surrogate escape (not valid Unicode)"
                ) from None
            texts.append(row)
    return texts


def _embedder(args: argparse.Namespace) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """(texts -> embeddings, what serves them) for a plain or a modular export."""
    from mst5_dist.export.runtime import OnnxEmbedder
    from mst5_dist.modular.onnx import OnnxModularEmbedder, is_modular_export

    if is_modular_export(args.model):
        routed = OnnxModularEmbedder(args.model, provider=args.provider, variant=args.variant)
        if args.lang is None:
            raise BadInput(f"{args.model} is a modular export: pass --lang (one of {', '.join(routed.languages)})")
        if args.monolingual and f"mono:{args.lang}" not in routed.sessions:
            raise BadInput(f"{args.model}: no monolingual graph for '{args.lang}' (export with --monolingual)")
        cross = not args.monolingual
        return lambda texts: routed.encode(texts, args.batch_size, lang=args.lang, cross_lingual=cross), (
            f"{args.lang} module"
        )
    if args.lang is not None:
        raise BadInput(f"--lang {args.lang}: {args.model} is not a modular export (no modular manifest.json)")
    embedder = OnnxEmbedder(args.model, provider=args.provider, variant=args.variant)
    return lambda texts: embedder.encode(texts, batch_size=args.batch_size), embedder.variant


PROGRESS_STEPS = 20  # a long input is embedded in this many parts, each reported on stderr


def _embed(args: argparse.Namespace, texts: list[str]) -> tuple[np.ndarray, str]:
    """(embeddings, what served them). An input of more than 16 batches goes in parts (at least
    16 batches each, at most ``PROGRESS_STEPS`` parts), each part done logged: 200,000 lines
    take minutes, which must not look like a hang."""
    embed, served_by = _embedder(args)
    part = max(16 * args.batch_size, -(-len(texts) // PROGRESS_STEPS))
    if len(texts) <= part:
        return embed(texts), served_by
    logger.info("embedding %d texts in %d parts", len(texts), -(-len(texts) // part))
    done: list[np.ndarray] = []
    for start in range(0, len(texts), part):
        done.append(embed(texts[start : start + part]))
        n = min(start + part, len(texts))
        logger.info("embedded %d/%d texts (%d%%)", n, len(texts), 100 * n // len(texts))
    return np.concatenate(done), served_by


def run_embed(args: argparse.Namespace) -> int:
    def job() -> None:
        out_dir = Path(args.output).resolve().parent
        if not out_dir.is_dir():  # checked before the work, not after every embedding is computed
            raise BadInput(f"--output {args.output}: folder {out_dir} does not exist")
        check_output(args.output, "--output")  # "." would write ./.npy
        out = Path(args.output if str(args.output).endswith(".npy") else f"{args.output}.npy")  # np.save's rule
        check_output(out, "--output", [("--model", args.model), ("--input", args.input)])
        refuse_link(out)
        with claim(out):  # one writer of this .npy at a time
            texts = read_texts(Path(args.input), args.field)
            emb, served_by = _embed(args, texts)
            buf = io.BytesIO()
            np.save(buf, emb)
            atomic_write_bytes(out, buf.getvalue())  # a killed run leaves no half-written .npy
        print(f"{len(texts)} embeddings ({emb.shape[1]} dims, {served_by}, {args.provider}) -> {args.output}")

    return run_command("mst5 embed", job)
