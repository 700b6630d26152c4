"""The adapter stack: LoRA adapters merged into the base weights in order (W + B1 A1 + B2 A2 ...),
how a saved model records them (``stack_entry``) and finds them again (``resolve_stack``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from mst5_dist.errors import ModelError
from mst5_dist.files import file_sha256
from mst5_dist.model.loading import check_adapter_folder, load_adapter
from mst5_dist.model.meta import EncoderMeta

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def same_model(a: str, b: str) -> bool:
    """Two references to one model: equal hub names, or local paths to the same folder."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def stack_entry(adapter_dir: str, folder: Path | None) -> dict[str, Any]:
    """How a saved model names an adapter merged under it: relative to the saved folder (a run
    folder moved as a whole still works), absolute (the folder alone copied elsewhere still works),
    and the sha256 of the adapter weights (whichever path is found must hold the same adapter)."""
    adapter = Path(adapter_dir).resolve()
    entry: dict[str, Any] = {"absolute": str(adapter)}
    if folder is not None:
        entry["path"] = os.path.relpath(adapter, Path(folder).resolve())
    weights = adapter / ADAPTER_WEIGHTS
    if weights.is_file():
        entry["sha256"] = file_sha256(weights)
    return entry


def _find(entry: dict[str, Any], folder: Path, tried: list[str]) -> str | None:
    for candidate in (Path(folder) / entry["path"] if "path" in entry else None, entry.get("absolute")):
        if candidate is None:
            continue
        candidate = Path(candidate).resolve()
        tried.append(str(candidate))
        weights = candidate / ADAPTER_WEIGHTS
        if weights.is_file() and entry.get("sha256") in (None, file_sha256(weights)):
            return str(candidate)
    return None


def resolve_stack(meta: EncoderMeta, folder: Path) -> list[str]:
    """The adapter folders recorded under ``meta.merged_adapters``, found from wherever the model
    is loaded (relative to ``folder`` first, then the absolute path) and checked by sha256."""
    out = []
    for entry in meta.merged_adapters:
        if isinstance(entry, str):  # format 1: relative to the folder only
            entry = {"path": entry}
        tried: list[str] = []
        found = _find(entry, folder, tried)
        if found is None:
            raise ModelError(
                f"{folder}: the adapter it was trained on top of is not found with the same weights "
                f"(looked in {', '.join(tried)}); it is needed to rebuild the model"
            )
        out.append(found)
    return out


def weights_provenance(meta: EncoderMeta) -> list[str]:
    """The adapters full weights already hold (absolute paths), as recorded."""
    return [e["absolute"] if isinstance(e, dict) else e for e in meta.merged_into_weights]


def check_stack_folder(folder: str, base: str) -> None:
    """An adapter to merge: one of our LoRA folders (safetensors, no custom code) of ``base``."""
    other = EncoderMeta.read_or_none(folder)
    if other is None or not other.adapter:
        raise ModelError(f"{folder}: not a LoRA adapter folder written by mst5 (merge_adapters takes those)")
    if other.merged_adapters:
        raise ModelError(f"{folder}: is itself trained on merged adapters; stacks deeper than one are not supported")
    if not same_model(str(other.base_model), str(base)):
        raise ModelError(f"{folder}: adapter of base {other.base_model!r}, but this model's base is {base!r}")
    check_adapter_folder(folder)


def merge_adapter_stack(backbone: nn.Module, adapters: list[str], base: str) -> nn.Module:
    """Merge each LoRA adapter folder into the weights, in order (W + B1 A1 + B2 A2 + ...)."""
    for folder in adapters:
        check_stack_folder(folder, base)
        backbone = load_adapter(backbone, folder).merge_and_unload()
    return backbone
