"""Bring other people's adapters in safely, describe ours, and hand ours to other tools:
``import_adapter`` + ``write_model_card`` + ``as_mteb_model`` (any of our embedders, PyTorch or ONNX,
as an mteb 2 ``EncoderProtocol``; see ``MtebEncoder``).

The published m-ST5 adapter (``pkshatech/m-ST5``) is a PEFT 0.4.0.dev0 LoRA: ``adapter_config.json``
with ``task_type: null`` and ``adapter_model.bin``, a torch pickle. Its keys look like
``base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight``. peft 0.21 keeps the same
names IN THE FILE (it inserts the adapter name, ``...q.lora_A.default.weight``, only inside the live
model), so the keys carry over once checked; what changed is the container (pickle ->
safetensors) and the config schema. The checks that matter:

* the pickle is read only with ``torch.load(weights_only=True)``: anything that is not plain tensors
  (a class instance, a function reference) is refused and nothing is written;
* every key must land on a LoRA parameter of the encoder-only base (``MT5EncoderModel``), with the
  right shape. Adapters trained on the full seq2seq model may hold ``decoder.`` keys: the encoder
  has no such modules, so they are reported (an error unless ``drop_decoder=True``, and then listed
  in ``import_report.json``), never silently dropped. Every LoRA parameter the config creates must
  also get a tensor (peft would otherwise keep its random init without a word);
* the written directory is loaded back through ``SentenceEncoder.from_pretrained`` and every LoRA
  tensor inside the live model is compared with the source (``verify=True``, the default).

Matching runs on a meta-device copy of the base (config only), so it costs nothing even for mt5-xxl;
only verification loads the real weights.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mst5_dist.atomic import atomic_dir
from mst5_dist.evaluate.embedder import file_sha256
from mst5_dist.model import META_FILE, T5_FAMILY, ModelError

ADAPTER_CONFIG = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
REPORT = "import_report.json"
PEFT_PREFIX = "base_model.model."
# What the m-ST5 model card states (https://huggingface.co/pkshatech/m-ST5): masked mean pooling
# over MT5EncoderModel outputs, no L2 normalisation, slow tokenizer. Its licence (cc-by-nc-4.0) and
# data (xnli) are read from the card's front matter when the source folder holds it.
MST5_CARD = {"pooling": "mean", "normalize": False, "tokenizer_use_fast": False}
SUPPORTED_CONFIG_KEYS = {
    "base_model_name_or_path",
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "task_type",
    "fan_in_fan_out",
    "bias",
    "inference_mode",
    "modules_to_save",
    "init_lora_weights",
    "revision",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "auto_mapping",
    "peft_version",
}


class InteropError(ModelError):
    """An adapter or model that cannot be imported as it is; the message says why."""


# ---------------------------------------------------------------- reading the source


def resolve_source(src: str | Path) -> Path:
    """A local adapter folder as it is, or a Hugging Face repo id downloaded (adapter files only)."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.exists():
        raise InteropError(f"{src}: expected a folder holding {ADAPTER_CONFIG} and the adapter weights")
    if str(src).count("/") != 1 or str(src).startswith((".", "/")):
        raise InteropError(f"{src}: no such folder (and not a Hugging Face repo id like pkshatech/m-ST5)")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(str(src), allow_patterns=[ADAPTER_CONFIG, SAFE_WEIGHTS, PICKLE_WEIGHTS, "README.md"])
        )
    except Exception as e:  # offline, unknown repo, gated: one clear line
        raise InteropError(f"{src}: not a local folder and the Hub download failed ({type(e).__name__}: {e})") from e


def read_adapter_config(src: Path) -> dict[str, Any]:
    """The source's ``adapter_config.json``, checked for what this importer can represent faithfully."""
    cfg_path = src / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise InteropError(f"{src}: no {ADAPTER_CONFIG}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InteropError(f"{cfg_path}: not valid JSON ({e})") from e
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (only LORA is supported)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias {cfg.get('bias')!r} (only 'none')")
    if cfg.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out true (T5 projections are nn.Linear; the weights would be transposed)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} (fully trained modules are not imported)")
    if cfg.get("layers_to_transform") is not None or cfg.get("layers_pattern") is not None:
        problems.append("layers_to_transform / layers_pattern are not supported")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            problems.append(f"missing '{key}'")
    unknown = sorted(set(cfg) - SUPPORTED_CONFIG_KEYS)
    if unknown:
        problems.append(f"unknown fields {unknown}")
    if problems:
        raise InteropError(f"{cfg_path}: cannot import: " + "; ".join(problems))
    return cfg


def load_adapter_tensors(src: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The adapter tensors; a pickle is read ONLY with ``weights_only=True``."""
    safe, pick = src / SAFE_WEIGHTS, src / PICKLE_WEIGHTS
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(str(safe)), safe
    if not pick.is_file():
        raise InteropError(f"{src}: neither {SAFE_WEIGHTS} nor {PICKLE_WEIGHTS}")
    try:
        obj = torch.load(str(pick), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), str(e).splitlines()[0])
        raise InteropError(
            f"{pick}: refused: the pickle holds objects other than tensors ({detail}); it is read only "
            "with torch.load(weights_only=True), which never runs code from the file. Nothing was written."
        ) from e
    except Exception as e:
        raise InteropError(f"{pick}: unreadable as a torch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not obj:
        raise InteropError(f"{pick}: expected a non-empty dict of tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InteropError(f"{pick}: refused: entries that are not tensors: {bad[:5]}. Nothing was written.")
    return dict(obj), pick


def source_card_facts(src: Path) -> dict[str, str]:
    """``license`` and ``datasets`` from the YAML front matter of the source's README.md (the Hub card)."""
    card = src / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    import yaml

    try:
        front = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    if isinstance(front, dict) and isinstance(front.get("license"), str):
        out["license"] = front["license"]
    if isinstance(front, dict) and front.get("datasets"):
        ds = front["datasets"]
        out["datasets"] = ", ".join(map(str, ds)) if isinstance(ds, list) else str(ds)
    return out


# ---------------------------------------------------------------- key matching


def module_key(key: str) -> str:
    """``base_model.model.X.lora_A[.default].weight`` -> ``X.lora_A.weight`` (file layout, no prefix)."""
    key = key.removeprefix(PEFT_PREFIX)
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.default.weight", f".{part}.weight")
    return key


def expected_lora_shapes(base: str, lora_cfg: Any) -> tuple[dict[str, tuple[int, ...]], Any]:
    """``{X.lora_A.weight: shape}`` for every LoRA parameter peft creates on the encoder-only base.

    Built on the meta device from the config alone (no weights read)."""
    from peft import get_peft_model
    from transformers import AutoConfig, MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

    config = AutoConfig.from_pretrained(base)
    if config.model_type not in T5_FAMILY:
        raise InteropError(f"{base}: model type {config.model_type}; the m-ST5 adapter needs a T5-family base")
    cls = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}[config.model_type]
    with torch.device("meta"):
        model = cls(config)
        try:
            peft_model = get_peft_model(model, lora_cfg)
        except ValueError as e:  # target modules not found in the base
            raise InteropError(f"{base}: the adapter's target_modules do not exist there ({e})") from e
    shapes = {
        module_key(k): tuple(v.shape) for k, v in peft_model.state_dict().items() if ".lora_A." in k or ".lora_B." in k
    }
    return shapes, config


def match_keys(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], *, drop_decoder: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map every source key onto an expected LoRA parameter; raise listing whatever does not fit."""
    keys = {k: module_key(k) for k in tensors}
    # An adapter trained on a bare encoder stack (model.encoder wrapped directly) has no "encoder." prefix.
    if not any(m.startswith(("encoder.", "decoder.")) for m in keys.values()) and all(
        f"encoder.{m}" in expected for m in keys.values()
    ):
        keys = {k: f"encoder.{m}" for k, m in keys.items()}
    decoder = sorted(k for k, m in keys.items() if m.startswith("decoder."))
    unmatched = sorted(k for k, m in keys.items() if m not in expected and not m.startswith("decoder."))
    shape_bad = [
        f"{k} {tuple(tensors[k].shape)} (base expects {expected[m]})"
        for k, m in sorted(keys.items())
        if m in expected and tuple(tensors[k].shape) != expected[m]
    ]
    mapped = {m: tensors[k] for k, m in keys.items() if m in expected}
    missing = sorted(set(expected) - set(mapped))
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} key(s) match no LoRA module of the base: " + ", ".join(unmatched))
    if decoder and not drop_decoder:
        problems.append(
            f"{len(decoder)} key(s) belong to the decoder, which an encoder-only model does not have "
            f"(pass --drop-decoder to import the encoder part and record them): "
            + ", ".join(decoder[:10])
            + (" ..." if len(decoder) > 10 else "")
        )
    if shape_bad:
        problems.append("shape mismatch (wrong base model?): " + ", ".join(shape_bad[:10]))
    if missing:
        problems.append(
            f"{len(missing)} LoRA parameter(s) of the base get no tensor from the adapter: " + ", ".join(missing[:10])
        )
    if problems:
        raise InteropError("adapter keys do not fit the base; nothing written: " + " | ".join(problems))
    return mapped, {"keys": len(tensors), "matched": len(mapped), "dropped_decoder_keys": decoder}


# ---------------------------------------------------------------- import


def import_adapter(
    src: str | Path,
    base: str,
    output: str | Path,
    *,
    pooling: str = MST5_CARD["pooling"],
    normalize: bool = MST5_CARD["normalize"],
    tokenizer_use_fast: bool = MST5_CARD["tokenizer_use_fast"],
    max_seq_length: int = 512,
    drop_decoder: bool = False,
    overwrite: bool = False,
    verify: bool = True,
    verify_dtype: str = "fp32",
    base_license: str | None = None,
    data: str | None = None,
    data_license: str | None = None,
    adapter_license: str | None = None,
) -> Path:
    """Import an old-layout (or current) PEFT LoRA adapter as a ``SentenceEncoder`` directory.

    Everything is written to ``OUTPUT.tmp`` and renamed only when complete and verified; on any
    error the temporary folder is removed and ``OUTPUT`` is left as it was. Licences and data not
    given are taken from the source's own README.md front matter (``license``, ``datasets``), if any."""
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import load_file, save_file

    out = Path(output)
    if out.exists() and not overwrite:
        raise InteropError(f"{out} exists (pass --overwrite to replace it)")
    src_dir = resolve_source(src)
    cfg = read_adapter_config(src_dir)
    tensors, weights_file = load_adapter_tensors(src_dir)
    declared = source_card_facts(src_dir)
    adapter_license = adapter_license or declared.get("license")
    data_license = data_license or declared.get("license")
    data = data or declared.get("datasets")
    lora_cfg = PeftLoraConfig(
        r=int(cfg["r"]),
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=float(cfg.get("lora_dropout", 0.0)),
        target_modules=cfg["target_modules"],
        fan_in_fan_out=False,
        bias="none",
        rank_pattern=cfg.get("rank_pattern") or {},
        alpha_pattern=cfg.get("alpha_pattern") or {},
        base_model_name_or_path=base,
    )
    expected, config = expected_lora_shapes(base, lora_cfg)
    mapped, match = match_keys(tensors, expected, drop_decoder=drop_decoder)

    base_ref = str(Path(base).resolve()) if Path(base).is_dir() else base
    lora_cfg.base_model_name_or_path = base_ref
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        file_tensors = {PEFT_PREFIX + m: t.detach().contiguous() for m, t in sorted(mapped.items())}
        save_file(file_tensors, str(tmp / SAFE_WEIGHTS), metadata={"format": "pt"})
        lora_cfg.save_pretrained(str(tmp))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base, use_fast=tokenizer_use_fast)
        tokenizer.save_pretrained(str(tmp))
        meta = {
            "format_version": 1,
            "base_model": base_ref,
            "model_type": config.model_type,
            "adapter": True,
            "pooling": pooling,
            "normalize": normalize,
            "max_seq_length": max_seq_length,
            "tokenizer_use_fast": tokenizer_use_fast,
            "embedding_dim": config.d_model,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        written = load_file(str(tmp / SAFE_WEIGHTS))
        if set(written) != set(file_tensors) or any(not torch.equal(written[k], v) for k, v in file_tensors.items()):
            raise InteropError(f"{tmp / SAFE_WEIGHTS}: read-back differs from the source tensors")
        report = {
            "source": str(src),
            "source_dir": str(src_dir),
            "source_weights": weights_file.name,
            "source_sha256": file_sha256(weights_file),
            "source_config": cfg,
            "base_model": base_ref,
            **match,
            "verified_in_model": False,
        }
        if verify:
            verify_import(tmp, mapped, dtype=verify_dtype)
            report["verified_in_model"] = True
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        write_model_card(
            tmp,
            name=out.name,
            base_license=base_license,
            data=data,
            data_license=data_license,
            adapter_license=adapter_license,
            source=str(src),
        )
    return out


def verify_import(path: Path, mapped: dict[str, torch.Tensor], *, dtype: str = "fp32") -> None:
    """Load ``path`` as users will and check each LoRA tensor inside the live peft model."""
    from mst5_dist.model import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(path, dtype=dtype)
    live = {module_key(k): v for k, v in encoder.backbone.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
    if set(live) != set(mapped):
        raise InteropError(
            f"{path}: after loading, peft holds LoRA tensors {sorted(set(live) ^ set(mapped))[:5]} that differ "
            "from the imported set"
        )
    for k, v in mapped.items():
        if not torch.equal(live[k], v.to(live[k].dtype)):
            raise InteropError(f"{path}: LoRA tensor {k} inside the loaded model differs from the source")


# ---------------------------------------------------------------- model card


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _results_section(results: dict[str, Any]) -> str:
    if results.get("markdown"):
        return str(results["markdown"])
    rows = []
    for task, res in (results.get("results") or {}).items():
        if not isinstance(res, dict):
            continue
        for key, val in res.items():
            if isinstance(val, dict):
                score = next((val[m] for m in ("spearman", "f1", "mean", "accuracy") if m in val), None)
                if isinstance(score, (int, float)):
                    rows.append(f"| {task} | {key} | {score:.2f} |")
    return "| task | subset | score |\n|---|---|---|\n" + "\n".join(rows) if rows else "(no scores in results.json)"


def write_model_card(
    model_dir: str | Path,
    *,
    name: str | None = None,
    base_model: str | None = None,
    base_license: str | None = None,
    data: str | None = None,
    data_license: str | None = None,
    adapter_license: str | None = None,
    source: str | None = None,
    results: str | Path | None = None,
) -> Path:
    """Write ``model_dir/README.md`` describing a ``final/``-style or imported model directory.

    Facts are read from the folder (``sentence_encoder.json``, ``adapter_config.json``,
    ``training_config.yaml``, ``results.json`` or ``results``); licences are only what the caller
    declares (``None`` -> "not declared"). Returns the card's path."""
    d = Path(model_dir)
    meta = _read_json(d / META_FILE) or {}
    adapter = _read_json(d / ADAPTER_CONFIG)
    report = _read_json(d / REPORT)
    train_cfg: dict[str, Any] = {}
    if (d / "training_config.yaml").is_file():
        import yaml

        train_cfg = yaml.safe_load((d / "training_config.yaml").read_text(encoding="utf-8")) or {}
    res = _read_json(Path(results)) if results else _read_json(d / "results.json")
    base = base_model or meta.get("base_model") or (train_cfg.get("model") or {}).get("name_or_path") or "unknown"
    title = name or d.name
    pooling, normalize = meta.get("pooling", "mean"), bool(meta.get("normalize", True))
    use_fast = bool(meta.get("tokenizer_use_fast", True))
    max_len = meta.get("max_seq_length", 128)
    declared = "not declared (check before redistributing)"

    lines = ["---", "pipeline_tag: sentence-similarity", "tags:", "- sentence-embeddings", "- m-st5"]
    lic = adapter_license or data_license or base_license
    if lic:
        lines.append(f"license: {lic}")
    lines += ["---", "", f"# {title}", ""]
    lines.append(
        f"Sentence encoder: the encoder of `{base}`, {pooling}-pooled"
        + (" and L2-normalised" if normalize else " (not normalised; compare with cosine similarity)")
        + f", embedding size {meta.get('embedding_dim', '?')}, inputs truncated to {max_len} tokens."
    )
    if source:
        lines.append(f"Imported from `{source}` with `mst5 import-adapter`.")
    lines += ["", "## Model", "", "| | |", "|---|---|", f"| base model | `{base}` |"]
    lines.append(f"| weights | {'LoRA adapter (PEFT) on the base' if adapter else 'full weights'} |")
    lines.append(f"| pooling | {pooling} |")
    lines.append(f"| normalise | {normalize} |")
    lines.append(f"| tokenizer | {'fast' if use_fast else 'slow (SentencePiece, use_fast=False)'} |")
    if adapter:
        lines += [
            "",
            "## LoRA settings",
            "",
            f"r {adapter.get('r')}, alpha {adapter.get('lora_alpha')}, dropout {adapter.get('lora_dropout')}, "
            f"target modules {adapter.get('target_modules')}, bias {adapter.get('bias', 'none')}.",
        ]
        if report:
            lines.append(
                f"Source adapter `{report.get('source')}` ({report.get('source_weights')}, sha256 "
                f"`{report.get('source_sha256')}`): {report.get('matched')} of {report.get('keys')} tensors imported"
                + (
                    f", {len(report['dropped_decoder_keys'])} decoder tensors dropped on request"
                    if report.get("dropped_decoder_keys")
                    else ""
                )
                + "."
            )
    lines += ["", "## Training recipe", ""]
    if train_cfg:
        lora, optim, tr, loss = (train_cfg.get(s) or {} for s in ("lora", "optim", "train", "loss"))
        lines.append(
            f"Contrastive InfoNCE (temperature {loss.get('temperature')}, hard negatives "
            f"{loss.get('hard_negatives')}), LoRA preset `{lora.get('preset')}` r {lora.get('r')} alpha "
            f"{lora.get('alpha')}, AdamW lr {optim.get('lr')}, global batch {tr.get('batch_size')}, "
            f"{tr.get('epochs')} epoch(s), seed {tr.get('seed')}. Full config: `training_config.yaml`."
        )
    else:
        lines.append("No `training_config.yaml` in this folder; see the source's own documentation.")
    data_desc = data
    if not data_desc and train_cfg.get("data"):
        dcfg = train_cfg["data"]
        data_desc = f"{dcfg.get('format')} data: {', '.join(map(str, dcfg.get('paths') or []))}"
    lines += ["", "## Data", "", data_desc or "not recorded"]
    lines += ["", "## Evaluation", ""]
    lines.append(_results_section(res) if res else "No `results.json` yet: run `mst5 eval --model THIS_DIR ...`.")
    st_norm = "\nmodel.append(Normalize())" if normalize else ""
    lines += [
        "",
        "## Usage",
        "",
        "With this project:",
        "",
        "```python",
        "from mst5_dist.model import SentenceEncoder",
        "",
        'encoder = SentenceEncoder.from_pretrained("THIS_DIR")',
        'emb = encoder.encode(["I am a dog.", "Ich bin ein Hund."])',
        "```",
        "",
        "With sentence-transformers (the base's encoder + this adapter"
        + (")" if adapter else "; or point it at a `mst5 export` folder, which holds modules.json)")
        + ":",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer",
        "",
        f'word = Transformer("{base if adapter else "THIS_DIR"}", max_seq_length={max_len}, '
        f'processor_kwargs={{"use_fast": {use_fast}}})',
        f'model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "{pooling}")])' + st_norm,
    ]
    if adapter:
        lines.append('model.load_adapter("THIS_DIR")')
    lines += [
        'emb = model.encode(["I am a dog.", "Ich bin ein Hund."])',
        "```",
        "",
        "With ONNX Runtime: export first (merges the adapter, checks parity, writes `onnx/model.onnx`):",
        "",
        "```bash",
        "mst5 export --model THIS_DIR --output THIS_DIR-onnx --triton",
        "mst5 embed --model THIS_DIR-onnx --input texts.txt --output emb.npy",
        "```",
        "",
        "```python",
        "import onnxruntime as ort",
        "from transformers import AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("THIS_DIR-onnx", use_fast={use_fast})',
        'sess = ort.InferenceSession("THIS_DIR-onnx/onnx/model.onnx", providers=["CPUExecutionProvider"])',
        f'batch = tok(["I am a dog."], padding=True, truncation=True, max_length={max_len}, return_tensors="np")',
        'emb = sess.run(["sentence_embedding"], {"input_ids": batch["input_ids"].astype("int64"),',
        '                                        "attention_mask": batch["attention_mask"].astype("int64")})[0]',
        "```",
        "",
        "With Triton Inference Server: `mst5 export ... --triton` writes `triton/mst5_encoder/` "
        "(`config.pbtxt` + `1/model.onnx`, platform `onnxruntime_onnx`); inputs `input_ids`, `attention_mask` "
        "(INT64, [batch, seq]), output `sentence_embedding` (FP32). Serve with "
        "`tritonserver --model-repository THIS_DIR-onnx/triton`; tokenize on the client as above.",
        "",
        "## Licences",
        "",
        f"- base model `{base}`: {base_license or declared}",
        f"- training data: {data_license or declared}",
    ]
    if adapter:
        lines.append(f"- adapter weights: {adapter_license or declared}")
    lines.append("")
    card = d / "README.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card


# ---------------------------------------------------------------- mteb


def _embedder_facts(embedder: Any) -> dict[str, Any]:
    """Runtime, embedding size, token limit, parameter count and fingerprint of any of our embedders
    (``TorchEmbedder``, ``OnnxEmbedder``, ``CachedEmbedder`` around either, or a ``SentenceEncoder``)."""
    inner = getattr(embedder, "inner", embedder)  # CachedEmbedder
    encoder = getattr(inner, "encoder", inner)  # TorchEmbedder -> SentenceEncoder
    facts: dict[str, Any] = {"fingerprint": getattr(embedder, "fingerprint", None)}
    if hasattr(inner, "session"):  # OnnxEmbedder
        facts.update(
            framework=["ONNX"],
            dim=int(inner.dim),
            max_tokens=int(inner.max_seq_length),
            n_parameters=None,
            label=f"onnx-{inner.variant}-{inner.export_dir.name}",
        )
    elif isinstance(encoder, torch.nn.Module):
        facts.update(
            framework=["PyTorch"],
            dim=int(encoder.embedding_dim),
            max_tokens=int(encoder.max_seq_length),
            n_parameters=sum(p.numel() for p in encoder.parameters()),
            label=f"torch-{encoder.model_type}",
        )
    else:
        raise InteropError(f"{type(embedder).__name__}: not one of our embedders (TorchEmbedder, OnnxEmbedder, ...)")
    return facts


class MtebEncoder:
    """One of our embedders behind mteb 2's ``EncoderProtocol``, our own ``encode(texts, batch_size)``
    left as it is.

    mteb 2 calls ``encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type, **encode_kwargs)``
    with batches ``{"text": [...], ...}`` and reads ``mteb_model_meta`` (name, revision, embedding size;
    ``similarity_fn_name`` cosine) and ``similarity`` / ``similarity_pairwise``. Texts are passed to the
    wrapped embedder unchanged: our encoders use no instructions, so ``prompt_type`` is ignored; the
    batches are flattened and re-batched by ``encode_kwargs["batch_size"]`` in our length-sorted order.
    mteb is imported only when this class is used (it takes ~5 s to import).
    """

    def __init__(self, embedder: Any, *, name: str | None = None, revision: str | None = None) -> None:
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.embedder = embedder
        facts = _embedder_facts(embedder)
        self.dim = facts["dim"]
        fingerprint = facts["fingerprint"]
        name = name or f"mst5-dist/{facts['label']}"
        if "/" not in name:
            name = f"mst5-dist/{name}"
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": name,
                # mteb keys its result cache by (name, revision): the content fingerprint keeps two
                # different models of the same name apart.
                "revision": revision or (fingerprint[:16] if fingerprint else None),
                "embed_dim": facts["dim"],
                "max_tokens": facts["max_tokens"],
                "n_parameters": facts["n_parameters"],
                "framework": facts["framework"],
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": False,
                "modalities": ["text"],
            }
        )

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise InteropError(f"mteb passed a batch without text (keys {sorted(batch)}): text-only encoder")
            texts.extend(str(t) for t in batch["text"])
        emb = self.embedder.encode(texts, batch_size=int(kwargs.get("batch_size") or 32))
        emb = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        if emb.shape != (len(texts), self.dim):
            raise InteropError(f"embedder returned shape {emb.shape} for {len(texts)} texts (dim {self.dim})")
        # mteb turns rows into torch tensors, which refuse negative strides (a reversed view).
        return np.ascontiguousarray(emb, dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def as_mteb_model(embedder: Any, *, name: str | None = None, revision: str | None = None) -> MtebEncoder:
    """``mteb.evaluate(as_mteb_model(load_embedder(PATH)), tasks)``: any of our embedders for mteb 2."""
    return MtebEncoder(embedder, name=name, revision=revision)


# ---------------------------------------------------------------- CLI


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="adapter folder (adapter_config.json + adapter_model.bin/.safetensors) or Hub repo id")
    p.add_argument("--base", required=True, help="T5-family base (e.g. google/mt5-xxl or a local folder)")
    p.add_argument("--output", required=True, help="folder to write (as OUTPUT.tmp, renamed when complete)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=MST5_CARD["normalize"],
                   help="L2-normalise embeddings (m-ST5 card: no)")  # fmt: skip
    p.add_argument("--pooling", choices=["mean", "cls"], default=MST5_CARD["pooling"])
    p.add_argument("--fast-tokenizer", action="store_true", help="use the fast tokenizer (m-ST5 card: slow)")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--drop-decoder", action="store_true", help="import the encoder part of a seq2seq adapter")
    p.add_argument("--no-verify", action="store_true", help="skip loading the base to check the written adapter")
    p.add_argument("--verify-dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--base-license", default=None, help="licence of the base model, for the model card")
    p.add_argument("--data", default=None, help="training data, for the model card (default: the source card's)")
    p.add_argument("--data-license", default=None, help="licence of the training data (default: the source card's)")
    p.add_argument("--adapter-license", default=None, help="licence of the adapter (default: the source card's)")


def run_import(args: argparse.Namespace) -> int:
    try:
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
    except (ModelError, OSError) as e:
        print(f"mst5 import-adapter: {e}", file=sys.stderr)
        return 2
    print(f"adapter imported to {out} (load with SentenceEncoder.from_pretrained, mst5 eval / export)")
    return 0


def register(sub: Any) -> None:
    """Add ``import-adapter`` to the ``mst5`` subcommands."""
    p = sub.add_parser("import-adapter", help="import a (PEFT 0.4-era) LoRA adapter such as pkshatech/m-ST5")
    add_import_arguments(p)
    p.set_defaults(func=run_import)
