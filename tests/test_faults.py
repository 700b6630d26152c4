"""Fault injection (slow): a training run SIGKILLed at 20 moments (inside checkpoint writes
included) and resumed each time ends with the adapter of an uninterrupted run and a log holding
each step once; the same with one corrupted file in the newest checkpoint; a hung rank ends the
run in bounded time, naming the collective it waited for."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, launch_cmd, read_log, train_cmd
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # 20 restarts of a training process
STEPS = 40  # enough that 20 restarts (each makes 1-3 steps before its kill) stay short of the end
RUN = ("train.progress_bar=false", "train.report_to=[]", f"train.max_steps={STEPS}", "train.save_every=1",
       "train.keep_checkpoints=2", "train.epochs=40", "model.dropout=0.1")  # fmt: skip


def adapter(run: Path):
    return load_file(run / "final" / "adapter_model.safetensors")


def max_diff(a, b) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def logged(run: Path) -> int:
    log = run / "train_log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def kill_once(cmd: list[str], run: Path, rng: random.Random, inside_write: bool) -> str:
    """Start ``cmd``, let it make progress, SIGKILL it; returns where the kill landed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start_lines, deadline = logged(run), time.time() + 240
        ckpts = run / "checkpoints"
        while proc.poll() is None and time.time() < deadline:
            if inside_write and ckpts.exists() and any(ckpts.glob("*.tmp")):
                break  # a checkpoint is being written right now
            if not inside_write and logged(run) > start_lines:
                time.sleep(rng.uniform(0.0, 0.8))  # somewhere in the next step or its checkpoint
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            return "finished"
        writing = ckpts.exists() and any(ckpts.glob("*.tmp"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        return "during a checkpoint write" if writing else "between checkpoint writes"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def reference(tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "straight"
    subprocess.run(train_cmd(tiny_base, out, *RUN), check=True, capture_output=True)
    return out


def test_20_sigkills_then_resume_equal_an_uninterrupted_run(reference, tiny_base, tmp_path):
    run = tmp_path / "killed"
    cmd = [*train_cmd(tiny_base, run, *RUN), "--resume", "latest"]
    rng = random.Random(20261202)
    where = [kill_once(cmd, run, rng, inside_write=i % 2 == 1) for i in range(20)]
    print(f"kills: {where.count('during a checkpoint write')} during a checkpoint write, "
          f"{where.count('between checkpoint writes')} between, {where.count('finished')} too late")  # fmt: skip
    assert where.count("during a checkpoint write") >= 5 and "finished" not in where[:10]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_log(run)] == list(range(1, STEPS + 1))  # each step exactly once
    assert max_diff(adapter(run), adapter(reference)) <= 1e-6


def test_a_corrupted_newest_checkpoint_falls_back_and_says_so(reference, tiny_base, tmp_path):
    run = tmp_path / "corrupt"
    cmd = [*train_cmd(tiny_base, run, *RUN), "--resume", "latest"]
    rng = random.Random(7)
    for _ in range(3):
        kill_once(cmd, run, rng, inside_write=False)
    newest = sorted((run / "checkpoints").glob("step-*[0-9]"))[-1]
    victim = newest / "optimizer.bin"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipping a broken checkpoint: {victim}" in done.stderr and "falling back to" in done.stderr
    assert [r["step"] for r in read_log(run)] == list(range(1, STEPS + 1))
    assert max_diff(adapter(run), adapter(reference)) <= 1e-6


def test_a_stopped_rank_ends_the_run_naming_the_collective(tiny_base, tmp_path):
    """SIGSTOP on one of two gloo ranks: the other fails after train.collective_timeout_s, saying
    which collective it waited for (before: blocked for the 600 s process-group default, silently)."""
    out = tmp_path / "run"
    cmd, env = launch_cmd("ddp", tmp_path, "-m", "mst5_dist.train", "--config", str(REPO / "configs" / "tiny.yaml"),
                          f"model.name_or_path={tiny_base}", f"train.output_dir={out}", "train.progress_bar=false",
                          "train.report_to=[]", "train.epochs=40", "train.collective_timeout_s=20")  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = None
    try:
        deadline = time.time() + 300
        while logged(out) < 2 and time.time() < deadline:
            time.sleep(0.1)
        workers = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if "mst5_dist.train" in " ".join(p.cmdline())
        ]
        rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
        assert rank1, [p.cmdline() for p in workers]
        stopped = rank1[0]
        stopped.send_signal(signal.SIGSTOP)
        t0 = time.time()
        _, err = proc.communicate(timeout=240)
        waited = time.time() - t0
    finally:
        if stopped is not None and stopped.is_running():
            stopped.send_signal(signal.SIGCONT)
            stopped.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "no answer from the other ranks within train.collective_timeout_s=20 s" in err, err[-3000:]
    assert waited < 150, waited
    print(f"stopped rank detected after {waited:.0f} s: " + next(x for x in err.splitlines() if "no answer" in x))
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["world_size"] == 2
