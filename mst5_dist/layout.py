"""The run-folder layout: file names, checkpoint discovery, which folder a path means. Standard
library only, so the SLURM glue (which runs inside signal traps) can use it without importing torch.

    OUTPUT_DIR/
      config.yaml                 the run's config, written when training starts
      train_log.jsonl             one JSON object per optimizer step
      tensorboard/
      checkpoints/step-NNNNNNNN/  resumable state; trainer_state.json marks it complete
      final/                      the finished model (sentence_encoder.json + adapter or weights)
      best/                       (eval.keep_best) the best-scoring model, with best.json
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CHECKPOINT_CONFIG = "config.yaml"
CHECKPOINT_MANIFEST = "manifest.json"  # sizes + sha256 of every file of a checkpoint, written last
SCHEDULER_FILE = "scheduler.json"
LOCK_FILE = ".mst5.lock"  # held (flock) by the process writing into an output folder
FINAL_DIR = "final"
BEST_DIR, BEST_FILE = "best", "best.json"
META_FILE = "sentence_encoder.json"  # what makes a folder one of our models
TRAINING_CONFIG = "training_config.yaml"  # the config, inside final/ and best/
MODULAR_MANIFEST = "modular.json"  # a modular model (train-modular output)
ONNX_MODEL = Path("onnx") / "model.onnx"
EXPORT_REPORT = "export_report.json"
BUILTIN_PREFIX = "builtin:"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first: ``checkpoints/step-N`` folders (a ``.tmp`` one is an
    unfinished write) that hold ``trainer_state.json``, which is written last."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.glob("step-*")
        if not p.name.endswith(".tmp") and p.name[5:].isdigit() and (p / STATE_FILE).is_file()
    ]
    return sorted(done, key=lambda p: int(p.name[5:]))


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name[5:])


def resolve_model_dir(path: str | Path) -> Path:
    """A training output directory (one holding ``final/``) means its ``final/`` model; anything
    else (a model folder, a hub name) is taken as it is."""
    path = Path(path)
    if (path / FINAL_DIR).is_dir() and not (path / META_FILE).is_file():
        return path / FINAL_DIR
    return path


def builtin_path(name: str) -> Path:
    """Path of an embedded resource such as ``tiny_nli`` (the triplet JSONL)."""
    path = Path(str(resources.files("mst5_dist") / "resources" / f"{name}.jsonl"))
    if not path.is_file():
        raise FileNotFoundError(f"no embedded resource '{name}' (looked for {path})")
    return path


def resolve_path(path: str) -> Path:
    """``builtin:NAME`` -> the embedded resource; anything else -> the path itself."""
    return builtin_path(path[len(BUILTIN_PREFIX) :]) if path.startswith(BUILTIN_PREFIX) else Path(path)
