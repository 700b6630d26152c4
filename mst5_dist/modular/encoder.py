"""Language-routed encoders over one shared base: every language module (and CLA adapter) is a named
peft adapter; ``encode(texts, lang)`` activates the right ones.

LoRA updates add up, so a stack is a sum: the CLA run trains ``(W + dW_L) x + dW_cla x`` and the
``ModularEncoder`` computes ``W x + dW_L x + dW_cla x`` with both adapters active (one copy of the
weights for every language). Monolingual use activates ``dW_L`` alone, so stage 2 cannot change a
language's monolingual embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mst5_dist.errors import ModelError
from mst5_dist.files import fingerprint
from mst5_dist.layout import META_FILE
from mst5_dist.model import SentenceEncoder, load_backbone, resolve_stack, same_model
from mst5_dist.model.loading import load_adapter, load_pretrained_tokenizer
from mst5_dist.model.meta import EncoderMeta
from mst5_dist.modular.manifest import MANIFEST, read_manifest
from mst5_dist.outputs import inside


def group_by_language(
    texts: list[str], lang: str | list[str], known: list[str], owner: str
) -> list[tuple[str, list[int], list[str]]]:
    """(code, row indices, texts) per language in first-seen order; every code is checked first,
    so an unknown one fails before any row is embedded."""
    texts = list(texts)
    langs = [lang] * len(texts) if isinstance(lang, str) else list(lang)
    if len(langs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(langs)} language codes")
    for code in dict.fromkeys(langs):
        if code not in known:
            raise ModelError(f"unknown language '{code}' ({owner} has: {', '.join(known)})")
    groups = []
    for code in dict.fromkeys(langs):
        idx = [i for i, c in enumerate(langs) if c == code]
        groups.append((code, idx, [texts[i] for i in idx]))
    return groups


class ModularEncoder:
    """One shared base with every language's LoRA (and CLA LoRA) loaded as named peft adapters.

    ``encode(texts, lang)`` activates ``lang``'s module (plus its CLA adapter when
    ``cross_lingual``) for the rows of that language; a list of codes routes row by row, grouping
    by language internally and returning rows in input order.
    """

    def __init__(self, encoder: SentenceEncoder, modules: dict[str, list[str]], manifest: dict, path: Path) -> None:
        self.encoder, self.modules, self.manifest, self.path = encoder, modules, manifest, path
        self.pivot = manifest["pivot_language"]

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str = "fp32", device: str | None = None) -> ModularEncoder:
        path = Path(path)
        manifest = read_manifest(path)
        pivot, langs = manifest["pivot_language"], manifest["languages"]
        if pivot not in langs:
            raise ModelError(f"{path / MANIFEST}: the pivot language '{pivot}' has no module")
        metas: dict[tuple[str, str], tuple[Path, EncoderMeta]] = {}
        for lang, entry in langs.items():
            for stage, rel in entry.items():
                inside(path, rel, f"{path / MANIFEST}: languages.{lang}.{stage}")
                if not EncoderMeta.exists(path / rel):
                    raise ModelError(f"{path / MANIFEST}: {lang} {stage} module {path / rel / META_FILE} is missing")
                metas[(lang, stage)] = (path / rel, EncoderMeta.read(path / rel))
        first_dir, first = metas[(pivot, "language")]
        base = first.base_model
        for (lang, stage), (folder, meta) in metas.items():
            if not same_model(str(meta.base_model), str(base)):
                raise ModelError(f"{folder}: base {meta.base_model!r} differs from the pivot module's {base!r}")
            for key in ("pooling", "normalize", "max_seq_length"):
                if getattr(meta, key) != getattr(first, key):
                    raise ModelError(
                        f"{folder}: {key}={getattr(meta, key)!r} differs from the pivot module's {getattr(first, key)!r}"
                    )
            if stage == "cla":
                # The CLA adapter was trained on top of exactly this language module.
                under = resolve_stack(meta, folder)
                if under != [str(metas[(lang, "language")][0].resolve())]:
                    raise ModelError(f"{folder}: trained on {under}, not on {lang}'s language module")
        backbone = load_backbone(base, dtype=dtype)
        modules: dict[str, list[str]] = {}
        for (lang, stage), (folder, _) in metas.items():
            name = f"{stage}_{lang}"
            backbone = load_adapter(backbone, folder, adapter_name=name)
            modules.setdefault(lang, []).append(name)
        use_fast = first.tokenizer_use_fast is not False
        tokenizer = load_pretrained_tokenizer(first_dir, use_fast)
        encoder = SentenceEncoder(
            backbone,
            tokenizer,
            pooling=first.pooling,
            normalize=first.normalize,
            max_seq_length=first.max_seq_length,
            base_model=base,
            tokenizer_use_fast=use_fast,
        ).eval()
        if device:
            encoder.to(device)
        return cls(encoder, modules, manifest, path)

    @property
    def languages(self) -> list[str]:
        return sorted(self.modules)

    def check_language(self, lang: str) -> None:
        if lang not in self.modules:
            raise ModelError(f"unknown language '{lang}' (this modular model has: {', '.join(self.languages)})")

    def activate(self, lang: str, cross_lingual: bool) -> list[str]:
        self.check_language(lang)
        names = [n for n in self.modules[lang] if cross_lingual or n.startswith("language_")]
        self.encoder.backbone.base_model.set_adapter(names)
        return names

    @torch.no_grad()
    def encode(
        self, texts: list[str], lang: str | list[str], *, cross_lingual: bool = True, batch_size: int = 64
    ) -> torch.Tensor:
        out = torch.zeros(len(texts), self.encoder.embedding_dim)
        for code, idx, group in group_by_language(texts, lang, self.languages, "this modular model"):
            self.activate(code, cross_lingual)
            out[idx] = self.encoder.encode(group, batch_size=batch_size).float()
        return out


class ModularEmbedder:
    """A ``ModularEncoder`` behind the evaluation ``Embedder`` protocol: tasks pass each side's
    language and whether the comparison is cross-lingual. ``routing``: ``auto`` follows the task
    (language module alone for monolingual data, plus CLA for cross-lingual), ``mono``/``cross`` force one."""

    routes_by_language = True

    def __init__(self, path: str | Path, *, routing: str = "auto", device: str | None = None) -> None:
        if routing not in ("auto", "mono", "cross"):
            raise ValueError(f"routing {routing!r}: use auto, mono or cross")
        self.model = ModularEncoder.from_pretrained(path, device=device)
        self.routing = routing
        # The modules' own folders and the base, not the whole run folder (checkpoints, logs and
        # results.json files there must not change the cache key).
        modules = [
            Path(path) / rel
            for _, entry in sorted(self.model.manifest["languages"].items())
            for _, rel in sorted(entry.items())
        ]
        self.fingerprint = fingerprint(self.model.encoder.base_model, *modules)

    def encode(
        self, texts: list[str], batch_size: int = 64, *, lang: str | None = None, cross_lingual: bool = False
    ) -> np.ndarray:
        if lang is None:
            raise ModelError(f"a modular model needs the texts' language (has: {', '.join(self.model.languages)})")
        cross = cross_lingual if self.routing == "auto" else self.routing == "cross"
        return self.model.encode(texts, lang, cross_lingual=cross, batch_size=batch_size).numpy()
