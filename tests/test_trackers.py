"""Runs tracked where teams look: ``train.report_to`` through Accelerate's trackers. A real run logs
to a local MLflow store and TensorBoard; the test reads both back (the run config as
hyperparameters, every train_log.jsonl field as a metric at its step). The run also shows that
``final/`` and every checkpoint say which versions made them (``versions.json``)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml
from conftest import TINY_CONFIG, mst5_cmd, read_log, train_cmd

from mst5_dist.config import ConfigError, flat_config, load_config
from mst5_dist.versions import VERSIONS_FILE, package_versions


@pytest.fixture(scope="module")
def tracked_run(tiny_base, tmp_path_factory):
    """(output dir, MLflow store URI) of a 3-step tiny run logging to TensorBoard and MLflow."""
    tmp = tmp_path_factory.mktemp("tracked")
    out, store = tmp / "tiny-tracked", (tmp / "mlruns").as_uri()
    # MLflow 3 keeps its file store only on request (a database or a server is what teams run).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "true"}
    cmd = train_cmd(tiny_base, out, "train.max_steps=3", "train.batch_size=16", "train.save_every=2",
                    "train.progress_bar=false", "train.report_to=[tensorboard,mlflow]")  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, store


def numeric_fields(record: dict) -> list[str]:
    return [k for k, v in record.items() if isinstance(v, (int, float))]


def test_mlflow_reads_back_params_and_every_logged_metric(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    out, store = tracked_run
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("mst5")  # train.tracker_project's default
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == out.name and run.info.status == "FINISHED"
    hparams = flat_config(load_config(out / "config.yaml"))
    assert run.data.params == {k: str(v) for k, v in hparams.items()}
    assert run.data.params["train.report_to"] == '["tensorboard", "mlflow"]'
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    fields = numeric_fields(log[0])
    assert {"loss", "grad_norm", "lr", "sentences_per_s", "tokens_per_s", "padding_fraction"} <= set(fields)
    for field in fields:
        history = sorted(client.get_metric_history(run.info.run_id, field), key=lambda m: m.step)
        assert [m.step for m in history] == [r["step"] for r in log], field
        assert [m.value for m in history] == pytest.approx([float(r[field]) for r in log], rel=1e-12), field


def test_tensorboard_reads_back_hparams_and_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tracked_run
    board = out / "tensorboard"  # the contract's folder, whatever train.tracker_project says
    events = EventAccumulator(str(board))
    events.Reload()
    log = read_log(out)
    for field in ("loss", "grad_norm", "lr", "tokens_per_s"):
        scalars = events.Scalars(field)
        assert [s.step for s in scalars] == [r["step"] for r in log]
        assert [s.value for s in scalars] == pytest.approx([r[field] for r in log], rel=1e-6)
    (hparams_file,) = board.glob("*/hparams.yml")
    assert yaml.safe_load(hparams_file.read_text()) == flat_config(load_config(out / "config.yaml"))


def test_final_and_every_checkpoint_record_versions(tracked_run):
    out, _ = tracked_run
    expected = package_versions()
    assert {"python", "torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "onnxruntime",
            "mst5-dist"} <= expected.keys()  # fmt: skip
    assert expected["torch"] and expected["peft"] and expected["transformers"]
    folders = [out / "final", *sorted((out / "checkpoints").glob("step-*"))]
    assert [f.name for f in folders] == ["final", "step-00000002", "step-00000003"]
    for folder in folders:
        assert json.loads((folder / VERSIONS_FILE).read_text()) == expected, folder


@pytest.mark.unit
def test_missing_tracker_package_is_a_config_error(tiny_base, tmp_path, monkeypatch, capsys):
    """A tracker whose package is absent fails before anything is written (Accelerate alone would
    drop it and log nowhere): exit 2, one line naming the field."""
    from mst5_dist.cli import main
    from mst5_dist.training import builders

    monkeypatch.setitem(builders.TRACKER_PACKAGES, "wandb", "no_such_tracker_package")
    out = tmp_path / "run"
    args = ["train", "--config", TINY_CONFIG, f"model.name_or_path={tiny_base}", f"train.output_dir={out}"]
    assert main([*args, "train.report_to=[wandb]"]) == 2
    assert "train.report_to: wandb not installed" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], ["tensorboard"]),  # the default
        (["train.report_to=[]"], []),
        (["train.report_to=[mlflow,tensorboard]"], ["mlflow", "tensorboard"]),
        (["train.tensorboard=false"], []),  # a config saved before report_to existed still loads
        (["train.tensorboard=true"], ["tensorboard"]),
    ],
)
def test_report_to_values(overrides, expected):
    assert load_config(TINY_CONFIG, overrides).train.report_to == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.report_to=[neptune]"], "train.report_to[0]: expected one of"),
        (["train.report_to=tensorboard"], "train.report_to: expected a list"),
        (["train.tensorboard=false", "train.report_to=[]"], "both set"),
    ],
)
def test_bad_report_to_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TINY_CONFIG, overrides)


def test_cli_refuses_unknown_tracker(tmp_path):
    proc = subprocess.run(mst5_cmd("train", "--config", TINY_CONFIG, "train.report_to=[neptune]"),
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "train.report_to[0]" in proc.stderr.strip().splitlines()[-1]
