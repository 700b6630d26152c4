"""Modular models in ONNX: one merged encoder per language (language module + CLA adapter merged
into the base, each through the export pipeline's parity gate) and a ``manifest.json`` mapping
language codes to folders; ``OnnxModularEmbedder`` routes by it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.errors import ModelError
from mst5_dist.export.onnx_graph import ExportError
from mst5_dist.export.pipeline import export_model
from mst5_dist.export.runtime import OnnxEmbedder
from mst5_dist.files import atomic_dir, read_json, write_json
from mst5_dist.modular.encoder import group_by_language
from mst5_dist.modular.manifest import module_dir, read_manifest
from mst5_dist.outputs import check_output, inside

ONNX_MANIFEST = "manifest.json"


def export_modular(model: str | Path, output: str | Path, *, monolingual: bool = False, **kwargs: Any) -> dict:
    """One merged ONNX encoder per language (language module + CLA merged into the base), each
    through the same export pipeline and parity gate; ``manifest.json`` maps codes to folders.
    ``monolingual`` also exports each language module alone under ``mono/``."""
    model, out = Path(model), check_output(output, "--output", [("--model", model)])
    manifest = read_manifest(model)
    if out.exists() and not kwargs.get("overwrite"):
        raise ExportError(f"{out} exists (pass --overwrite to replace it)")
    result: dict[str, Any] = {
        "format": "mst5-modular-onnx",
        "format_version": 1,
        "pivot_language": manifest["pivot_language"],
        "source": str(model.resolve()),
        "languages": {},
    }
    with atomic_dir(out) as tmp:
        for lang in sorted(manifest["languages"]):
            entry = {"cross": lang}
            export_model(module_dir(model, manifest, lang, True), tmp / lang, **kwargs)
            if monolingual and "cla" in manifest["languages"][lang]:
                export_model(module_dir(model, manifest, lang, False), tmp / "mono" / lang, **kwargs)
                entry["mono"] = f"mono/{lang}"
            elif monolingual:  # no CLA adapter (the pivot): one graph serves both uses
                entry["mono"] = lang
            result["languages"][lang] = entry
        write_json(tmp / ONNX_MANIFEST, result)
    return result


def is_modular_export(path: str | Path) -> bool:
    file = Path(path) / ONNX_MANIFEST
    return file.is_file() and read_json(file).get("format") == "mst5-modular-onnx"


class OnnxModularEmbedder:
    """ONNX Runtime sessions per language from a modular export's ``manifest.json``. Monolingual
    requests use ``mono/`` graphs when exported, else the language's cross-lingual graph."""

    routes_by_language = True

    def __init__(self, path: str | Path, provider: str = "cpu", variant: str | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_json(self.path / ONNX_MANIFEST)
        self.sessions: dict[str, Any] = {}
        for lang, entry in self.manifest["languages"].items():
            for kind, rel in entry.items():
                folder = inside(self.path, rel, f"{self.path / ONNX_MANIFEST}: languages.{lang}.{kind}")
                self.sessions[f"{kind}:{lang}"] = OnnxEmbedder(folder, provider=provider, variant=variant)
        prints = sorted(f"{k}={s.fingerprint}" for k, s in self.sessions.items())
        self.fingerprint = hashlib.sha256("\n".join(prints).encode()).hexdigest()

    @property
    def languages(self) -> list[str]:
        return sorted(self.manifest["languages"])

    def encode(
        self, texts: list[str], batch_size: int = 64, *, lang: str | list[str] | None = None, cross_lingual: bool = True
    ) -> np.ndarray:
        if lang is None:
            raise ModelError(
                f"{self.path}: a modular export needs the texts' language (has: {', '.join(self.languages)})"
            )
        out = np.zeros((len(texts), next(iter(self.sessions.values())).dim), dtype=np.float32)
        for code, idx, group in group_by_language(texts, lang, self.languages, "this export"):
            kind = "cross" if cross_lingual or f"mono:{code}" not in self.sessions else "mono"
            out[idx] = self.sessions[f"{kind}:{code}"].encode(group, batch_size=batch_size)
        return out
