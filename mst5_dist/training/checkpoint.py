"""Checkpoint I/O: resumable ``checkpoints/step-N/`` folders and the finished ``final/`` model.

A checkpoint is written by every rank into ``step-N.tmp`` (``accelerator.save_state``), completed by
the main process (``trainer_state.json`` last) and renamed; only a folder holding
``trainer_state.json`` under its final name counts (``layout.checkpoint_dirs``). LoRA runs keep
only trainable tensors: the frozen base (18 GB for mt5-xxl in fp32) is reloaded from
``model.name_or_path`` on resume, not copied into every checkpoint.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mst5_dist import distributed
from mst5_dist.config import Config, config_keys, save_config
from mst5_dist.errors import BadInput, ConfigError
from mst5_dist.files import read_json, verify_manifest, write_json, write_manifest
from mst5_dist.layout import (
    CHECKPOINT_CONFIG,
    CHECKPOINT_MANIFEST,
    CHECKPOINTS,
    FINAL_DIR,
    SCHEDULER_FILE,
    STATE_FILE,
    TRAINING_CONFIG,
    checkpoint_dirs,
    checkpoint_name,
)
from mst5_dist.model import SentenceEncoder
from mst5_dist.modelcard import write_model_card
from mst5_dist.training.rng import load_rng, save_rng
from mst5_dist.versions import VERSIONS_FILE, package_versions

logger = logging.getLogger(__name__)


class CheckpointError(BadInput):
    """A checkpoint that is incomplete, changed since it was written, or holds more than tensors."""


# Settings that fix the data order and the trainable tensors (declared ``resume=True`` on the
# config field): a resume that changes any of them would not continue the run it names (another
# base, other rows, other batches, another LoRA shape, other CLA targets).
RESUME_KEYS = [tuple(key.split(".")) for key in config_keys("resume")]
# Resume settings that name local folders, compared by their absolute form.
_PATH_KEYS = ("name_or_path", "merge_adapters", "paths", "pivot_model")
# The only classes a DeepSpeed checkpoint's pickles hold besides tensors and plain containers
# (seen in ZeRO-2 and ZeRO-3 optimizer files); loading allows these and nothing else.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _path_identity(value: Any) -> Any:
    """A local path as its absolute form (the same folder given relative to another working
    directory is the same setting); anything else (a hub name, a number) as it is."""
    if isinstance(value, list):
        return [_path_identity(v) for v in value]
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def resume_fingerprint(cfg: Config) -> dict[str, Any]:
    """``section.key`` -> value of every setting in ``RESUME_KEYS`` (paths made absolute)."""
    out = {}
    for section, key in RESUME_KEYS:
        value = getattr(getattr(cfg, section), key)
        out[f"{section}.{key}"] = _path_identity(value) if key in _PATH_KEYS else value
    return out


@dataclass
class TrainState:
    """Where the loop is; saved with every checkpoint."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch."""
    batch_in_epoch: int = 0
    """Global batches of the current epoch already consumed."""


def lora_only(cfg: Config) -> bool:
    return cfg.lora.preset != "full"


def keep_trainable_only(model_names: set[str]):
    """save_state hook (non-DeepSpeed): drop frozen tensors from the saved model weights."""

    def hook(models, weights, output_dir) -> None:
        for i, sd in enumerate(weights):
            weights[i] = {k: v for k, v in sd.items() if k in model_names}

    return hook


def register_state(accelerator, model, cfg: Config) -> None:
    """(LoRA, no DeepSpeed) a save hook that keeps only the trainable tensors. The scheduler is not
    registered with Accelerate: it would be pickled (``custom_checkpoint_0.pkl``, read back with
    ``weights_only=False``); we keep it as JSON."""
    if lora_only(cfg) and not distributed.zero_stage(accelerator):
        trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        accelerator.register_save_state_pre_hook(keep_trainable_only(trainable))


def save_checkpoint(accelerator, cfg: Config, state: TrainState, output_dir: Path, scheduler) -> Path:
    """save_state into ``step-N.tmp`` on all ranks, then complete and rename on the main process.

    Beside Accelerate's (or DeepSpeed's) model and optimizer files: ``scheduler.json``, one
    ``rng_state_R.safetensors`` per rank, ``config.yaml``, ``trainer_state.json`` (with the resume
    fingerprint) and, last, ``manifest.json`` (size + sha256 of every file)."""
    root = output_dir / CHECKPOINTS
    final = root / checkpoint_name(state.step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if distributed.zero_stage(accelerator) and lora_only(cfg) else {}
    accelerator.save_state(str(tmp), **kwargs)
    save_rng(tmp, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for pickled in tmp.glob("random_states_*.pkl"):  # ours are rng_state_*.safetensors
            pickled.unlink()
        meta = {
            **asdict(state),
            "world_size": accelerator.num_processes,
            "zero_stage": distributed.zero_stage(accelerator),
            "fingerprint": resume_fingerprint(cfg),
        }
        write_json(tmp / SCHEDULER_FILE, scheduler.state_dict())
        save_config(cfg, tmp / CHECKPOINT_CONFIG)
        write_json(tmp / VERSIONS_FILE, package_versions())
        write_json(tmp / STATE_FILE, meta)
        write_manifest(tmp, CHECKPOINT_MANIFEST)  # last: it covers everything above
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[: -cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint ``--resume`` names, checked against its manifest (on the main process; every
    rank gets the same answer). ``latest``: the newest that verifies, saying which broken ones it
    passed over, or None when there is none at all; a named folder that does not verify is an error."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE})")
        problem = distributed.from_main(lambda: verify_manifest(path, CHECKPOINT_MANIFEST))
        if problem:
            raise CheckpointError(f"--resume {resume}: checkpoint does not verify: {problem}")
        return path
    candidates = checkpoint_dirs(output_dir)

    def newest_good() -> tuple[int | None, list[str]]:
        broken = []
        for i in range(len(candidates) - 1, -1, -1):
            problem = verify_manifest(candidates[i], CHECKPOINT_MANIFEST)
            if problem is None:
                return i, broken
            broken.append(problem)
        return None, broken

    index, broken = distributed.from_main(newest_good)
    for problem in broken:
        logger.warning(f"--resume latest: skipping a broken checkpoint: {problem}")
    if index is None:
        if broken:
            raise CheckpointError(f"--resume latest: no checkpoint in {output_dir / CHECKPOINTS} verifies: {broken[0]}")
        return None
    if broken:
        logger.warning(f"--resume latest: falling back to {candidates[index]}")
    return candidates[index]


def _unfingerprinted(path: Path, keys: set[str]) -> dict[str, Any]:
    """The values of resume settings that ``path``'s fingerprint lacks (written before they entered
    it): as the checkpoint's config.yaml records them, else (older still) their defaults."""
    if not keys:
        return {}
    file = path / CHECKPOINT_CONFIG
    recorded = (yaml.safe_load(file.read_text(encoding="utf-8")) if file.is_file() else None) or {}
    out = {}
    for key in keys:
        section, name = key.split(".")
        value = (recorded.get(section) or {}).get(name, getattr(getattr(Config(), section), name))
        out[key] = _path_identity(value) if name in _PATH_KEYS else value
    return out


def check_resume(cfg: Config, path: Path, meta: dict[str, Any]) -> None:
    """Refuse a resume whose settings would not continue the checkpoint's run, naming every key."""
    now = resume_fingerprint(cfg)
    saved = meta.get("fingerprint") or {}
    saved = {**saved, **_unfingerprinted(path, now.keys() - saved.keys())}
    changed = [f"{k} was {saved[k]!r}, now {now[k]!r}" for k in now if saved[k] != now[k]]
    if changed:
        raise ConfigError(f"cannot resume from {path}: " + "; ".join(changed))


@contextmanager
def no_code_from_pickles() -> Iterator[None]:
    """While a checkpoint loads, every ``torch.load`` reads with ``weights_only=True`` (tensors, plain
    containers and ``DEEPSPEED_SAFE_GLOBALS``), also where DeepSpeed asks for ``weights_only=False``:
    a crafted file fails to load instead of running its code."""
    import importlib

    allowed = []
    for name in DEEPSPEED_SAFE_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # deepspeed absent or changed: nothing to allow
            continue
    original = torch.load

    def guarded(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return original(*args, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original


def load_checkpoint(accelerator, cfg: Config, path: Path, scheduler) -> TrainState:
    meta = read_json(path / STATE_FILE)
    check_resume(cfg, path, meta)
    saved_world, saved_stage = meta.pop("world_size", 1), meta.pop("zero_stage", 0)
    meta.pop("fingerprint", None)
    stage = distributed.zero_stage(accelerator)
    if saved_stage != stage:
        raise ConfigError(f"cannot resume from {path}: written under ZeRO stage {saved_stage}, now stage {stage}")
    if stage and saved_world != accelerator.num_processes:
        # ZeRO partitions optimizer state (and ZeRO-3 parameters) per rank; DeepSpeed cannot load
        # N partitions into M ranks without converting to a universal checkpoint first.
        raise ConfigError(
            f"cannot resume from {path}: written by {saved_world} ranks under ZeRO-{stage}, now "
            f"{accelerator.num_processes}; resume with {saved_world} processes, or convert it with "
            "DeepSpeed's ds_to_universal.py and load it as a universal checkpoint"
        )
    try:
        with no_code_from_pickles():
            if stage:
                accelerator.load_state(str(path), load_module_strict=not lora_only(cfg))
            else:
                accelerator.load_state(str(path), strict=not lora_only(cfg))  # safetensors.load_model(strict=)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load: a file holds objects other than tensors ({first})") from None
    scheduler.load_state_dict(read_json(path / SCHEDULER_FILE))
    rank = accelerator.process_index
    if rank < saved_world:
        load_rng(path, rank)
    else:  # a DDP checkpoint resumed on more ranks: the new ranks have no saved generators
        logger.info(f"rank {rank}: no random state in {path} (written by {saved_world} ranks); seeding afresh")
        torch.manual_seed(cfg.train.seed + 1000 * rank + meta["step"])
    return TrainState(**meta)


def save_final(
    accelerator, model, cfg: Config, output_dir: Path, name: str = FINAL_DIR, extra: dict[str, Any] | None = None
) -> Path:
    """The encoder as ``OUTPUT_DIR/<name>/`` (adapter + tokenizer + pooling), written atomically
    (``<name>.tmp`` renamed when complete); ``extra`` maps file names to JSON written inside it.
    ``final/`` at the end of training, ``best/`` (with ``best.json``) for ``eval.keep_best``.

    Call it on ALL ranks: under ZeRO-3 the trainable tensors are gathered from all ranks first. The
    written adapter is read back and compared, so an empty-tensor adapter can never be shipped.
    """
    from mst5_dist.files import atomic_dir

    final = output_dir / name
    encoder: SentenceEncoder = accelerator.unwrap_model(model)
    if lora_only(cfg):
        state = distributed.full_trainable_state_dict(accelerator, encoder.backbone)
    else:
        state = accelerator.get_state_dict(model)  # full fine-tuning: every weight (gathered)
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            encoder.save_pretrained(tmp, state_dict=state)
            save_config(cfg, tmp / TRAINING_CONFIG)
            write_json(tmp / VERSIONS_FILE, package_versions())  # what made this model
            write_model_card(tmp, name=output_dir.name)  # replaces peft's placeholder README.md
            for file_name, content in (extra or {}).items():
                write_json(tmp / file_name, content)
            if lora_only(cfg):
                verify_adapter(tmp, state)
    accelerator.wait_for_everyone()
    return final


def verify_adapter(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Reload the written adapter and compare it with the in-memory tensors."""
    from safetensors.torch import load_file

    written = load_file(str(path / "adapter_model.safetensors"))
    expected = {k.replace(".default.", "."): v for k, v in state.items() if "lora_" in k}
    expected = {k.removeprefix("base_model.model."): v for k, v in expected.items()}
    got = {k.removeprefix("base_model.model."): v for k, v in written.items()}
    if set(got) != set(expected):
        raise RuntimeError(f"saved adapter keys differ: missing {sorted(set(expected) - set(got))[:3]}")
    for k, v in expected.items():
        if got[k].shape != v.shape or got[k].numel() == 0 or not torch.equal(got[k], v.to(got[k].dtype)):
            raise RuntimeError(f"saved adapter tensor {k} does not match the trained one ({tuple(got[k].shape)})")
