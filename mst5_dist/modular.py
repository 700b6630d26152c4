"""Modular sentence encoders (Huang, Wang, Glavaš, Gurevych 2024), as LoRA modules on one base.

    stage 1  language modules:  for each language L, a LoRA trained with the contrastive loss on L's
             own paraphrase pairs only (STS-B train pairs scoring >= ``min_score``), from the base.
    stage 2  CLA adapters:      for each L != pivot, a second LoRA on top of L's module (which is
             merged into the frozen weights), trained on (L sentence, pivot translation) pairs so that
             L lands in the pivot's space. The pivot side is embedded once by the frozen pivot module;
             which side of a pair is the anchor is drawn per pair (a fixed coin per row), as in the
             reference code; in-batch negatives are all-gathered across ranks as in the main recipe.

Both stages are ordinary runs of ``mst5_dist.train`` (same Accelerate/DeepSpeed loop, checkpoints,
resume and logs); ``train-modular`` only writes each stage's data and config and runs them in turn.
Stage ``cla`` differs in one place: the collator hands the loss precomputed pivot vectors.

LoRA updates add up, so a stack is a sum: the CLA run trains ``(W + dW_L) x + dW_cla x`` and the
``ModularEncoder`` computes ``W x + dW_L x + dW_cla x`` with both adapters active on one shared
base (one copy of the weights for every language). Monolingual use activates ``dW_L`` alone, so
stage 2 cannot change a language's monolingual embeddings. Output layout::

    OUT/modular.json              language -> {"language": module dir, "cla": adapter dir}
    OUT/data/{language,parallel}-L.jsonl
    OUT/language/L/   OUT/cla/L/  (each a training output: config.yaml, train_log.jsonl, final/)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mst5_dist import distributed
from mst5_dist.config import Config, ConfigError, load_config, with_overrides
from mst5_dist.model import META_FILE, ModelError, SentenceEncoder, load_backbone, same_model

MANIFEST = "modular.json"
ONNX_MANIFEST = "manifest.json"
STAGES = ("language", "cla")


# ------------------------------------------------------------------------------------ data


def read_stsb_train(stsb_dir: str | Path, lang: str) -> tuple[Path, list[tuple[str, str, float]]]:
    from mst5_dist.evaluate.sts import read_stsb_csv, stsb_path

    path = stsb_path(stsb_dir, lang, "train")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no STS-B train file for '{lang}' (modular.stsb_dir={stsb_dir})")
    pairs = read_stsb_csv(path, lang)
    return path, list(zip(pairs.first, pairs.second, pairs.scores))


def language_rows(stsb_dir: str | Path, lang: str, min_score: float) -> list[dict[str, str]]:
    """Stage 1: the language's own paraphrase pairs (gold score >= ``min_score``)."""
    path, rows = read_stsb_train(stsb_dir, lang)
    out = [
        {"anchor": a, "positive": b, "source_id": f"{path.name}:{i + 1}"}
        for i, (a, b, score) in enumerate(rows)
        if score >= min_score
    ]
    if not out:
        raise ConfigError(f"{path}: no pair scores >= modular.min_score={min_score}")
    return out


def parallel_rows(stsb_dir: str | Path, lang: str, pivot: str, max_rows: int | None) -> list[dict[str, str]]:
    """Stage 2: (L sentence, pivot translation) from the line-aligned STS-B translations, one row per
    distinct pivot sentence (a repeated sentence in one batch would be its own false negative)."""
    p_lang, rows = read_stsb_train(stsb_dir, lang)
    p_pivot, pivot_rows = read_stsb_train(stsb_dir, pivot)
    if len(rows) != len(pivot_rows):
        raise ConfigError(f"{p_lang} has {len(rows)} pairs but {p_pivot} has {len(pivot_rows)}: not line-aligned")
    seen: dict[str, dict[str, str]] = {}
    for i, ((a, b, s), (pa, pb, ps)) in enumerate(zip(rows, pivot_rows)):
        if abs(s - ps) > 1e-6:
            raise ConfigError(f"{p_lang}:{i + 1}: score {s} differs from {p_pivot}:{i + 1} ({ps}): not line-aligned")
        for text, pivot_text in ((a, pa), (b, pb)):
            seen.setdefault(pivot_text, {"anchor": text, "positive": pivot_text, "source_id": pivot_text})
    out = list(seen.values())
    return out[:max_rows] if max_rows is not None else out


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    """Atomic, and untouched when the content is already there (every rank may call it: identical
    bytes, and an unchanged mtime keeps the Arrow cache key stable)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ stage cla (trainer side)


@dataclass
class PivotTable:
    """Frozen pivot-language embeddings of every distinct ``positive`` text of the dataset."""

    row: dict[str, int]
    vectors: torch.Tensor


def check_cla_config(cfg: Config) -> None:
    m = cfg.modular
    if not m.pivot_model:
        raise ConfigError("modular.stage=cla needs modular.pivot_model (the pivot language's final/ folder)")
    if cfg.loss.hard_negatives:
        raise ConfigError("modular.stage=cla trains on pairs: set loss.hard_negatives=false")
    if not cfg.model.merge_adapters:
        raise ConfigError("modular.stage=cla needs model.merge_adapters=[the language module it sits on]")


@torch.no_grad()
def build_pivot_table(cfg: Config, dataset, device, log) -> PivotTable:
    """Embed the pivot side once with the frozen pivot module (eval mode: no dropout). Every rank
    computes the same table, so no communication is needed; the module is freed before training.
    The caller has run ``check_cla_config``."""
    texts = list(dict.fromkeys(dataset["positive"]))
    pivot = SentenceEncoder.from_pretrained(cfg.modular.pivot_model, dtype=cfg.model.dtype).to(device)
    if not same_model(str(pivot.base_model), cfg.model.name_or_path):
        raise ConfigError(
            f"modular.pivot_model {cfg.modular.pivot_model} was trained on {pivot.base_model}, "
            f"not on model.name_or_path={cfg.model.name_or_path}"
        )
    vectors = pivot.encode(texts, batch_size=cfg.eval.batch_size).float().cpu()
    del pivot
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log(f"pivot table: {len(texts)} {cfg.modular.pivot_language} sentences embedded by {cfg.modular.pivot_model}")
    return PivotTable({t: i for i, t in enumerate(texts)}, vectors)


def anchor_is_pivot(seed: int, source_id: str) -> bool:
    """The per-pair coin: fixed by (seed, row), so a resumed run and every rank draw the same."""
    return bool(hashlib.sha256(f"{seed}:{source_id}".encode()).digest()[0] & 1)


class PivotCollator:
    """Tokenise this language's sentences; attach the frozen pivot vectors and the per-pair coin."""

    def __init__(self, tokenizer, max_seq_length: int, table: PivotTable, seed: int) -> None:
        self.tokenizer, self.max_len, self.table, self.seed = tokenizer, max_seq_length, table, seed

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        enc = self.tokenizer(
            [r["anchor"] for r in rows], padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
        )
        mask = enc["attention_mask"]
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": mask,
            "n": len(rows),
            "pivot": self.table.vectors[[self.table.row[r["positive"]] for r in rows]],
            "flip": torch.tensor([anchor_is_pivot(self.seed, r["source_id"]) for r in rows]),
            "real_tokens": int(mask.sum()),
            "padded_tokens": int(mask.numel()),
            "source_ids": [r["source_id"] for r in rows],
        }


def cla_pairs(emb: torch.Tensor, pivot: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, positives): per pair, the trained sentence is the anchor or the candidate."""
    flip = flip.to(torch.bool).unsqueeze(1)
    pivot = pivot.to(emb.dtype)
    return torch.where(flip, pivot, emb), torch.where(flip, emb, pivot)


# ------------------------------------------------------------------------------------ manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ModelError(f"{path}: no {MANIFEST} (not a modular model folder written by `mst5 train-modular`)")
    manifest = json.loads(file.read_text(encoding="utf-8"))
    for lang, entry in manifest.get("languages", {}).items():
        if "language" not in entry:
            raise ModelError(f"{file}: language '{lang}' has no 'language' module")
    return manifest


def write_manifest(out: Path, cfg: Config) -> dict[str, Any]:
    """List the finished modules (relative paths); rewritten atomically after every stage."""
    langs: dict[str, dict[str, str]] = {}
    for lang in cfg.modular.languages:
        entry = {}
        for stage in STAGES:
            final = out / stage / lang / "final"
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
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


# ------------------------------------------------------------------------------------ routing


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
        from peft import PeftModel
        from transformers import AutoTokenizer

        path = Path(path)
        manifest = read_manifest(path)
        pivot, langs = manifest["pivot_language"], manifest["languages"]
        if pivot not in langs:
            raise ModelError(f"{path / MANIFEST}: the pivot language '{pivot}' has no module")
        metas = {}
        for lang, entry in langs.items():
            for stage, rel in entry.items():
                meta_file = path / rel / META_FILE
                if not meta_file.is_file():
                    raise ModelError(f"{path / MANIFEST}: {lang} {stage} module {meta_file} is missing")
                metas[(lang, stage)] = (path / rel, json.loads(meta_file.read_text(encoding="utf-8")))
        first_dir, first = metas[(pivot, "language")]
        base = first["base_model"]
        for (lang, stage), (folder, meta) in metas.items():
            if not same_model(str(meta["base_model"]), str(base)):
                raise ModelError(f"{folder}: base {meta['base_model']!r} differs from the pivot module's {base!r}")
            for key in ("pooling", "normalize", "max_seq_length"):
                if meta[key] != first[key]:
                    raise ModelError(f"{folder}: {key}={meta[key]!r} differs from the pivot module's {first[key]!r}")
            if stage == "cla":
                # The CLA adapter was trained on top of exactly this language module.
                under = [str((folder / p).resolve()) for p in meta.get("merged_adapters", [])]
                if under != [str(metas[(lang, "language")][0].resolve())]:
                    raise ModelError(f"{folder}: trained on {under}, not on {lang}'s language module")
        backbone = load_backbone(base, dtype=dtype)
        modules: dict[str, list[str]] = {}
        for (lang, stage), (folder, _) in metas.items():
            name = f"{stage}_{lang}"
            if not isinstance(backbone, PeftModel):
                backbone = PeftModel.from_pretrained(backbone, str(folder), adapter_name=name)
            else:
                backbone.load_adapter(str(folder), adapter_name=name)
            modules.setdefault(lang, []).append(name)
        tokenizer = AutoTokenizer.from_pretrained(str(first_dir), use_fast=first.get("tokenizer_use_fast", True))
        encoder = SentenceEncoder(
            backbone,
            tokenizer,
            pooling=first["pooling"],
            normalize=first["normalize"],
            max_seq_length=first["max_seq_length"],
            base_model=base,
            tokenizer_use_fast=first.get("tokenizer_use_fast", True),
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
        from mst5_dist.evaluate.embedder import folder_fingerprint

        if routing not in ("auto", "mono", "cross"):
            raise ValueError(f"routing {routing!r}: use auto, mono or cross")
        self.model = ModularEncoder.from_pretrained(path, device=device)
        self.routing = routing
        # The modules' own folders and the base, not the whole run folder (checkpoints, logs and
        # results.json files there must not change the cache key).
        parts = [f"base={folder_fingerprint(self.model.encoder.base_model)}"]
        for lang, entry in sorted(self.model.manifest["languages"].items()):
            parts += [f"{stage}:{lang}={folder_fingerprint(Path(path) / rel)}" for stage, rel in sorted(entry.items())]
        self.fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def encode(
        self, texts: list[str], batch_size: int = 64, *, lang: str | None = None, cross_lingual: bool = False
    ) -> np.ndarray:
        if lang is None:
            raise ModelError(f"a modular model needs the texts' language (has: {', '.join(self.model.languages)})")
        cross = cross_lingual if self.routing == "auto" else self.routing == "cross"
        return self.model.encode(texts, lang, cross_lingual=cross, batch_size=batch_size).numpy()


# ------------------------------------------------------------------------------------ export


def module_dir(model: Path, manifest: dict[str, Any], lang: str, cross_lingual: bool) -> Path:
    entry = manifest["languages"][lang]
    return model / entry["cla" if cross_lingual and "cla" in entry else "language"]


def export_modular(model: str | Path, output: str | Path, *, monolingual: bool = False, **kwargs: Any) -> dict:
    """One merged ONNX encoder per language (language module + CLA merged into the base), each
    through the same export pipeline and parity gate; ``manifest.json`` maps codes to folders.
    ``monolingual`` also exports each language module alone under ``mono/``."""
    from mst5_dist.atomic import atomic_dir
    from mst5_dist.export.onnx_graph import ExportError
    from mst5_dist.export.pipeline import export_model

    model, out = Path(model), Path(output)
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
        (tmp / ONNX_MANIFEST).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def is_modular_export(path: str | Path) -> bool:
    file = Path(path) / ONNX_MANIFEST
    return file.is_file() and json.loads(file.read_text(encoding="utf-8")).get("format") == "mst5-modular-onnx"


class OnnxModularEmbedder:
    """ONNX Runtime sessions per language from a modular export's ``manifest.json``. Monolingual
    requests use ``mono/`` graphs when exported, else the language's cross-lingual graph."""

    routes_by_language = True

    def __init__(self, path: str | Path, provider: str = "cpu", variant: str | None = None) -> None:
        from mst5_dist.export.runtime import OnnxEmbedder

        self.path = Path(path)
        self.manifest = json.loads((self.path / ONNX_MANIFEST).read_text(encoding="utf-8"))
        self.sessions: dict[str, Any] = {}
        for lang, entry in self.manifest["languages"].items():
            for kind, rel in entry.items():
                self.sessions[f"{kind}:{lang}"] = OnnxEmbedder(self.path / rel, provider=provider, variant=variant)
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


# ------------------------------------------------------------------------------------ orchestration


def stage_config(cfg: Config, out: Path, stage: str, lang: str) -> Config:
    """The config of one stage run: the user's config, this stage's data/output, then overrides."""
    m = cfg.modular
    data = stage_data_path(out, stage, lang)
    common = [
        "data.format=jsonl",
        f"data.paths=[{json.dumps(str(data))}]",
        "data.max_rows=null",
        "loss.hard_negatives=false",
        f"train.output_dir={json.dumps(str(out / stage / lang))}",
        f"modular.stage={stage}",
        f"modular.language={lang}",
    ]
    if stage == "language":
        return with_overrides(cfg, common + list(m.language_overrides))
    pivot_module = out / "language" / m.pivot_language / "final"
    extra = [
        f"model.merge_adapters=[{json.dumps(str(out / 'language' / lang / 'final'))}]",
        f"modular.pivot_model={json.dumps(str(pivot_module))}",
    ]
    return with_overrides(cfg, common + extra + list(m.cla_overrides))


def plan(cfg: Config) -> list[tuple[str, str]]:
    m = cfg.modular
    if not m.languages:
        raise ConfigError("modular.languages is empty (e.g. modular.languages=[en,de,ru,zh])")
    if m.pivot_language not in m.languages:
        raise ConfigError(f"modular.pivot_language '{m.pivot_language}' must be one of modular.languages {m.languages}")
    stage1 = [("language", lang) for lang in m.languages]
    return stage1 + [("cla", lang) for lang in m.languages if lang != m.pivot_language]


def stage_data_path(out: Path, stage: str, lang: str) -> Path:
    return out / "data" / f"{'language' if stage == 'language' else 'parallel'}-{lang}.jsonl"


def prepare_data(cfg: Config, out: Path, stage: str, lang: str) -> tuple[Path, int]:
    """Write the stage's rows where ``stage_config`` points the trainer; (path, row count)."""
    m = cfg.modular
    if stage == "language":
        rows = language_rows(m.stsb_dir, lang, m.min_score)
    else:
        rows = parallel_rows(m.stsb_dir, lang, m.pivot_language, m.parallel_max_rows)
    return write_jsonl(stage_data_path(out, stage, lang), rows), len(rows)


def _log_main(msg: str) -> None:
    if distributed.is_main_env_rank():
        print(msg, flush=True)


def train_modular(cfg: Config, *, stages: list[str] | None = None, resume: bool = False, log=_log_main) -> Path:
    """Stage 1 for every language, then stage 2 for every non-pivot one; a stage whose ``final/``
    exists is skipped, so rerunning continues where a run stopped (``resume`` also picks up the
    stopped stage's latest checkpoint). Returns the output folder holding ``modular.json``."""
    from mst5_dist.train import train

    out = Path(cfg.train.output_dir)
    wanted = stages or list(STAGES)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown} (known: {', '.join(STAGES)})")
    for stage, lang in plan(cfg):
        if stage not in wanted:
            continue
        run_cfg = stage_config(cfg, out, stage, lang)
        if (Path(run_cfg.train.output_dir) / "final" / META_FILE).is_file():
            log(f"[modular] {stage} {lang}: done already ({run_cfg.train.output_dir}/final), skipped")
            continue
        if stage == "cla" and not (Path(run_cfg.modular.pivot_model) / META_FILE).is_file():
            raise ConfigError(
                f"stage cla {lang}: the pivot module {run_cfg.modular.pivot_model} is missing (run stage language first)"
            )
        data, n_rows = prepare_data(cfg, out, stage, lang)
        log(f"[modular] {stage} {lang}: {n_rows} rows from {data}")
        # One process group for all stages: Accelerate cannot bring one back once destroyed.
        train(run_cfg, resume="latest" if resume else None, keep_process_group=True)
        if distributed.is_main_env_rank():
            write_manifest(out, cfg)
    if distributed.is_main_env_rank():
        write_manifest(out, cfg)
    distributed.shutdown()
    return out


# ------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, help="YAML config with a modular: section (see configs/modular-tiny.yaml)"
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. modular.languages=[en,de]")
    p.add_argument("--stages", default="language,cla", help="which stages to run (default: language,cla)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its latest checkpoint")


def run(args: argparse.Namespace) -> int:
    from mst5_dist.data import DataError
    from mst5_dist.evaluate.sts import EvalDataError
    from mst5_dist.train import EXIT_INTERRUPTED, Interrupted

    try:
        cfg = load_config(args.config, args.overrides)
        out = train_modular(cfg, stages=[s for s in args.stages.split(",") if s], resume=args.resume)
        print(f"modular model in {out} ({MANIFEST})")
        return 0
    except Interrupted as e:
        print(f"mst5 train-modular: interrupted: {e} (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, DataError, EvalDataError, ModelError, FileNotFoundError) as e:
        print(f"mst5 train-modular: error: {e}", file=sys.stderr)
        return 2


def register(sub: Any) -> None:
    p = sub.add_parser("train-modular", help="train language modules and cross-lingual alignment adapters")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mst5_dist.modular", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
