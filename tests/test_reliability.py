"""No silent wrong state, no lost work, no code run from files, and the exit-code contract kept for
every bad input. Each test is the regression test of one numbered finding of the reliability issue;
each positive check stands beside a negative control."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, TINY_CONFIG, NaNAtStep3, last_line, read_log, tiny_args, train_cmd
from safetensors.torch import load_file

from mst5_dist.cli import main
from mst5_dist.config import ConfigError, load_config


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------ the exit-code contract (12, 2, 10)

BAD_SETTINGS = [  # (override, what the one line must say); each fails before anything is loaded
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps: must be >= 1, got 0"),
    ("train.max_steps=0", "train.max_steps: must be >= 1, got 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints: must be >= 1, got 0"),
    ("train.save_every=-1", "train.save_every: must be >= 0, got -1"),
    ("model.max_seq_length=0", "model.max_seq_length: must be >= 1, got 0"),
    ("model.max_seq_length=-5", "model.max_seq_length: must be >= 1, got -5"),
    ("optim.lr=-1e-4", "optim.lr: must be a finite number > 0, got -0.0001"),
    ("optim.lr=.nan", "optim.lr: must be a finite number > 0, got nan"),
    ("lora.r=0", "lora.r: must be >= 1, got 0"),
    ("loss.temperature=0", "loss.temperature: must be a finite number > 0, got 0.0"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("override", "message"), BAD_SETTINGS)
def test_bad_settings_exit_2_naming_the_command_line(override, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args("runs/none", out, override)) == 2
    assert last_line(capsys) == f"mst5 train: error: command line: override '{override}': {message}"
    assert not out.exists()


@pytest.mark.parametrize(("value", "checkpoints"), [("0", [3]), ("null", [3]), ("2", [2, 3])])
def test_save_every_zero_or_null_means_only_at_the_end(value, checkpoints, tiny_base, tmp_path):
    """The control beside ``train.save_every=-1``: configs in use write 0 for "no periodic checkpoints",
    and a 3-step run with 0 (or null) writes only the last step's checkpoint and final/ (2: step 2 too)."""
    assert load_config(TINY_CONFIG, [f"train.save_every={value}"]).train.save_every == (
        None if value == "null" else int(value)
    )
    out = tmp_path / "run"
    assert main(tiny_args(tiny_base, out, "train.max_steps=3", f"train.save_every={value}")) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in checkpoints]
    assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.unit
def test_a_bad_value_in_the_file_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  batch_size: 0\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert last_line(capsys) == f"mst5 train: error: {cfg}: train.batch_size: must be >= 1, got 0"
    # negative control: the same file with a good value gets past the config
    cfg.write_text("train:\n  batch_size: 8\n")
    assert load_config(cfg).train.batch_size == 8


@pytest.mark.unit
def test_a_batch_that_does_not_split_over_the_ranks_fails_before_any_process_group(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")  # what `accelerate launch --num_processes 3` sets
    start = time.perf_counter()
    assert main(tiny_args("runs/none", tmp_path / "run", "train.batch_size=32")) == 2
    assert "train.batch_size=32 does not divide by the 3 processes" in last_line(capsys)
    assert time.perf_counter() - start < 10  # no rendezvous was attempted
    monkeypatch.setenv("WORLD_SIZE", "1")


def _broken_models(tiny_base: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """(folder, what the error line must contain) per broken-model case."""
    cases = {}
    truncated = tmp / "truncated"
    shutil.copytree(tiny_base, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["truncated weights"] = (truncated, f"{weights}: cannot load the model weights")
    random_bytes = tmp / "random"
    shutil.copytree(tiny_base, random_bytes)
    (random_bytes / "model.safetensors").write_bytes(os.urandom(4096))
    cases["random weights"] = (random_bytes, f"{random_bytes / 'model.safetensors'}: cannot load the model weights")
    no_tokenizer = tmp / "no-tokenizer"
    shutil.copytree(tiny_base, no_tokenizer)
    for f in [no_tokenizer / "spiece.model", *no_tokenizer.glob("tokenizer*.json")]:
        f.unlink(missing_ok=True)
    cases["no tokenizer files (1)"] = (no_tokenizer, "its tokenizer maps")
    cases["nonexistent model"] = (tmp / "nope", f"{tmp / 'nope'}: not a model folder nor a reachable model name")
    return cases


def test_broken_or_missing_models_exit_2_naming_the_file(tiny_base, tmp_path, capsys):
    for case, (folder, message) in _broken_models(tiny_base, tmp_path).items():
        out = tmp_path / f"run-{case.replace(' ', '-')}"
        assert main(tiny_args(folder, out, "train.max_steps=1")) == 2, case
        line = last_line(capsys)
        assert line.startswith("mst5 train: error: ") and message in line, (case, line)
        assert not out.exists(), case  # nothing written, in particular no final/ with an <unk> tokenizer
    # negative control: the intact base trains
    assert main(tiny_args(tiny_base, tmp_path / "good", "train.max_steps=1")) == 0


@pytest.mark.unit
def test_a_data_path_that_is_a_folder_exits_2(tiny_base, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    assert main(tiny_args(tiny_base, tmp_path / "run", f"data.paths=[{folder}]")) == 2
    assert last_line(capsys) == (
        f"mst5 train: error: {folder}: not a file (a folder? data.paths lists the input files)"
    )


@pytest.mark.unit
def test_embed_input_errors_name_file_and_line_and_are_checked_first(tmp_path, capsys):
    export = tmp_path / "no-export"  # never reached: every check below fails before the model loads
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    args = ["embed", "--model", str(export), "--output", str(tmp_path / "e.npy")]
    assert main([*args, "--input", str(bad)]) == 2
    assert last_line(capsys) == f"mst5 embed: error: {bad}:2: bytes that are not valid UTF-8 (at byte 0)"
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"text": \n')
    assert main([*args, "--input", str(jsonl)]) == 2
    assert last_line(capsys).startswith(f"mst5 embed: error: {jsonl}:2: invalid JSON")
    good = tmp_path / "good.txt"
    good.write_text("a\nb\n")
    missing = tmp_path / "no-such-folder" / "e.npy"
    assert main(["embed", "--model", str(export), "--input", str(good), "--output", str(missing)]) == 2
    line = last_line(capsys)
    assert "does not exist" in line and str(missing.parent) in line


# ------------------------------------------------------------------ NaN / inf (2)


def test_a_non_finite_loss_stops_the_run_before_writing_that_step(tiny_base, tmp_path, capsys):
    from mst5_dist import objectives

    objectives.register("nan-at-3")(NaNAtStep3)
    try:
        out = tmp_path / "run"
        code = main(tiny_args(tiny_base, out, "loss.objective=nan-at-3", "train.max_steps=6", "train.save_every=2"))
    finally:
        objectives.unregister("nan-at-3")
    assert code == 1
    line = last_line(capsys)
    assert line.startswith("mst5 train: error: step 3: loss = nan") and "non-finite" in line
    assert [r["step"] for r in read_log(out)] == [1, 2]  # step 3 was not logged
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # nor checkpointed
    assert not (out / "final").exists()
    # negative control: the same run with the plain objective finishes
    assert main(tiny_args(tiny_base, tmp_path / "ok", "loss.hard_negatives=false", "train.max_steps=3")) == 0


# ------------------------------------------------------------------ checkpoints: manifest, fallback, safety (3, 11)


@pytest.fixture(scope="module")
def checkpointed(tiny_run) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 (the reference for resumed runs)."""
    return tiny_run


def _copy_without_final(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    shutil.rmtree(to / "final")
    return to


@pytest.mark.unit
def test_every_checkpoint_has_a_manifest_and_no_pickle_of_ours(checkpointed):
    for ckpt in sorted((checkpointed / "checkpoints").iterdir()):
        manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
        files = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {"manifest.json"}
        assert set(manifest) == files and {"trainer_state.json", "scheduler.json", "rng_state_0.safetensors"} <= files
        assert not list(ckpt.glob("*.pkl"))  # scheduler as JSON, RNG as safetensors
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["fingerprint"]["data.bucket_batches"] == 2 and state["fingerprint"]["lora.r"] == 8


CORRUPTIONS = {  # file of the newest checkpoint -> how it is damaged
    "rng_state_0.safetensors": lambda p: p.write_bytes(p.read_bytes()[:-100]),  # truncated
    "optimizer.bin": lambda p: p.write_bytes(p.read_bytes()[:50]),  # truncated
    "model.safetensors": lambda p: p.write_bytes(p.read_bytes()[:-64] + b"\x7f" * 64),  # overwritten bytes
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_resume_latest_skips_a_corrupted_checkpoint_and_says_so(name, checkpointed, tiny_base, tmp_path, capsys):
    run = _copy_without_final(checkpointed, tmp_path / "run")
    CORRUPTIONS[name](run / "checkpoints" / "step-00000004" / name)
    code = main([*tiny_args(tiny_base, run, "train.max_steps=4", "train.save_every=2"), "--resume", "latest"])
    err = capsys.readouterr().err
    assert code == 0
    assert f"skipping a broken checkpoint: {run / 'checkpoints' / 'step-00000004' / name}" in err
    assert f"falling back to {run / 'checkpoints' / 'step-00000002'}" in err
    assert max_diff(adapter(run), adapter(checkpointed)) <= 1e-6  # the run from step 2 ends the same
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]


def test_an_explicit_broken_checkpoint_is_an_error_and_an_intact_one_resumes(checkpointed, tiny_base, tmp_path, capsys):
    run = _copy_without_final(checkpointed, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-00000002"
    code = main([*tiny_args(tiny_base, run, "train.max_steps=4"), "--resume", str(ckpt)])
    assert code == 0 and "resumed from" in capsys.readouterr().err  # negative control: intact
    broken = _copy_without_final(checkpointed, tmp_path / "broken")
    CORRUPTIONS["optimizer.bin"](broken / "checkpoints" / "step-00000002" / "optimizer.bin")
    code = main(
        [*tiny_args(tiny_base, broken, "train.max_steps=4"), "--resume", str(broken / "checkpoints" / "step-00000002")]
    )
    assert code == 2
    line = last_line(capsys)
    assert "checkpoint does not verify" in line and "optimizer.bin" in line


PAYLOAD = """
import os, pickle
class Payload:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
with open({target!r}, "wb") as f:
    pickle.dump({{"state": Payload()}}, f)
"""


def _plant(target: Path, marker: Path) -> None:
    subprocess.run([sys.executable, "-c", PAYLOAD.format(marker=marker, target=str(target))], check=True)


def test_a_planted_pickle_never_runs(checkpointed, tiny_base, tmp_path, capsys):
    from mst5_dist.files import write_manifest

    marker = tmp_path / "PWNED"
    # 1. an extra file Accelerate would unpickle with weights_only=False (its custom-state file)
    run = _copy_without_final(checkpointed, tmp_path / "a")
    _plant(run / "checkpoints" / "step-00000004" / "custom_checkpoint_0.pkl", marker)
    assert (
        main([*tiny_args(tiny_base, run, "train.max_steps=4"), "--resume", str(run / "checkpoints" / "step-00000004")])
        == 2
    )
    assert "custom_checkpoint_0.pkl: not in manifest.json" in last_line(capsys)
    # 2. an attacker who also rewrites the manifest: the payload in optimizer.bin is refused on load
    run = _copy_without_final(checkpointed, tmp_path / "b")
    ckpt = run / "checkpoints" / "step-00000004"
    _plant(ckpt / "optimizer.bin", marker)
    write_manifest(ckpt, "manifest.json")
    assert main([*tiny_args(tiny_base, run, "train.max_steps=4"), "--resume", "latest"]) == 2
    assert "refused to load" in last_line(capsys)
    assert not marker.exists()
    # negative control: the payload does run when unpickled plainly (so the test could fail)
    import pickle

    with (ckpt / "optimizer.bin").open("rb") as f:
        pickle.load(f)
    assert marker.exists()


# ------------------------------------------------------------------ resume fingerprint (4) and the log (5)


def test_resume_refuses_settings_that_change_the_run(checkpointed, tiny_base, tmp_path, capsys):
    run = _copy_without_final(checkpointed, tmp_path / "run")
    other_base = tmp_path / "other-base"
    from mst5_dist.tiny_default import build_tiny_mt5

    build_tiny_mt5(other_base, seed=1)
    for override, key in [(f"model.name_or_path={other_base}", "model.name_or_path"),
                          ("data.bucket_batches=3", "data.bucket_batches"), ("lora.r=4", "lora.r"),
                          ("model.max_seq_length=32", "model.max_seq_length"), ("data.max_rows=200", "data.max_rows")]:  # fmt: skip
        args = [*tiny_args(tiny_base, run, "train.max_steps=4"), override, "--resume", "latest"]
        assert main(args) == 2, override
        line = last_line(capsys)
        assert "cannot resume from" in line and f"{key} was" in line, line
    # negative control: changing only the number of steps is a legitimate continuation
    assert main([*tiny_args(tiny_base, run, "train.max_steps=5"), "--resume", "latest"]) == 0


def _as_written_by_an_older_version(ckpt: Path) -> None:
    """What a checkpoint written before loss.pivot_model entered the fingerprint (and before
    data.streaming went and the modular section left the run config) holds."""
    import yaml

    from mst5_dist.files import write_manifest
    from mst5_dist.layout import CHECKPOINT_MANIFEST

    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["fingerprint"]["loss.pivot_model"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    saved["data"]["streaming"] = False
    saved["modular"] = {"languages": [], "pivot_language": "en", "stsb_dir": "../shared/data/stsb-multi-mt",
                        "min_score": 4.0, "parallel_max_rows": None, "language_overrides": [], "cla_overrides": []}  # fmt: skip
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    write_manifest(ckpt, CHECKPOINT_MANIFEST)


def test_a_checkpoint_written_before_a_key_entered_the_fingerprint_resumes(checkpointed, tmp_path, capsys):
    assert (
        "loss.pivot_model"
        in json.loads((checkpointed / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())[
            "fingerprint"
        ]
    )
    run = _copy_without_final(checkpointed, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-00000004"
    _as_written_by_an_older_version(ckpt)
    resume = ["train", "--config", str(ckpt / "config.yaml"), f"train.output_dir={run}", "--resume", "latest"]
    # the missing key is compared with what the checkpoint's config.yaml recorded ('')
    assert main([*resume, f"loss.pivot_model={tmp_path}"]) == 2
    assert f"loss.pivot_model was '', now '{tmp_path}'" in last_line(capsys)
    assert main(resume) == 0  # its old config.yaml (data.streaming, modular:) loads; the run finishes
    assert max_diff(adapter(run), adapter(checkpointed)) <= 1e-6


def test_a_fingerprint_key_missing_everywhere_is_compared_with_its_default(tmp_path):
    from mst5_dist.training.checkpoint import check_resume

    check_resume(load_config(None), tmp_path, {"fingerprint": {}})  # no config.yaml either: the defaults
    with pytest.raises(ConfigError, match=r"loss\.pivot_model was '', now 'elsewhere'"):
        check_resume(load_config(None, ["loss.pivot_model=elsewhere"]), tmp_path, {"fingerprint": {}})


def test_resume_after_a_crash_keeps_each_step_once_in_the_log(checkpointed, tiny_base, tmp_path):
    run = _copy_without_final(checkpointed, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step-00000004")  # crashed after logging steps 3 and 4
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    assert main([*tiny_args(tiny_base, run, "train.max_steps=4", "train.save_every=2"), "--resume", "latest"]) == 0
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]  # not 1, 2, 3, 4, 3, 4
    assert max_diff(adapter(run), adapter(checkpointed)) <= 1e-6


# ------------------------------------------------------------------ lost work (9)


def _wait_for_log(run: Path, lines: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    log = run / "train_log.jsonl"
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= lines):
        time.sleep(0.1)
    assert log.exists(), f"{log} never appeared"


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tiny_base, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_cmd(tiny_base, out, *FAST, "train.epochs=40", "train.save_every=2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for_log(out, 2)
        second = subprocess.run(
            [*train_cmd(tiny_base, out, *FAST), "--resume", "latest"], capture_output=True, text=True
        )
        assert second.returncode == 2
        assert f"is being written by another mst5 process (pid {first.pid})" in second.stderr.strip().splitlines()[-1]
        first.send_signal(signal.SIGKILL)
        first.wait(60)
        # The kernel released the lock with the process: the same command now resumes.
        third = subprocess.run([*train_cmd(tiny_base, out, *FAST, "train.epochs=40", "train.max_steps=4",
                                           "train.save_every=2"), "--resume", "latest"], capture_output=True, text=True)  # fmt: skip
        assert third.returncode == 0, third.stderr[-2000:]
        steps = [r["step"] for r in read_log(out)]
        assert steps == list(range(1, len(steps) + 1)) and (out / "final").is_dir()  # each step once
    finally:
        first.kill()


@pytest.mark.unit
def test_a_fresh_run_does_not_write_over_another_run(checkpointed, tiny_base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpointed, run)
    assert main(tiny_args(tiny_base, run, "train.max_steps=4")) == 2
    line = last_line(capsys)
    assert "holds a run" in line and "--resume latest" in line
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]  # untouched


# ------------------------------------------------------------------ signals (13)


def _start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_stop_signal_during_start_up_is_a_clean_stop(tiny_base, tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = _start(train_cmd(tiny_base, tmp_path / f"run-{sig.name}", *FAST))
        time.sleep(1.5)  # torch is still importing: before, this died of the signal (143 / -2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 75, (sig, err[-2000:])
        # Honoured at the first step boundary, like any stop: that step's checkpoint keeps it.
        assert err.strip().splitlines()[-1].startswith("mst5 train: interrupted: stopped by signal at step 1;")
        assert "Traceback" not in err and (tmp_path / f"run-{sig.name}" / "checkpoints" / "step-00000001").is_dir()


def _wait_for_text(path: Path, text: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not (path.exists() and path.read_text() == text):
        time.sleep(0.02)
    assert path.read_text() == text, f"{path}: {path.read_text()!r}, expected {text!r}"


def test_a_second_ctrl_c_aborts_with_one_line(tiny_base, tmp_path):
    """The second Ctrl-C reaches the run while it is still going (held in step 3 until the first is
    noted: tests/dist_scripts/held_train.py): exit 130, one line, the step-2 checkpoint kept whole."""
    out, marker = tmp_path / "run", tmp_path / "held"
    script = str(REPO / "tests" / "dist_scripts" / "held_train.py")
    args = train_cmd(tiny_base, out, *FAST, "loss.objective=held", "train.save_every=1")[3:]
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "MST5_HELD_MARKER": str(marker)})  # fmt: skip
    try:
        _wait_for_text(marker, "waiting")
        proc.send_signal(signal.SIGINT)
        _wait_for_text(marker, "stop noted")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "mst5 train: aborted (second interrupt); last complete checkpoint kept"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert (out / "checkpoints" / "step-00000002" / "manifest.json").is_file() and not (out / "final").exists()


def test_a_late_second_ctrl_c_does_not_spoil_the_exit(tiny_base, tmp_path):
    out = tmp_path / "run"
    proc = _start(train_cmd(tiny_base, out, *FAST, "train.epochs=40"))
    _wait_for_log(out, 2)
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("step-*[0-9]")):
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # while the process is reporting and tearing down
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "Traceback" not in err and "rerun with --resume latest" in err.strip().splitlines()[-1]


# ------------------------------------------------------------------ merged adapter stacks (6), fingerprints (7, 8)

TEXTS = ["A man is playing a guitar.", "Ein Mann spielt Gitarre.", "Мужчина играет на гитаре.", "一个男人在弹吉他。"]


@pytest.fixture(scope="module")
def stacked(tiny_base, tmp_path_factory) -> dict[str, Path]:
    """A language module L (LoRA on the base), a LoRA C trained on top of it (L merged into the
    base), and a full fine-tune F on top of it: the three ways a stack is saved."""
    root = tmp_path_factory.mktemp("stack")
    runs = {"L": root / "L", "C": root / "C", "F": root / "F"}
    assert main(tiny_args(tiny_base, runs["L"], "train.max_steps=2", "optim.lr=5e-2")) == 0
    on_l = f"model.merge_adapters=[{runs['L'] / 'final'}]"
    assert main(tiny_args(tiny_base, runs["C"], "train.max_steps=2", "optim.lr=5e-2", on_l)) == 0
    assert main(tiny_args(tiny_base, runs["F"], "train.max_steps=1", "lora.preset=full", on_l)) == 0
    return runs


def _embed(folder: Path) -> torch.Tensor:
    from mst5_dist.model import SentenceEncoder

    return SentenceEncoder.from_pretrained(folder).encode(TEXTS)


def test_a_stacked_model_reloads_from_any_directory(stacked, tmp_path, monkeypatch):
    from mst5_dist.errors import ModelError

    c = stacked["C"] / "final"
    reference = _embed(c)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # before, the stack was recorded relative to the working directory
    assert torch.allclose(_embed(c), reference, atol=1e-6)
    moved = tmp_path / "copied-alone"
    shutil.copytree(c, moved)  # the relative path breaks; the absolute one (checked by sha256) holds
    assert torch.allclose(_embed(moved), reference, atol=1e-6)
    # negative control: without its language module the model cannot be rebuilt, and says so
    shutil.move(stacked["L"], tmp_path / "L-gone")
    try:
        with pytest.raises(ModelError, match="it was trained on top of is not found"):
            _embed(moved)
    finally:
        shutil.move(tmp_path / "L-gone", stacked["L"])


def test_merged_weights_are_not_merged_twice(stacked, tiny_base, tmp_path, monkeypatch):
    from peft import PeftModel

    from mst5_dist.export.pipeline import export_model
    from mst5_dist.model import SentenceEncoder, load_backbone

    l_final = stacked["L"] / "final"
    for name, folder in [("full fine-tune on the stack", stacked["F"] / "final"), ("merged export", None)]:
        if folder is None:
            folder = tmp_path / "export"
            export_model(stacked["C"], folder)
        meta = json.loads((folder / "sentence_encoder.json").read_text())
        assert "merged_adapters" not in meta and meta["merged_into_weights"][0]["absolute"] == str(l_final), name
        monkeypatch.chdir(tmp_path)
        loaded = _embed(folder)
        plain = SentenceEncoder(load_backbone(str(folder)), SentenceEncoder.from_pretrained(folder).tokenizer)
        assert torch.allclose(loaded, plain.encode(TEXTS), atol=1e-6), name  # the weights as saved, nothing added
        # negative control: merging L once more (what happened before) moves the embeddings
        twice = PeftModel.from_pretrained(load_backbone(str(folder)), str(l_final)).merge_and_unload()
        assert not torch.allclose(SentenceEncoder(twice, plain.tokenizer).encode(TEXTS), loaded, atol=1e-4), name
    assert torch.allclose(_embed(tmp_path / "export"), _embed(stacked["C"] / "final"), atol=1e-5)


@pytest.mark.unit
def test_large_files_are_fingerprinted_in_full(tmp_path, monkeypatch):
    import hashlib

    from mst5_dist.files import fingerprint as folder_fingerprint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    big = model / "model.safetensors"
    big.write_bytes(os.urandom(70 << 20))
    before = folder_fingerprint(model)
    assert folder_fingerprint(model) == before  # stable (and served from the digest memo)
    data = bytearray(big.read_bytes())
    data[35 << 20] ^= 0xFF  # one byte in the middle
    big.write_bytes(bytes(data))
    assert folder_fingerprint(model) != before

    # negative control: the old size + head + tail digest did not see that byte
    def ends(b: bytes) -> str:
        return hashlib.sha256(str(len(b)).encode() + b[: 4 << 20] + b[-(4 << 20) :]).hexdigest()

    data[35 << 20] ^= 0xFF
    assert ends(bytes(data)) == ends(big.read_bytes())


@pytest.mark.unit
def test_embed_refuses_a_graph_changed_after_export(tiny_onnx, tmp_path, capsys):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    export = tmp_path / "export"
    shutil.copytree(tiny_onnx, export)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    cmd = ["embed", "--model", str(export), "--input", str(texts), "--output", str(tmp_path / "e.npy")]
    assert main(cmd) == 0  # negative control: the untouched export embeds
    graph = export / "onnx" / "model.onnx"
    model = onnx.load(str(graph))
    init = next(t for t in model.graph.initializer if numpy_helper.to_array(t).size > 100)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    onnx.save(model, str(graph))
    assert main(cmd) == 2
    line = last_line(capsys)
    assert line.startswith(f"mst5 embed: error: {graph}: sha256") and "changed after export" in line


@pytest.mark.unit
def test_overrides_may_follow_resume(tmp_path, capsys):
    # The override after --resume reaches the config (its bad value is reported, by name).
    assert main(["train", "--config", TINY_CONFIG, "--resume", "latest", "train.batch_size=0"]) == 2
    assert "command line: override 'train.batch_size=0'" in last_line(capsys)
    with pytest.raises(SystemExit):  # still strict: an unknown option is an argparse error (exit 2)
        main(["train", "--config", TINY_CONFIG, "--resume", "latest", "--nonsense"])


def test_a_retrained_language_module_cannot_serve_stale_cached_vectors(stacked, tmp_path):
    from safetensors.torch import save_file

    from mst5_dist.errors import ModelError
    from mst5_dist.evaluate.loader import load_embedder

    root = tmp_path / "copy"
    shutil.copytree(stacked["L"].parent, root)
    c_final, l_weights = root / "C" / "final", root / "L" / "final" / "adapter_model.safetensors"
    # In the copy, both recorded paths (relative and absolute) lead to the copied L, as for a run
    # folder whose L is retrained in place.
    meta_file = c_final / "sentence_encoder.json"
    meta = json.loads(meta_file.read_text())
    meta["merged_adapters"][0]["absolute"] = str(root / "L" / "final")
    meta_file.write_text(json.dumps(meta))
    cache = tmp_path / "cache"
    first = load_embedder(c_final, cache_dir=cache, progress=False)
    first.encode(TEXTS)
    again = load_embedder(c_final, cache_dir=cache, progress=False)
    again.encode(TEXTS)
    assert again.cache.hits == 1  # negative control: nothing changed, the cache serves it
    retrained = {k: v + 0.01 for k, v in load_file(l_weights).items()}
    save_file(retrained, str(l_weights), metadata={"format": "pt"})  # L retrained in place
    with pytest.raises(ModelError, match="it was trained on top of is not found with the same weights"):
        load_embedder(c_final, cache_dir=cache, progress=False)
