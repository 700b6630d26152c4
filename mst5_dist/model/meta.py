"""``EncoderMeta``: the one reader and writer of ``sentence_encoder.json``, the file that makes a
folder one of our models (pooling, normalisation, base model, adapter stack).

Torch-free and in the bottom layer: the model card and the export checks read it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mst5_dist.errors import ModelError
from mst5_dist.files import atomic_write_json
from mst5_dist.layout import META_FILE

FORMAT_VERSION = 1
# Always written (null when unknown), in this order; the merge fields only when set.
_CORE = (
    "format_version",
    "base_model",
    "model_type",
    "adapter",
    "pooling",
    "normalize",
    "max_seq_length",
    "tokenizer_use_fast",
    "embedding_dim",
)
_TYPES: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "base_model": (str,),
    "model_type": (str,),
    "adapter": (bool,),
    "pooling": (str,),
    "normalize": (bool,),
    "max_seq_length": (int,),
    "tokenizer_use_fast": (bool,),
    "embedding_dim": (int,),
    "merged_adapters": (list,),
    "merged_into_weights": (list,),
    "merged_from": (str,),
}


@dataclass
class EncoderMeta:
    """What ``sentence_encoder.json`` records. Absent settings read as None, so a caller can tell
    "not recorded" (a sentence-transformers config or a default applies) from a recorded value."""

    format_version: int = FORMAT_VERSION
    """Format of the file; a newer one than this code knows is refused."""
    base_model: str | None = None
    """The base weights: hub name or absolute path (an adapter folder is loaded on top of it)."""
    model_type: str | None = None
    """transformers ``model_type`` of the backbone (``mt5``, ``bert``, ...)."""
    adapter: bool = False
    """True: the folder holds a PEFT LoRA adapter; False: full weights."""
    pooling: str | None = None
    """``mean`` or ``cls``."""
    normalize: bool | None = None
    """L2-normalise the embeddings."""
    max_seq_length: int | None = None
    """Inputs are truncated to this many tokens."""
    tokenizer_use_fast: bool | None = None
    """Load the fast (Rust) tokenizer; False for checkpoints published with the slow one."""
    embedding_dim: int | None = None
    """Size of one embedding."""
    merged_adapters: list[Any] = field(default_factory=list)
    """Adapter folders merged into the base before this adapter is loaded (stack entries:
    ``{"path", "absolute", "sha256"}``; format 1 also wrote bare relative paths)."""
    merged_into_weights: list[Any] = field(default_factory=list)
    """Full weights only: adapters already merged into them (provenance, never merged again)."""
    merged_from: str | None = None
    """A merged export: the folder it was merged from."""

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / META_FILE).is_file()

    @classmethod
    def read(cls, folder: str | Path) -> EncoderMeta:
        """The folder's metadata; ``ModelError`` naming the file (and key) when it is missing,
        unreadable, of a newer format, or holds a key or a value type this code does not know."""
        path = Path(folder) / META_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def read_or_none(cls, folder: str | Path) -> EncoderMeta | None:
        """None when the folder has no metadata file (not one of our models)."""
        return cls.read(folder) if cls.exists(folder) else None

    @classmethod
    def from_dict(cls, data: Any, *, source: str | Path = META_FILE) -> EncoderMeta:
        if not isinstance(data, dict):
            raise ModelError(f"{source}: not a JSON object")
        for key, value in data.items():
            if key not in _TYPES:
                raise ModelError(f"{source}: unknown key '{key}' (known: {', '.join(_TYPES)})")
            if value is not None and (not isinstance(value, _TYPES[key]) or _bool_as_int(key, value)):
                raise ModelError(f"{source}: '{key}' is {value!r}, expected {_TYPES[key][0].__name__}")
        version = data.get("format_version") or 1  # files written before the field existed are format 1
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{source}: 'format_version' {version} is newer than this code reads ({FORMAT_VERSION}); "
                "upgrade mst5-dist"
            )
        given = {k: v for k, v in data.items() if v is not None or k not in ("merged_adapters", "merged_into_weights")}
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _CORE}
        out.update(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _CORE and getattr(self, f.name)}
        )
        return out

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/sentence_encoder.json`` atomically (readers never see half a file)."""
        path = Path(folder) / META_FILE
        atomic_write_json(path, self.to_dict())
        return path


def _bool_as_int(key: str, value: Any) -> bool:
    """``True`` is an int to Python: refuse it where a number is meant."""
    return isinstance(value, bool) and bool not in _TYPES[key]
