"""The one loader of what a model folder holds: configs, tokenizers, full weights and LoRA adapters.

Every model, tokenizer, config and adapter mst5 reads (training bases, ``merge_adapters``, the
pivot model, runs, exports, imports, the sweep's parameter counts) goes through here, because a
folder we read is untrusted (a download, someone else's run):

* no code from the folder ever runs: transformers gets ``trust_remote_code=False`` on every call
  (so it never asks "Do you wish to run the custom code? [y/N]", whatever stdin holds), and a folder
  whose configs ask for custom code (``auto_map``, naming ``*.py`` modules in the folder or on the
  Hub) is refused before transformers reads it;
* nothing is unpickled: weights and adapters are read from safetensors only;
* a folder loaded as full weights may not hold adapter files: transformers would apply them on top
  of the weights (a merged export with its adapter copied beside it would get the update twice).

Torch-free at import (transformers and peft are imported inside the functions): the ONNX runtime
loads its tokenizer here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mst5_dist.errors import ModelError

# Configs through which transformers resolves classes (AutoConfig, AutoTokenizer, processors).
CODE_CONFIGS = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
    "video_preprocessor_config.json",
)
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFE = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_SAFE, ADAPTER_PICKLE)
# Every call into transformers: remote code off, never a prompt.
NO_CODE = {"trust_remote_code": False}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _files(name_or_path: str | Path, names: tuple[str, ...]) -> list[Path]:
    """The files among ``names`` that a local folder holds, or a Hub name's cached/downloaded copies
    (missing ones skipped; a name that cannot be resolved gives none, and the load itself reports it)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return [folder / n for n in names if (folder / n).is_file()]
    if folder.exists() or str(name_or_path).startswith((".", "/")):
        return []
    from transformers.utils import cached_file

    out = []
    for name in names:
        try:
            found = cached_file(
                str(name_or_path),
                name,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except Exception:  # not a valid repo id, gated, offline: the load reports it
            found = None
        if found:
            out.append(Path(found))
    return out


def _auto_maps(obj: Any) -> list[Any]:
    """Every ``auto_map`` value in a parsed config, nested configs included."""
    if isinstance(obj, dict):
        own = [obj["auto_map"]] if obj.get("auto_map") else []
        return own + [m for v in obj.values() for m in _auto_maps(v)]
    if isinstance(obj, list):
        return [m for v in obj for m in _auto_maps(v)]
    return []


def _modules(auto_map: Any) -> list[str]:
    """The Python modules an ``auto_map`` names (``configuration_x.ConfigX`` -> ``configuration_x.py``)."""
    refs = auto_map.values() if isinstance(auto_map, dict) else auto_map if isinstance(auto_map, list) else [auto_map]
    out = []
    for ref in refs:
        if isinstance(ref, list | tuple):
            out += _modules(list(ref))
        elif isinstance(ref, str) and "." in ref:
            out.append(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(set(out))


def refuse_custom_code(name_or_path: str | Path) -> None:
    """``ModelError`` naming the file when a config of the folder asks for custom code."""
    for path in _files(name_or_path, CODE_CONFIGS):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: cannot read it ({first_line(e)})") from None
        maps = _auto_maps(data)
        if maps:
            modules = sorted({m for a in maps for m in _modules(a)}) or ["?"]
            raise ModelError(
                f"{path}: asks to run custom code ('auto_map' names {', '.join(modules)}); mst5 never runs "
                "code from a model folder: use a model whose type transformers ships"
            )


def load_config(name_or_path: str | Path) -> Any:
    """The transformers config of a model folder or Hub name (no custom code)."""
    from transformers import AutoConfig

    refuse_custom_code(name_or_path)
    try:
        return AutoConfig.from_pretrained(str(name_or_path), **NO_CODE)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{name_or_path}: not a model folder nor a reachable model name ({first_line(e)})") from None


def load_pretrained_tokenizer(folder: str | Path, use_fast: bool | None = True) -> Any:
    """The folder's tokenizer as transformers builds it (no custom code); not yet checked."""
    from transformers import AutoTokenizer

    refuse_custom_code(folder)
    kwargs = {} if use_fast is None else {"use_fast": use_fast}
    try:
        return AutoTokenizer.from_pretrained(str(folder), **kwargs, **NO_CODE)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(f"{folder}: cannot load its tokenizer ({first_line(e)})") from None


def check_full_weights_folder(name_or_path: str | Path) -> None:
    """A folder loaded as full weights: safetensors weights, and no adapter files beside them."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return
    adapter = [str(folder / n) for n in ADAPTER_FILES if (folder / n).is_file()]
    if adapter:
        raise ModelError(
            f"{', '.join(adapter)}: adapter files in a folder loaded as full weights (transformers would apply "
            "them on top of the weights, a merged export would get its adapter twice); remove them, or load "
            "the adapter's own folder"
        )
    if not any((folder / n).is_file() for n in SAFE_WEIGHTS):
        pickles = [str(folder / n) for n in PICKLE_WEIGHTS if (folder / n).is_file()]
        if pickles:
            raise ModelError(
                f"{pickles[0]}: pickle weights are never loaded (unpickling can run code); "
                "save the model as model.safetensors"
            )


def load_pretrained_weights(cls: Any, name_or_path: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on full weights: safetensors only, no custom code, no adapter."""
    refuse_custom_code(name_or_path)
    check_full_weights_folder(name_or_path)
    return cls.from_pretrained(str(name_or_path), use_safetensors=True, **kwargs, **NO_CODE)


def check_adapter_folder(folder: str | Path) -> None:
    """A LoRA adapter folder: ``adapter_model.safetensors`` (a pickle is refused), no custom code."""
    folder = Path(folder)
    refuse_custom_code(folder)
    if not (folder / ADAPTER_SAFE).is_file():
        if (folder / ADAPTER_PICKLE).is_file():
            raise ModelError(
                f"{folder / ADAPTER_PICKLE}: a pickle adapter is never loaded (unpickling can run code); "
                "convert it with `mst5 import-adapter`, which writes adapter_model.safetensors"
            )
        raise ModelError(f"{folder}: no {ADAPTER_SAFE} (not a LoRA adapter folder)")


def load_adapter(backbone: Any, folder: str | Path, **kwargs: Any) -> Any:
    """``backbone`` with the LoRA adapter of ``folder`` loaded (a second one joins a PeftModel)."""
    from peft import PeftModel

    check_adapter_folder(folder)
    if isinstance(backbone, PeftModel):
        backbone.load_adapter(str(folder), **kwargs)
        return backbone
    return PeftModel.from_pretrained(backbone, str(folder), **kwargs)


def position_limit(config: Any) -> int | None:
    """How many tokens the model's position table allows (None: relative positions, no limit)."""
    from mst5_dist.families import PACKED_POSITIONS

    max_pos = getattr(config, "max_position_embeddings", None)
    if PACKED_POSITIONS.get(config.model_type) == "relative" or not max_pos:
        return None
    if PACKED_POSITIONS.get(config.model_type) == "after_padding":  # RoBERTa counts from padding_idx + 1
        return int(max_pos) - (getattr(config, "pad_token_id", None) or 0) - 1
    return int(max_pos)


def check_positions(config: Any, max_seq_length: int, name_or_path: str | Path) -> None:
    """``ModelError`` when ``max_seq_length`` is above the model's positions (from its config alone)."""
    limit = position_limit(config)
    if limit is not None and max_seq_length > limit:
        raise ModelError(
            f"model.max_seq_length {max_seq_length} is above the {limit} positions of {name_or_path}/config.json "
            f"(max_position_embeddings {config.max_position_embeddings}): set model.max_seq_length to {limit} or less"
        )


def check_encoder(config: Any, name_or_path: str | Path) -> None:
    """Refuse what is not an encoder: a decoder-only (causal) model gives no sentence encoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from mst5_dist.families import FAMILIES

    kind = config.model_type
    if getattr(config, "is_decoder", False) or (kind not in FAMILIES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        raise ModelError(
            f"{name_or_path}: model type '{kind}' is not an encoder (a decoder-only / causal model); mst5 trains "
            "T5-family and BERT-like encoders"
        )
