"""Which versions made a model: the packages a trained or exported model depends on, read from the
installed distributions' metadata (``importlib.metadata``), so nothing heavy is imported.

``versions.json`` is written into every checkpoint, ``final/``, ``best/`` and export folder; the same
set is what ``constraints.txt`` (the project's lock of tested versions) pins.
"""

from __future__ import annotations

import platform
from importlib import metadata

VERSIONS_FILE = "versions.json"
# Distribution names (as pip spells them) recorded, in this order; "python" is the interpreter.
PACKAGES = (
    "mst5-dist",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "datasets",
    "tokenizers",
    "sentencepiece",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
)


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """``{"python": ..., "mst5-dist": ..., "torch": ..., ...}``; a package that is not installed maps
    to None (``onnxruntime-gpu`` on a CPU machine), so the file always has the same keys."""
    return {"python": platform.python_version(), **{name: installed_version(name) for name in PACKAGES}}
