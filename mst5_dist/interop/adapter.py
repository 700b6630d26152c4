"""Bring other people's adapters in safely, describe ours, and hand ours to other tools:
``import_adapter`` (this module); the model card is ``mst5_dist.modelcard``, the mteb adapter
``mst5_dist.interop.mteb``.

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

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from mst5_dist.errors import ModelError
from mst5_dist.families import T5_FAMILY
from mst5_dist.files import atomic_dir, file_sha256, write_json
from mst5_dist.model.backbone import encoder_class
from mst5_dist.model.loading import load_config, load_pretrained_tokenizer
from mst5_dist.model.meta import EncoderMeta
from mst5_dist.modelcard import ADAPTER_CONFIG, IMPORT_REPORT, write_model_card
from mst5_dist.outputs import check_output

SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
REPORT = IMPORT_REPORT
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

    config = load_config(base)
    if config.model_type not in T5_FAMILY:
        raise InteropError(f"{base}: model type {config.model_type}; the m-ST5 adapter needs a T5-family base")
    cls = encoder_class(config.model_type)
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


def _peft_config(cfg: dict[str, Any], base: str):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
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


def _write_adapter(tmp: Path, mapped: dict[str, torch.Tensor], lora_cfg: Any, base: str, meta: EncoderMeta) -> None:
    """Adapter tensors (read back and compared), adapter config, tokenizer, sentence_encoder.json."""
    from safetensors.torch import load_file, save_file

    tmp.mkdir(parents=True)
    file_tensors = {PEFT_PREFIX + m: t.detach().contiguous() for m, t in sorted(mapped.items())}
    save_file(file_tensors, str(tmp / SAFE_WEIGHTS), metadata={"format": "pt"})
    lora_cfg.save_pretrained(str(tmp))
    load_pretrained_tokenizer(base, meta.tokenizer_use_fast).save_pretrained(str(tmp))
    meta.write(tmp)
    written = load_file(str(tmp / SAFE_WEIGHTS))
    if set(written) != set(file_tensors) or any(not torch.equal(written[k], v) for k, v in file_tensors.items()):
        raise InteropError(f"{tmp / SAFE_WEIGHTS}: read-back differs from the source tensors")


def _import_report(src, src_dir: Path, weights_file: Path, cfg: dict, base_ref: str, match: dict) -> dict[str, Any]:
    """What ``import_report.json`` records of the source (verification is added once done)."""
    return {
        "source": str(src),
        "source_dir": str(src_dir),
        "source_weights": weights_file.name,
        "source_sha256": file_sha256(weights_file),
        "source_config": cfg,
        "base_model": base_ref,
        **match,
        "verified_in_model": False,
    }


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
    out = check_output(output, "--output", [("source", src), ("--base", base)])
    if out.exists() and not overwrite:
        raise InteropError(f"{out} exists (pass --overwrite to replace it)")
    src_dir = resolve_source(src)
    cfg = read_adapter_config(src_dir)
    tensors, weights_file = load_adapter_tensors(src_dir)
    declared = source_card_facts(src_dir)
    lora_cfg = _peft_config(cfg, base)
    expected, config = expected_lora_shapes(base, lora_cfg)
    mapped, match = match_keys(tensors, expected, drop_decoder=drop_decoder)

    base_ref = str(Path(base).resolve()) if Path(base).is_dir() else base
    lora_cfg.base_model_name_or_path = base_ref
    settings = {"pooling": pooling, "normalize": normalize, "max_seq_length": max_seq_length}
    meta = EncoderMeta(base_model=base_ref, model_type=config.model_type, adapter=True, **settings)
    meta.tokenizer_use_fast, meta.embedding_dim = tokenizer_use_fast, config.d_model
    with atomic_dir(out) as tmp:
        _write_adapter(tmp, mapped, lora_cfg, base, meta)
        report = _import_report(src, src_dir, weights_file, cfg, base_ref, match)
        if verify:
            verify_import(tmp, mapped, dtype=verify_dtype)
            report["verified_in_model"] = True
        write_json(tmp / REPORT, report)
        write_model_card(
            tmp,
            name=out.name,
            base_license=base_license,
            data=data or declared.get("datasets"),
            data_license=data_license or declared.get("license"),
            adapter_license=adapter_license or declared.get("license"),
            source=str(src),
        )
    return out


def verify_import(path: Path, mapped: dict[str, torch.Tensor], *, dtype: str = "fp32") -> None:
    """Load ``path`` as users will and check each LoRA tensor inside the live peft model."""
    from mst5_dist.model.encoder import SentenceEncoder

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
