"""``train_modular``: stage 1 (a language module per language), then stage 2 (a CLA adapter per
non-pivot language), each an ordinary run of the training recipe with its own config, checkpoints,
log and ``final/``. This module only writes each stage's data and config and runs them in turn.

    OUT/modular.json              language -> {"language": module dir, "cla": adapter dir}
    OUT/data/{language,parallel}-L.jsonl
    OUT/language/L/   OUT/cla/L/  (each a training output: config.yaml, train_log.jsonl, final/)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mst5_dist import distributed
from mst5_dist.config import Config, with_overrides
from mst5_dist.errors import ConfigError
from mst5_dist.layout import FINAL_DIR, META_FILE
from mst5_dist.modular.config import ModularRunConfig
from mst5_dist.modular.data import language_rows, parallel_rows, write_jsonl
from mst5_dist.modular.manifest import STAGES, write_manifest
from mst5_dist.outputs import check_output
from mst5_dist.training.recipe import train

logger = logging.getLogger(__name__)


def stage_config(cfg: ModularRunConfig, out: Path, stage: str, lang: str) -> Config:
    """The config of one stage run: the user's run sections, this stage's data/output, then overrides."""
    m = cfg.modular
    data = stage_data_path(out, stage, lang)
    common = [
        "data.format=jsonl",
        f"data.paths=[{json.dumps(str(data))}]",
        "data.max_rows=null",
        "loss.hard_negatives=false",
        f"train.output_dir={json.dumps(str(out / stage / lang))}",
    ]
    if stage == "language":
        return with_overrides(cfg.run_config(), [*common, "loss.objective=triplet", *m.language_overrides])
    pivot_module = out / "language" / m.pivot_language / FINAL_DIR
    extra = [
        "loss.objective=cla",
        f"model.merge_adapters=[{json.dumps(str(out / 'language' / lang / FINAL_DIR))}]",
        f"loss.pivot_model={json.dumps(str(pivot_module))}",
    ]
    return with_overrides(cfg.run_config(), common + extra + list(m.cla_overrides))


def plan(cfg: ModularRunConfig) -> list[tuple[str, str]]:
    m = cfg.modular
    if not m.languages:
        raise ConfigError("modular.languages is empty (e.g. modular.languages=[en,de,ru,zh])")
    if m.pivot_language not in m.languages:
        raise ConfigError(f"modular.pivot_language '{m.pivot_language}' must be one of modular.languages {m.languages}")
    stage1 = [("language", lang) for lang in m.languages]
    return stage1 + [("cla", lang) for lang in m.languages if lang != m.pivot_language]


def stage_data_path(out: Path, stage: str, lang: str) -> Path:
    return out / "data" / f"{'language' if stage == 'language' else 'parallel'}-{lang}.jsonl"


def prepare_data(cfg: ModularRunConfig, out: Path, stage: str, lang: str) -> tuple[Path, int]:
    """Write the stage's rows where ``stage_config`` points the trainer; (path, row count)."""
    m = cfg.modular
    if stage == "language":
        rows = language_rows(m.stsb_dir, lang, m.min_score)
    else:
        rows = parallel_rows(m.stsb_dir, lang, m.pivot_language, m.parallel_max_rows)
    return write_jsonl(stage_data_path(out, stage, lang), rows), len(rows)


def train_modular(
    cfg: ModularRunConfig, *, stages: list[str] | None = None, resume: bool = False, config_file: str | None = None
) -> Path:
    """Stage 1 for every language, then stage 2 for every non-pivot one; a stage whose ``final/``
    exists is skipped, so rerunning continues where a run stopped (``resume`` also picks up the
    stopped stage's latest checkpoint). Returns the output folder holding ``modular.json``.
    Run it inside the entry point's ``distributed.process_group()``: all stages share it.
    ``config_file``: the YAML the config came from (the output may not contain it, unless resumed)."""
    reads = [("model.name_or_path", cfg.model.name_or_path), ("modular.stsb_dir", cfg.modular.stsb_dir)]
    config = [("--config", config_file)]
    out = check_output(cfg.train.output_dir, "train.output_dir", reads + ([] if resume else config),
                       may_hold=config if resume else ())  # fmt: skip
    wanted = stages or list(STAGES)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown} (known: {', '.join(STAGES)})")
    main = distributed.is_main_env_rank()
    for stage, lang in plan(cfg):
        if stage not in wanted:
            continue
        run_cfg = stage_config(cfg, out, stage, lang)
        if (Path(run_cfg.train.output_dir) / FINAL_DIR / META_FILE).is_file():
            logger.info(f"[modular] {stage} {lang}: done already ({run_cfg.train.output_dir}/final), skipped")
            continue
        if stage == "cla" and not (Path(run_cfg.loss.pivot_model) / META_FILE).is_file():
            raise ConfigError(
                f"stage cla {lang}: the pivot module {run_cfg.loss.pivot_model} is missing (run stage language first)"
            )
        data, n_rows = prepare_data(cfg, out, stage, lang)
        logger.info(f"[modular] {stage} {lang}: {n_rows} rows from {data}")
        train(run_cfg, resume="latest" if resume else None)
        if main:
            write_manifest(out, cfg)
    if main:
        write_manifest(out, cfg)
    return out
