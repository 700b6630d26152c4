"""``OUT/modular.json``: which language modules and CLA adapters of a modular model are finished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mst5_dist.errors import ModelError
from mst5_dist.files import atomic_write_json, read_json
from mst5_dist.layout import FINAL_DIR, META_FILE, MODULAR_MANIFEST
from mst5_dist.modular.config import ModularRunConfig
from mst5_dist.outputs import inside

MANIFEST = MODULAR_MANIFEST
STAGES = ("language", "cla")


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ModelError(f"{path}: no {MANIFEST} (not a modular model folder written by `mst5 train-modular`)")
    manifest = read_json(file)
    for lang, entry in manifest.get("languages", {}).items():
        if "language" not in entry:
            raise ModelError(f"{file}: language '{lang}' has no 'language' module")
    return manifest


def write_manifest(out: Path, cfg: ModularRunConfig) -> dict[str, Any]:
    """List the finished modules (relative paths); rewritten atomically after every stage."""
    langs: dict[str, dict[str, str]] = {}
    for lang in cfg.modular.languages:
        entry = {}
        for stage in STAGES:
            final = out / stage / lang / FINAL_DIR
            if (final / META_FILE).is_file():
                entry[stage] = str(final.relative_to(out))
        if entry:
            langs[lang] = entry
    manifest = {
        "format_version": 1,
        "base_model": cfg.model.name_or_path,
        "pivot_language": cfg.modular.pivot_language,
        "languages": langs,
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def module_dir(model: Path, manifest: dict[str, Any], lang: str, cross_lingual: bool) -> Path:
    entry = manifest["languages"][lang]
    stage = "cla" if cross_lingual and "cla" in entry else "language"
    return inside(model, entry[stage], f"{model / MANIFEST}: languages.{lang}.{stage}")
