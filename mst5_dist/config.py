"""Typed, nested run configuration loaded from YAML with ``section.key=value`` overrides.

Every field carries a docstring (the string literal under it; a test parses this file to make sure
none is missing) and declares, in its metadata, whether it enters the resume fingerprint and the
data cache key (``kinds``; ``config_keys`` lists them). Loading is strict: an unknown section or
key, or a value of the wrong type, raises ``ConfigError`` naming the offending key (and the file).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from mst5_dist.errors import ConfigError
from mst5_dist.files import atomic_write_text

__all__ = [
    "SECTION", "Config", "ConfigError", "config_keys", "flat_config", "kinds", "load_config", "save_config",
    "undeclared_keys", "validate", "with_overrides",
]  # fmt: skip
logger = logging.getLogger(__name__)

# What a setting changes besides the run itself, declared on each field so that a new field must
# choose: the resume fingerprint (a checkpoint refuses a resume that changes it) and the data
# cache key (a new value re-reads the inputs). ``config_keys`` lists each kind.
KINDS = ("resume", "cache")


def kinds(*, resume: bool, cache: bool) -> dict[str, bool]:
    """A field's metadata: whether it enters the resume fingerprint and the data cache key."""
    return {"resume": resume, "cache": cache}


SECTION = {"section": True}
"""A field's metadata when it holds a section (whose own fields declare their kinds)."""


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            out += _leaves(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append((prefix + f.name, f))
    return out


def undeclared_keys(cls: type) -> list[str]:
    """``section.key`` of every field of ``cls`` whose metadata does not declare both kinds (``kinds``)."""
    return [key for key, f in _leaves(cls) if not all(kind in f.metadata for kind in KINDS)]


def config_keys(kind: str, cls: type | None = None) -> list[str]:
    """``section.key`` of every field of ``cls`` (default: ``Config``) that enters ``kind``
    (``resume`` or ``cache``), in declaration order."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    cls = cls or Config
    missing = undeclared_keys(cls)
    if missing:
        raise TypeError(f"{cls.__name__}: fields that declare neither {' nor '.join(KINDS)}: {', '.join(missing)}")
    return [key for key, f in _leaves(cls) if f.metadata[kind]]


@dataclass
class ModelConfig:
    name_or_path: str = field(default="runs/tiny-mt5", metadata=kinds(resume=True, cache=False))
    """Hugging Face model id or local folder: an mT5/T5 checkpoint (only its encoder is loaded),
    any AutoModel encoder (XLM-R, BERT), a sentence-transformers folder, or one of our outputs."""

    pooling: Literal["auto", "mean", "cls"] = field(default="auto", metadata=kinds(resume=True, cache=False))
    """Token pooling. ``auto`` reads a sentence-transformers pooling config when present, else mean."""

    normalize: bool = field(default=True, metadata=kinds(resume=False, cache=False))
    """L2-normalise sentence embeddings (cosine similarity becomes a dot product)."""

    max_seq_length: int = field(default=128, metadata=kinds(resume=True, cache=False))
    """Tokens per sentence after truncation (the paper does not truncate below the data's length)."""

    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata=kinds(resume=True, cache=False))
    """Weight dtype at load. fp16 is refused for T5-family models (their activations overflow it)."""

    tokenizer_use_fast: bool = field(default=True, metadata=kinds(resume=True, cache=False))
    """Use the fast (Rust) tokenizer; set false for the slow SentencePiece one."""

    gradient_checkpointing: bool = field(default=False, metadata=kinds(resume=False, cache=False))
    """Recompute activations in backward to save memory (works with LoRA)."""

    dropout: float | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Override the backbone's dropout rate (T5 ``dropout_rate``; BERT-like hidden and attention
    dropout); None keeps the checkpoint's value. 0 makes N ranks and 1 process bit-comparable."""

    attn_implementation: str | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Attention kernel passed to transformers (``eager``, ``sdpa``); None keeps the library default."""

    merge_adapters: list[str] = field(default_factory=list, metadata=kinds(resume=True, cache=False))
    """LoRA adapters (our ``final/`` folders of the same base) merged into the base weights, in
    order, before this run's own LoRA is added; the saved model records them and reloads the same
    stack. A modular CLA adapter sits on its language module this way."""


@dataclass
class LoraConfig:
    preset: Literal["qv", "all-linear", "full"] = field(default="all-linear", metadata=kinds(resume=True, cache=False))
    """``qv``: LoRA on attention query and value; ``all-linear``: on every linear layer of the
    encoder; ``full``: no LoRA, all weights train."""

    r: int = field(default=8, metadata=kinds(resume=True, cache=False))
    """LoRA rank."""

    alpha: int = field(default=32, metadata=kinds(resume=True, cache=False))
    """LoRA scaling numerator (the update is scaled by alpha / r)."""

    dropout: float = field(default=0.1, metadata=kinds(resume=False, cache=False))
    """Dropout on the LoRA branch input."""

    target_modules: list[str] | None = field(default=None, metadata=kinds(resume=True, cache=False))
    """Explicit module names; overrides the preset's list when set."""


@dataclass
class DataConfig:
    format: str = field(default="jsonl", metadata=kinds(resume=True, cache=True))
    """Input layout: ``jsonl`` {anchor, positive, negative[, source_id]}; ``csv`` SimCSE
    sent0,sent1,hard_neg; ``snli`` SNLI/MNLI jsonl; ``xnli`` per-language aligned TSVs;
    ``hub`` a Hugging Face dataset name (needs a network). A new layout is a reader registered in a
    module of ``mst5_dist/data/formats/``; an unknown name is refused before anything loads."""

    paths: list[str] = field(default_factory=lambda: ["builtin:tiny_nli"], metadata=kinds(resume=True, cache=True))
    """Files (or, for ``xnli``, one folder) to read; ``builtin:tiny_nli`` is the embedded set."""

    languages: list[str] = field(default_factory=list, metadata=kinds(resume=True, cache=True))
    """``xnli``: languages to use (empty: every language found in the folder)."""

    split: str = field(default="dev", metadata=kinds(resume=True, cache=True))
    """``xnli``: split prefix of the per-language files ({split}-{lang}.tsv); ``hub``: split name."""

    cross_lingual: bool = field(default=True, metadata=kinds(resume=True, cache=True))
    """``xnli``: mSimCSE sampling (premise in one language, hypotheses in randomly drawn ones);
    false gives monolingual triplets for every language."""

    skip_bad_rows: bool = field(default=False, metadata=kinds(resume=True, cache=True))
    """Skip malformed rows (and report how many) instead of failing on the first one."""

    max_rows: int | None = field(default=None, metadata=kinds(resume=True, cache=True))
    """Keep only the first N triplets (quick experiments)."""

    length_grouping: bool = field(default=True, metadata=kinds(resume=True, cache=False))
    """Sort rows by length inside large shuffled buckets so batches carry less padding."""

    bucket_batches: int = field(default=32, metadata=kinds(resume=True, cache=False))
    """Bucket size for length grouping, in global batches."""

    cache_dir: str | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Arrow cache folder for the ``datasets`` library (None: its default)."""


@dataclass
class LossConfig:
    objective: str = field(default="triplet", metadata=kinds(resume=True, cache=False))
    """Training objective, by registered name (``mst5_dist.objectives``): ``triplet`` (InfoNCE on
    anchor / positive [/ hard negative] rows) or ``cla`` (a modular CLA stage: each row's sentence
    against a frozen pivot-language embedding of its translation)."""

    temperature: float = field(default=0.05, metadata=kinds(resume=False, cache=False))
    """Softmax temperature applied to cosine similarities."""

    hard_negatives: bool = field(default=True, metadata=kinds(resume=True, cache=False))
    """Score anchors against the contradiction hypotheses as extra candidates."""

    symmetric: bool = field(default=False, metadata=kinds(resume=True, cache=False))
    """Objective ``triplet``: add the other direction (GTE, mE5): each positive scored against the
    anchors of the global batch (gathered across ranks), the two cross-entropies averaged. Hard
    negatives stay candidates of the anchor direction only."""

    matryoshka_dims: list[int] = field(default_factory=list, metadata=kinds(resume=True, cache=False))
    """Objective ``triplet``: Matryoshka embeddings (sentence-transformers' ``MatryoshkaLoss``): the
    loss summed over the first D coordinates of every embedding, re-normalised, for each D here
    (strictly descending, each at most the model's embedding size, e.g. ``[384, 256, 128, 64]``;
    list the full size to keep training it). Empty: the full embedding only."""

    matryoshka_weights: list[float] = field(default_factory=list, metadata=kinds(resume=True, cache=False))
    """The weight (> 0) of each ``matryoshka_dims`` entry's loss, in the same order; empty: 1 each."""

    gather_across_ranks: bool = field(default=True, metadata=kinds(resume=False, cache=False))
    """Use every rank's positives and negatives as candidates (autograd all-gather)."""

    cache_chunk_size: int | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """GradCache: encode each step's sequences this many at a time without keeping activations
    (peak memory ~ one chunk, gradients unchanged); None keeps every chunk's activations."""

    chunk_tokens: int | None = field(default=16384, metadata=kinds(resume=False, cache=False))
    """Length-aware encoding: the step's sequences (all texts of this rank's micro-batch) are sorted
    by length and encoded in chunks, each padded only to its own longest sequence, of at most this
    many tokens (rows x width), with ONE backward per step (``mst5_dist.encoding``). Must hold one
    ``model.max_seq_length`` sequence. None: the whole batch at one width in one forward (the
    reference path; with GradCache, ``cache_chunk_size`` consecutive rows of the sorted batch)."""

    chunk_overhead_tokens: int | Literal["auto"] = field(default="auto", metadata=kinds(resume=False, cache=False))
    """What one more chunk costs, in tokens of work (kernel launches, per-call overhead): chunks are
    cut where the padding saved exceeds it. ``auto``: 32 on CPU, 8192 on CUDA."""

    pack_sequences: bool = field(default=True, metadata=kinds(resume=False, cache=False))
    """Length-aware encoding packs the step's sequences into rows (best-fit decreasing; the width a
    multiple of the longest sequence, priced by attention cost), each attending only to itself
    (block-diagonal mask, positions restarted per sequence): one chunk per ``chunk_tokens`` tokens
    and little padding, same embeddings.
    Applies to mean pooling on mT5/T5/UMT5, BERT, RoBERTa and XLM-R with SDPA or eager attention,
    and not to GradCache chunks; other runs keep padded chunks (logged). False: padded chunks."""

    pivot_model: str = field(default="", metadata=kinds(resume=True, cache=False))
    """Objective ``cla``: the pivot language's module (a ``final/`` folder) that embeds the other
    side of every pair once, frozen."""


@dataclass
class OptimConfig:
    lr: float = field(default=5e-4, metadata=kinds(resume=False, cache=False))
    """Peak learning rate for AdamW."""

    weight_decay: float = field(default=0.0, metadata=kinds(resume=False, cache=False))
    """AdamW decoupled weight decay."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=kinds(resume=False, cache=False))
    """AdamW (beta1, beta2)."""

    eps: float = field(default=1e-8, metadata=kinds(resume=False, cache=False))
    """AdamW epsilon."""

    warmup_ratio: float = field(default=0.1, metadata=kinds(resume=False, cache=False))
    """Fraction of optimizer steps with linear warmup from 0 to ``lr``."""

    scheduler: str = field(default="linear", metadata=kinds(resume=False, cache=False))
    """Schedule after warmup, by registered name (``mst5_dist.training.schedules``): ``linear``
    decay to 0, or ``constant``."""

    max_grad_norm: float = field(default=1.0, metadata=kinds(resume=False, cache=False))
    """Clip the global gradient norm to this value (0 disables clipping)."""


@dataclass
class TrainConfig:
    output_dir: str = field(default="runs/tiny", metadata=kinds(resume=False, cache=False))
    """Where logs, checkpoints and ``final/`` go."""

    batch_size: int = field(default=32, metadata=kinds(resume=True, cache=False))
    """GLOBAL batch in triplets per forward pass, summed over ranks: every triplet in it is a
    negative for every other. Must divide by the number of processes."""

    grad_accum_steps: int = field(default=1, metadata=kinds(resume=True, cache=False))
    """Forward passes per optimizer step (each pass keeps its own in-batch negatives)."""

    epochs: int = field(default=1, metadata=kinds(resume=False, cache=False))
    """Passes over the data."""

    max_steps: int | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Stop after this many optimizer steps (None: run all epochs)."""

    seed: int = field(default=42, metadata=kinds(resume=True, cache=False))
    """Seed for model init, dropout and data order."""

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        default="auto", metadata=kinds(resume=False, cache=False)
    )
    """``auto``: bf16 on a GPU that supports it, else fp32. fp16 is refused for T5 models."""

    log_every: int = field(default=1, metadata=kinds(resume=False, cache=False))
    """Write a train_log.jsonl line every N optimizer steps."""

    save_every: int | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Write a resumable checkpoint every N optimizer steps (None or 0: only at the end)."""

    keep_checkpoints: int = field(default=2, metadata=kinds(resume=False, cache=False))
    """How many step checkpoints to keep (oldest removed first)."""

    report_to: list[Literal["tensorboard", "mlflow", "wandb", "comet_ml", "aim", "clearml", "dvclive"]] = field(
        default_factory=lambda: ["tensorboard"], metadata=kinds(resume=False, cache=False)
    )
    """Experiment trackers (Accelerate's ``log_with``) that receive the run config as hyperparameters
    and every step's numeric ``train_log.jsonl`` fields as metrics; ``[]`` logs to none.
    ``tensorboard`` writes ``OUTPUT_DIR/tensorboard/``; ``mlflow`` (``pip install -e .[mlflow]``)
    logs where ``MLFLOW_TRACKING_URI`` points; ``wandb`` follows ``WANDB_MODE`` / ``WANDB_PROJECT``."""

    tracker_project: str = field(default="mst5", metadata=kinds(resume=False, cache=False))
    """Project name for trackers other than TensorBoard: the MLflow experiment (unless
    ``MLFLOW_EXPERIMENT_NAME`` is set) or the W&B project; the run is named after ``output_dir``."""

    progress_bar: bool = field(default=True, metadata=kinds(resume=False, cache=False))
    """Show a progress bar on the main process."""

    deepspeed_config: str | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Path to a DeepSpeed JSON config (None: plain Accelerate / DDP)."""

    collective_timeout_s: float = field(default=600.0, metadata=kinds(resume=False, cache=False))
    """Seconds any collective (gradient all-reduce, metric reduce, barrier) waits for the other
    ranks before this rank fails, naming the collective: a hung, stopped or dead rank ends the run
    instead of blocking it. Long enough for rank 0's one-off work the others wait on (building the
    data cache, verifying a checkpoint); NCCL enforces it by aborting the process."""


@dataclass
class EvalConfig:
    sts_path: str | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """STS-B style CSV (s1,s2,score) scored during training (Spearman x100); None disables it."""

    every_steps: int | None = field(default=None, metadata=kinds(resume=False, cache=False))
    """Evaluate every N optimizer steps when ``sts_path`` is set (it is always evaluated at the end);
    the score is logged as ``eval_sts_spearman``."""

    batch_size: int = field(default=64, metadata=kinds(resume=False, cache=False))
    """Sentences per forward pass when embedding for evaluation."""

    keep_best: bool = field(default=False, metadata=kinds(resume=False, cache=False))
    """Write the model as ``OUTPUT_DIR/best/`` (same content as ``final/``, plus ``best.json`` with
    step, metric and value) whenever an evaluation improves ``best_metric``; needs ``sts_path``."""

    best_metric: Literal["sts_spearman"] = field(default="sts_spearman", metadata=kinds(resume=False, cache=False))
    """Metric ``keep_best`` follows (higher is better); it is logged as ``eval_<name>``."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata=SECTION)
    """The encoder and its pooling."""

    lora: LoraConfig = field(default_factory=LoraConfig, metadata=SECTION)
    """Which weights train."""

    data: DataConfig = field(default_factory=DataConfig, metadata=SECTION)
    """Training triplets and batching."""

    loss: LossConfig = field(default_factory=LossConfig, metadata=SECTION)
    """Contrastive objective."""

    optim: OptimConfig = field(default_factory=OptimConfig, metadata=SECTION)
    """Optimizer and schedule."""

    train: TrainConfig = field(default_factory=TrainConfig, metadata=SECTION)
    """Loop, output and checkpoint settings."""

    eval: EvalConfig = field(default_factory=EvalConfig, metadata=SECTION)
    """Evaluation during training."""


# --------------------------------------------------------------------------------------------
# Value limits, checked after the types: a run that cannot mean anything fails before it starts.


def at_least(lo: float) -> Any:
    return (lambda v: v >= lo), f"must be >= {lo:g}"


def _positive() -> Any:
    return (lambda v: math.isfinite(v) and v > 0), "must be a finite number > 0"


def _non_negative() -> Any:
    return (lambda v: math.isfinite(v) and v >= 0), "must be a finite number >= 0"


def _fraction() -> Any:
    return (lambda v: 0 <= v < 1), "must be in [0, 1)"


LIMITS: dict[str, Any] = {
    "model.max_seq_length": at_least(1),
    "model.dropout": _fraction(),
    "lora.r": at_least(1),
    "lora.alpha": _positive(),
    "lora.dropout": _fraction(),
    "data.max_rows": at_least(1),
    "data.bucket_batches": at_least(1),
    "loss.temperature": _positive(),
    "loss.cache_chunk_size": at_least(1),
    "loss.chunk_tokens": at_least(1),
    "loss.chunk_overhead_tokens": ((lambda v: v == "auto" or v >= 0), "must be auto or an integer >= 0"),
    "optim.lr": _positive(),
    "optim.weight_decay": _non_negative(),
    "optim.eps": _positive(),
    "optim.warmup_ratio": _fraction(),
    "optim.max_grad_norm": _non_negative(),
    "optim.betas": ((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "must be two numbers in [0, 1)"),
    "train.batch_size": at_least(1),
    "train.grad_accum_steps": at_least(1),
    "train.epochs": at_least(1),
    "train.max_steps": at_least(1),
    "train.log_every": at_least(1),
    "train.save_every": at_least(0),  # 0, like None, means "only at the end" (configs in use write 0)
    "train.keep_checkpoints": at_least(1),
    "train.collective_timeout_s": _positive(),
    "eval.every_steps": at_least(1),
    "eval.batch_size": at_least(1),
}
"""Checked by ``validate``: key -> (predicate, what the value must be). None passes (an unset option)."""


def validate(cfg: Config) -> Config:
    """Raise ``ConfigError`` naming the first key whose value is outside its limits."""
    # A schema that extends Config (``mst5 train-modular``'s) adds the limits of its own sections.
    for key, (ok, must) in {**LIMITS, **getattr(type(cfg), "EXTRA_LIMITS", {})}.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and not ok(value):
            raise _error(key, f"{must}, got {value!r}")
    if cfg.loss.chunk_tokens is not None and cfg.loss.chunk_tokens < cfg.model.max_seq_length:
        raise _error(
            "loss.chunk_tokens",
            f"must hold one sequence of model.max_seq_length={cfg.model.max_seq_length} tokens, "
            f"got {cfg.loss.chunk_tokens}",
        )
    _check_matryoshka(cfg.loss.matryoshka_dims, cfg.loss.matryoshka_weights)
    return cfg


def _check_matryoshka(dims: list[int], weights: list[float]) -> None:
    if any(d < 1 for d in dims) or any(a <= b for a, b in itertools.pairwise(dims)):
        raise _error("loss.matryoshka_dims", f"must be positive and strictly descending, got {dims}")
    if weights and len(weights) != len(dims):
        raise _error(
            "loss.matryoshka_weights",
            f"must have one weight per loss.matryoshka_dims entry ({len(dims)}) or be empty, got {weights}",
        )
    if any(not w > 0 for w in weights):
        raise _error("loss.matryoshka_weights", f"must all be > 0, got {weights}")


def check_embedding_dim(cfg: Config, embedding_dim: int) -> None:
    """What can be checked once the model is known: every Matryoshka size fits its embeddings."""
    too_big = [d for d in cfg.loss.matryoshka_dims if d > embedding_dim]
    if too_big:
        raise _error(
            "loss.matryoshka_dims",
            f"{too_big} larger than the model's embedding size {embedding_dim} ({cfg.model.name_or_path})",
        )


def check_world_size(cfg: Config, world_size: int) -> None:
    """What can be checked before any process-group work: the global batch splits evenly over ranks."""
    if cfg.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} does not divide by the {world_size} processes the launcher "
            f"started (WORLD_SIZE): every rank takes an equal share of the global batch; use a multiple of {world_size}"
        )


def _error(key: str, msg: str) -> ConfigError:
    e = ConfigError(f"{key}: {msg}")
    e.key = key  # type: ignore[attr-defined]
    return e


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float. Raise naming ``key``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, key)
            except ConfigError:
                pass  # try the next option; the error below names the whole union
        raise _error(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise _error(key, f"expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise _error(key, f"expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _error(key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _error(key, f"expected a string, got {value!r}")
        return value
    raise _error(key, f"unsupported field type {tp}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _legacy_train_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``train.tensorboard: BOOL`` (before ``train.report_to``) read as ``report_to: [tensorboard]`` or
    ``[]``, so configs saved by older runs (a checkpoint's config.yaml) still load and resume."""
    if "tensorboard" not in raw:
        return raw
    raw = dict(raw)
    value = raw.pop("tensorboard")
    if not isinstance(value, bool):
        raise ConfigError(f"train.tensorboard: expected true/false, got {value!r} (the key is now train.report_to)")
    if "report_to" in raw:
        raise ConfigError("train.tensorboard and train.report_to both set: keep train.report_to only")
    logger.warning(
        f"train.tensorboard={str(value).lower()} is read as train.report_to={'[tensorboard]' if value else '[]'}"
    )
    raw["report_to"] = ["tensorboard"] if value else []
    return raw


def _legacy_data_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``data.streaming`` is dropped with a warning (JSONL inputs are always read block by block
    into on-disk Arrow), so configs saved by older runs still load and resume."""
    if "streaming" not in raw:
        return raw
    raw = dict(raw)
    value = raw.pop("streaming")
    logger.warning(
        f"data.streaming={str(value).lower()} has no effect and is ignored (JSONL inputs are always read "
        "block by block into on-disk Arrow): remove it from the config"
    )
    return raw


_LEGACY = {TrainConfig: _legacy_train_keys, DataConfig: _legacy_data_keys}

# The ``modular:`` section every older run saved in its config.yaml (the defaults of the time).
_OLD_MODULAR_SECTION: dict[str, Any] = {
    "languages": [], "pivot_language": "en", "stsb_dir": "../shared/data/stsb-multi-mt", "min_score": 4.0,
    "parallel_max_rows": None, "language_overrides": [], "cla_overrides": [],
}  # fmt: skip


def _retired_modular_section(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``modular:`` section belongs to ``mst5 train-modular``; one holding only the old defaults
    (a config.yaml an older run saved) is dropped, so that run still resumes."""
    raw = dict(raw)
    values = raw.pop("modular") or {}
    if not isinstance(values, dict):
        raise _error("modular", f"expected a mapping, got {values!r}")
    for key, value in values.items():
        if key not in _OLD_MODULAR_SECTION or value != _OLD_MODULAR_SECTION[key]:
            raise _error(
                f"modular.{key}",
                "mst5 train has no modular section: language modules and CLA adapters train with "
                "`mst5 train-modular --config FILE`",
            )
    logger.info("modular: the section an older run saved (default values only) is ignored by mst5 train")
    return raw


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    if cls in _LEGACY:
        raw = _LEGACY[cls](raw)
    if "modular" in raw and not prefix and cls is Config:
        raw = _retired_modular_section(raw)
    hints = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            e = ConfigError(f"unknown key '{where}' (known: {', '.join(sorted(known))})")
            e.key = where  # type: ignore[attr-defined]
            raise e
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        where = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, where)
        else:
            kwargs[name] = _coerce(value, tp, where)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key '{key}' must be section.key (e.g. optim.lr=1e-4)")
    return parts, _override_value(item, text)


def _override_value(item: str, text: str) -> Any:
    """The value of override ``item`` from its text after '=': YAML gives ints, floats, bools, null
    and [lists], a bare word stays a string. Every character the user typed counts: where YAML
    would read a comment (``#`` at the start or after a space), the whole text is the (string)
    value, so ``train.output_dir=/x/run #2`` is ``/x/run #2``, never ``/x/run``. A YAML tag
    (``!!python/...``, ``!foo``, even ``!!str``) and malformed YAML are refused, naming the override."""
    if not text.strip():
        return ""
    try:
        tokens = list(yaml.scan(text))
        if any(isinstance(t, yaml.TagToken) for t in tokens):
            raise ConfigError(f"command line: override '{item}': YAML tags ('!...') are not accepted")
        if _has_comment(text, tokens):
            return text.strip()
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"command line: override '{item}': invalid YAML value ({problem})") from None


def _has_comment(text: str, tokens: list) -> bool:
    """Does YAML read part of ``text`` as a comment (a '#' outside every scalar, at the start or
    after whitespace)?"""
    inside = [(t.start_mark.index, t.end_mark.index) for t in tokens if isinstance(t, yaml.ScalarToken)]
    for i, ch in enumerate(text):
        if ch == "#" and (i == 0 or text[i - 1].isspace()) and not any(a <= i < b for a, b in inside):
            return True
    return False


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, schema: type[Config] = Config
) -> Config:
    """Read ``path`` (YAML) into a :class:`Config` (or ``schema``, a Config with more sections),
    then apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        raw = loaded or {}
    from_command_line: dict[str, str] = {}  # key -> the override that set it, for error messages
    for item in overrides or []:
        (section, key), value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"section '{section}' is not a mapping")
        raw[section][key] = value
        from_command_line[f"{section}.{key}"] = item
    try:
        return validate(_build(schema, raw, ""))
    except ConfigError as e:
        key = str(getattr(e, "key", "")).split("[")[0]
        if key in from_command_line:  # the bad value came from the command line, not the file
            raise ConfigError(f"command line: override '{from_command_line[key]}': {e}") from None
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A new config of ``cfg``'s type: ``cfg`` with ``section.key=value`` overrides applied
    (``cfg`` is unchanged)."""
    raw = to_dict(cfg)
    for item in overrides:
        (section, key), value = _parse_override(item)
        if section not in raw:
            raise ConfigError(f"override {item!r}: unknown section '{section}'")
        raw[section][key] = value
    return validate(_build(type(cfg), raw, ""))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flat_config(cfg: Config) -> dict[str, int | float | str | bool]:
    """``{"section.key": value}`` with scalar values only, as trackers take hyperparameters:
    None becomes ``"null"`` and a list its JSON text (TensorBoard's hparams refuse both)."""
    import json

    flat: dict[str, int | float | str | bool] = {}
    for section, fields in to_dict(cfg).items():
        for key, value in fields.items():
            if value is None:
                value = "null"
            elif isinstance(value, (list, dict)):
                value = json.dumps(value, ensure_ascii=False)
            flat[f"{section}.{key}"] = value
    return flat


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically; a symbolic link at ``path`` is refused, not written through."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
