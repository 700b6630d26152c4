"""``eval.keep_best``: the trainer keeps the model of its best periodic STS evaluation as ``best/``."""

import json
import math
import os
import subprocess

import pytest
import torch
from conftest import REPO, mst5_cmd, read_log
from safetensors.torch import load_file

from mst5_dist.config import ConfigError, load_config
from mst5_dist.evaluate.sts import evaluate_sts, read_stsb_csv
from mst5_dist.model import SentenceEncoder
from mst5_dist.training.evaluation import previous_best

TINY = str(REPO / "configs" / "tiny.yaml")


def test_best_checkpoint_is_the_argmax_and_reproduces_its_score(tiny_base, shared_data, tmp_path):
    sts = tmp_path / "sts-dev-300.csv"  # the first 300 real German STS-B dev pairs: a quick evaluation
    sts.write_text("".join((shared_data / "stsb-multi-mt" / "stsb-de-dev.csv").open().readlines()[:300]))
    out = tmp_path / "run"
    # lr 2e-2 for 12 steps: on this CPU the German score improves at steps 2, 4, 8 and 10, dips at
    # 6 and peaks at 10 (by 0.9 points over step 12), so best/ is replaced during the run, an
    # evaluation that does not improve is not saved, and best/ differs from final/. (Such a
    # trajectory is a property of the data order and numerics, not of keep_best: re-tune it when
    # they change; lr 1e-3 now rises to the end.)
    proc = subprocess.run(
        mst5_cmd(
            "train", "--config", TINY, f"model.name_or_path={tiny_base}", f"train.output_dir={out}",
            "train.max_steps=12", "optim.lr=2e-2", f"eval.sts_path={sts}", "eval.every_steps=2",
            "eval.keep_best=true", "train.save_every=null", "train.progress_bar=false", "train.report_to=[]",
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # 2 shared cores: one thread is faster than two fighting
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    evals = [(r["step"], r["eval_sts_spearman"]) for r in log if "eval_sts_spearman" in r]
    assert [s for s, _ in evals] == [2, 4, 6, 8, 10, 12]
    best_step, best_value = max(evals, key=lambda e: e[1])  # first maximum, like a strict ">" keeps it

    info = json.loads((out / "best" / "best.json").read_text())
    assert info == {"step": best_step, "metric": "sts_spearman", "log_key": "eval_sts_spearman", "value": best_value}
    # The log marks every save: exactly the evaluations that beat all earlier ones.
    running, improved = -math.inf, []
    for step, value in evals:
        if value > running:
            running, improved = value, [*improved, step]
    assert [r["step"] for r in log if r.get("saved_best")] == improved
    assert len(improved) >= 2 and best_step < 12  # replaced at least once; not simply the last model

    best, final = out / "best", out / "final"
    assert {p.name for p in best.iterdir()} == {p.name for p in final.iterdir()} | {"best.json"}
    assert not list(out.glob("*.tmp"))
    assert load_config(best / "training_config.yaml") == load_config(out / "config.yaml")
    a, b = load_file(best / "adapter_model.safetensors"), load_file(final / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)

    encoder = SentenceEncoder.from_pretrained(best)
    assert encoder.has_adapter
    score = evaluate_sts(encoder, read_stsb_csv(sts), batch_size=64)
    assert abs(score - best_value) <= 1e-4, (score, best_value)


@pytest.mark.unit
def test_keep_best_settings_are_checked(tiny_base, tmp_path, capsys):
    from mst5_dist.cli import main

    with pytest.raises(ConfigError, match=r"eval\.best_metric: expected one of \['sts_spearman'\], got 'loss'"):
        load_config(None, ["eval.best_metric=loss"])
    out = tmp_path / "run"
    args = ["train", "--config", TINY, f"model.name_or_path={tiny_base}", f"train.output_dir={out}",
            "eval.keep_best=true", "train.report_to=[]"]  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mst5 train: error: eval.keep_best=true needs eval.sts_path (the evaluation whose best model it keeps)"
    )
    assert not out.exists()  # refused before anything is written


@pytest.mark.unit
def test_resumed_run_must_beat_the_saved_best(tmp_path):
    cfg = load_config(None, ["eval.keep_best=true", "eval.sts_path=x.csv"])
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 6, "metric": "sts_spearman", "value": 55.5}))
    assert previous_best(tmp_path, cfg, step=8) == 55.5  # resumed at step 8: beat the kept one
    assert previous_best(tmp_path, cfg, step=0) == -math.inf  # a fresh run replaces an old best/
    off = load_config(None, ["eval.sts_path=x.csv"])
    assert previous_best(tmp_path, off, step=8) == -math.inf
