"""``mst5 export`` and ``mst5 embed``. Exit codes: 0 done, 2 bad model / input / arguments,
3 parity gate failed (nothing left under OUTPUT), 1 anything else."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="training output (with final/) or a final/-style model dir")
    p.add_argument("--output", required=True, help="export folder to write (written as OUTPUT.tmp, then renamed)")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="precision of the primary graph")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write a dynamic int8 graph (CPU)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
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
    p.add_argument("--variant", choices=["fp32", "fp16", "int8"], default=None, help="default: the export's primary")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--lang", default=None, help="modular export: the texts' language code (routes by manifest.json)")
    p.add_argument(
        "--monolingual", action="store_true", help="modular export: use the language module without CLA (mono/)"
    )


def run_export(args: argparse.Namespace) -> int:
    from mst5_dist import modular
    from mst5_dist.export.gate import GateFailed
    from mst5_dist.export.onnx_graph import ExportError
    from mst5_dist.export.pipeline import export_model
    from mst5_dist.model import ModelError

    kwargs = dict(dtype=args.dtype, quantize=args.quantize, opset=args.opset, triton=args.triton)
    try:
        if (Path(args.model) / modular.MANIFEST).is_file():
            modular.export_modular(
                args.model, args.output, monolingual=args.monolingual, overwrite=args.overwrite, **kwargs
            )
        else:
            export_model(args.model, args.output, overwrite=args.overwrite, **kwargs)
    except GateFailed as e:
        print(json.dumps(e.report, indent=2, default=str), file=sys.stderr)
        print(f"mst5 export: {e} (nothing written to {args.output})", file=sys.stderr)
        return EXIT_GATE_FAILED
    except (ModelError, ExportError, FileNotFoundError, OSError) as e:
        print(f"mst5 export: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        traceback.print_exc()
        print(f"mst5 export: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def read_texts(path: Path, field: str = "text") -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, dict):
                    if not isinstance(row.get(field), str):
                        raise ValueError(f"{path}:{n}: field '{field}' missing or not a string")
                    row = row[field]
                if not isinstance(row, str):
                    raise ValueError(f"{path}:{n}: expected a string or an object with '{field}'")
                texts.append(row)
        else:
            texts = f.read().splitlines()
    return texts


def run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from mst5_dist import modular
    from mst5_dist.export.runtime import OnnxEmbedder, ProviderUnavailable
    from mst5_dist.model import ModelError

    try:
        texts = read_texts(Path(args.input), args.field)
        if modular.is_modular_export(args.model):
            routed = modular.OnnxModularEmbedder(args.model, provider=args.provider, variant=args.variant)
            if args.lang is None:
                raise ValueError(
                    f"{args.model} is a modular export: pass --lang (one of {', '.join(routed.languages)})"
                )
            if args.monolingual and f"mono:{args.lang}" not in routed.sessions:
                raise ValueError(f"{args.model}: no monolingual graph for '{args.lang}' (export with --monolingual)")
            emb = routed.encode(texts, args.batch_size, lang=args.lang, cross_lingual=not args.monolingual)
            np.save(args.output, emb)
            print(
                f"{len(texts)} embeddings ({emb.shape[1]} dims, {args.lang} module, {args.provider}) -> {args.output}"
            )
            return 0
        if args.lang is not None:
            raise ValueError(f"--lang {args.lang}: {args.model} is not a modular export (no modular manifest.json)")
        embedder = OnnxEmbedder(args.model, provider=args.provider, variant=args.variant)
    except ProviderUnavailable as e:
        print(f"mst5 embed: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, ValueError, OSError, ModelError) as e:
        print(f"mst5 embed: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    emb = embedder.encode(texts, batch_size=args.batch_size)
    np.save(args.output, emb)
    print(f"{len(texts)} embeddings ({emb.shape[1]} dims, {embedder.variant}, {args.provider}) -> {args.output}")
    return 0


def register(sub) -> None:
    """Add the ``export`` and ``embed`` subcommands to the ``mst5`` parser."""
    p = sub.add_parser("export", help="merge, export to ONNX (fp32/fp16/int8), parity-gate, write atomically")
    add_export_arguments(p)
    p.set_defaults(func=run_export)
    p = sub.add_parser("embed", help="embed texts with an exported model through ONNX Runtime")
    add_embed_arguments(p)
    p.set_defaults(func=run_embed)
