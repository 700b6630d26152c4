"""`mst5 sweep`: real tiny training runs at three learning rates, each scored by a real `mst5 eval`,
plus mt5-small..xxl run folders (configs written by save_config, results.json in the suite's layout)
for the model-size axis; the table, sweep.json, the PNG and the errors that name the run folder."""

import argparse
import copy
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, read_log

from mst5_dist.config import load_config, save_config
from mst5_dist.evaluate.suite import add_eval_arguments, run_evaluation
from mst5_dist.evaluate.sweep import SweepError, parse_metrics, run_sweep

TINY = str(REPO / "configs" / "tiny.yaml")
LRS = [2e-2, 5e-4, 3e-3]  # deliberately unsorted
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The published mT5 shapes (d_model, d_ff, layers, heads; d_kv 64, vocab 250112, gated GELU).
MT5 = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
       "xl": (2048, 5120, 24, 32), "xxl": (4096, 10240, 24, 64)}  # fmt: skip


def mt5_encoder_params(d, ff, layers, heads):
    """By hand: embedding + per layer (q,k,v,o + wi_0,wi_1,wo + 2 RMSNorm) + relative bias + final norm."""
    inner = heads * 64
    return 250112 * d + layers * (4 * d * inner + 3 * d * ff + 2 * d) + 32 * heads + d


def eval_into(run, shared_data):
    """A real `mst5 eval` of the run, written where the sweep looks: RUN/results.json."""
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(
        ["--model", str(run), "--data-dir", str(shared_data), "--output", str(run / "results.json"),
         "--tasks", "stsb,sts17", "--stsb-langs", "en", "--sts17-tracks", "en-en,ar-en", "--limit", "100",
         "--no-progress"]
    )  # fmt: skip
    run_evaluation(args)
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def lr_runs(tiny_base, shared_data, tmp_path_factory):
    """Three real tiny runs (4 steps, STS evaluated at the end on 300 real STS-B dev pairs), run
    side by side, then `mst5 eval` on each."""
    root = tmp_path_factory.mktemp("lr-sweep")
    sts = root / "sts-dev-300.csv"
    sts.write_text("".join((shared_data / "stsb-multi-mt" / "stsb-en-dev.csv").open().readlines()[:300]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for lr in LRS:
        out = root / f"lr-{lr:g}"
        cmd = [sys.executable, "-m", "mst5_dist.cli", "train", "--config", TINY, f"model.name_or_path={tiny_base}",
               f"train.output_dir={out}", "train.max_steps=4", f"optim.lr={lr}", f"eval.sts_path={sts}",
               "train.save_every=null", "train.progress_bar=false", "train.report_to=[]"]  # fmt: skip
        procs[out] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for proc in procs.values():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return {out: eval_into(out, shared_data) for out in procs}


def check_png(path, width, height):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    img = imread(path)
    assert img.shape == (height, width, 4)
    assert img[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_lr_sweep_of_real_runs(lr_runs, tiny_base, tmp_path, capsys):
    from mst5_dist.cli import main
    from mst5_dist.model import load_backbone

    runs = list(lr_runs)
    out = tmp_path / "sweep"
    args = ["sweep", *map(str, runs), "--metric", "stsb.en.spearman,sts17.ar-en.spearman", "--metric",
            "eval_sts_spearman", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = (out / "sweep.md").read_text()
    assert table.strip() in printed

    report = json.loads((out / "sweep.json").read_text())
    assert report["x"] == "lr"  # auto: only the learning rate differs
    assert report["metrics"] == ["stsb.en.spearman", "sts17.ar-en.spearman", "eval_sts_spearman"]
    ordered = sorted(runs, key=lambda p: load_config(p / "config.yaml").optim.lr)
    assert [r["path"] for r in report["runs"]] == [str(p) for p in ordered]
    assert [r["lr"] for r in report["runs"]] == sorted(LRS)
    base_params = sum(p.numel() for p in load_backbone(str(tiny_base)).parameters())
    for row, run in zip(report["runs"], ordered):
        results = lr_runs[run]["results"]
        assert row["scores"]["stsb.en.spearman"] == results["stsb"]["en"]["spearman"]
        assert row["scores"]["sts17.ar-en.spearman"] == results["sts17"]["ar-en"]["spearman"]
        last_eval = [r for r in read_log(run) if "eval_sts_spearman" in r][-1]
        assert last_eval["step"] == 4 and row["scores"]["eval_sts_spearman"] == last_eval["eval_sts_spearman"]
        assert row["params"] == base_params and row["model"] == str(tiny_base)  # from final/sentence_encoder.json
    assert len({r["scores"]["stsb.en.spearman"] for r in report["runs"]}) == 3  # the lrs made a difference

    # The Markdown rows: same order, values to 2 decimals.
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| lr-")]
    assert [r[0].lstrip("| ") for r in rows] == [p.name for p in ordered]
    for cells, row in zip(rows, report["runs"]):
        assert cells[3] == f"{row['lr']:g}"
        assert cells[4] == f"{row['scores']['stsb.en.spearman']:.2f}"
        assert cells[6].rstrip(" |") == f"{row['scores']['eval_sts_spearman']:.2f}"
    assert [s["label"] for s in report["series"]] == report["metrics"]  # one line per metric
    assert all(s["x"] == sorted(LRS) for s in report["series"])
    check_png(out / "sweep.png", 840, 540)
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "sweep.md", "sweep.png"]  # no .tmp left


def fake_run(root, name, model, lr, results_template, values):
    """A run folder as training + `mst5 eval` leave it: config.yaml and results.json (suite layout)."""
    run = root / name
    run.mkdir()
    cfg = load_config(TINY, [f"model.name_or_path={model}", f"optim.lr={lr}", f"train.output_dir={run}"])
    save_config(cfg, run / "config.yaml")
    report = copy.deepcopy(results_template)
    report["model"]["path"], report["model"]["name"] = str(run), name
    report["results"]["stsb"]["en"]["spearman"] = values[0]
    report["results"]["sts17"]["ar-en"]["spearman"] = values[1]
    (run / "results.json").write_text(json.dumps(report, indent=2))
    return run


def test_model_size_sweep_figure2(lr_runs, tmp_path):
    template = next(iter(lr_runs.values()))
    scores = {"small": (70.1, 40.2), "base": (74.3, 52.8), "large": (78.0, 61.5), "xl": (80.9, 70.0),
              "xxl": (82.6, 76.4)}  # fmt: skip
    runs = [fake_run(tmp_path, f"mt5-{s}", f"google/mt5-{s}", 5e-4, template, scores[s]) for s in MT5]
    runs = [runs[i] for i in (3, 0, 4, 2, 1)]  # any order in, size order out
    sweep = run_sweep(runs, metrics=["stsb.en.spearman", "sts17.ar-en.spearman"], output=tmp_path / "fig2")
    assert sweep["x"] == "model_size"
    assert [r.name for r in sweep["runs"]] == [f"mt5-{s}" for s in MT5]
    assert [r.params for r in sweep["runs"]] == [mt5_encoder_params(*shape) for shape in MT5.values()]
    assert sweep["runs"][-1].params == 5_655_173_120  # the 5.7B-parameter m-ST5 encoder
    assert [r.scores["sts17.ar-en.spearman"] for r in sweep["runs"]] == [v[1] for v in scores.values()]
    table = (tmp_path / "fig2" / "sweep.md").read_text()
    assert "| mt5-xxl | google/mt5-xxl | 5.66B | 0.0005 | 82.60 | 76.40 |" in table
    assert "| mt5-small | google/mt5-small | 147M | 0.0005 | 70.10 | 40.20 |" in table
    series = json.loads((tmp_path / "fig2" / "sweep.json").read_text())["series"]
    assert [s["label"] for s in series] == ["stsb.en.spearman", "sts17.ar-en.spearman"]
    assert series[0]["y"] == [v[0] for v in scores.values()]
    check_png(tmp_path / "fig2" / "sweep.png", 840, 540)


def test_lr_grid_over_two_models_gives_one_line_per_model(lr_runs, tmp_path):
    template = next(iter(lr_runs.values()))
    runs = [
        fake_run(tmp_path, f"{size}-{lr:g}", f"google/mt5-{size}", lr, template, (50 + i, 30 + i))
        for i, (size, lr) in enumerate((s, lr) for s in ("small", "base") for lr in (1e-5, 5e-5, 1e-4, 5e-4))
    ]
    with pytest.raises(SweepError, match=r"differ in both learning rate \(4 values\) and model \(2\)"):
        run_sweep(runs, metrics=["stsb.en.spearman"], output=tmp_path / "auto")
    sweep = run_sweep(runs, metrics=["stsb.en.spearman"], x="lr", output=tmp_path / "grid")
    assert [(s["label"], s["x"], s["y"]) for s in sweep["series"]] == [
        ("stsb.en.spearman (google/mt5-base)", [1e-5, 5e-5, 1e-4, 5e-4], [54, 55, 56, 57]),
        ("stsb.en.spearman (google/mt5-small)", [1e-5, 5e-5, 1e-4, 5e-4], [50, 51, 52, 53]),
    ]
    check_png(tmp_path / "grid" / "sweep.png", 840, 540)


def test_errors_name_the_run_and_the_missing_file_or_field(lr_runs, tmp_path, capsys):
    from mst5_dist.cli import main

    template = next(iter(lr_runs.values()))
    a = fake_run(tmp_path, "a", "google/mt5-small", 1e-4, template, (1, 2))
    b = fake_run(tmp_path, "b", "google/mt5-small", 5e-4, template, (3, 4))

    def fails(runs, message, metrics=("stsb.en.spearman",), **kw):
        """``message`` is literal text, except that ``*`` matches anything."""
        pattern = ".*".join(re.escape(part) for part in message.split("*"))
        with pytest.raises(SweepError, match=pattern):
            run_sweep(runs, metrics=list(metrics), output=tmp_path / "out", **kw)

    (b / "results.json").rename(b / "elsewhere.json")
    fails([a, b], f"{b}: no results.json for metric 'stsb.en.spearman' (write it with: mst5 eval --model {b} ")
    fails([a, b], f"{a}: no elsewhere.json", results_name="elsewhere.json")
    (b / "elsewhere.json").rename(b / "results.json")
    fails([a, b], f"{a}: results.json has no metric 'stsb.xx.spearman' (no 'xx' under stsb: en)", ["stsb.xx.spearman"])
    fails([a, b], f"{a}: results.json: metric 'stsb.en' is {{'spearman': 1*not a finite number", ["stsb.en"])
    fails([a, b], f"{a}: no train_log.jsonl (needed for metric 'eval_sts_spearman')", ["eval_sts_spearman"])
    (a / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    fails([a, b], f"{a}: train_log.jsonl has no 'eval_sts_spearman' (train with eval.sts_path", ["eval_sts_spearman"])
    (a / "config.yaml").unlink()
    fails([a, b], f"{a}: no training config (looked for config.yaml, final/training_config.yaml")
    fails([tmp_path / "nope"], f"{tmp_path / 'nope'}: run folder not found")
    c = fake_run(tmp_path, "c", "google/mt5-small", 5e-4, template, (5, 6))
    fails([b, c], f"{b} and {c} give the same point (lr 0.0005, google/mt5-small)", x="lr")
    fails([b, c], "all runs have lr=0.0005 and model google/mt5-small: nothing to sweep")
    d = fake_run(tmp_path, "d", "someone/encoder-3b", 5e-4, template, (5, 6))
    fails([c, d], f"{d}: cannot tell the size of model 'someone/encoder-3b'", x="model_size")
    with pytest.raises(SweepError, match="no metric given"):
        parse_metrics([" , "])
    assert not (tmp_path / "out").exists()  # nothing is written when a run is unusable

    # The command: exit 2 and one line on stderr naming the folder and the file.
    assert main(["sweep", str(a), str(b), "--output", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mst5 sweep: error: {a}: no training config (looked for config.yaml, final/training_config.yaml, "
                   "training_config.yaml)"]  # fmt: skip


@pytest.mark.unit
def test_a_stage_run_of_an_older_train_modular_is_read(tmp_path):
    """An older ``train-modular`` saved each stage's config.yaml with its ``modular:`` section
    (languages and all); the sweep reads it. Negative control: an unknown section is still refused."""
    import yaml

    from mst5_dist.config import Config, to_dict
    from mst5_dist.evaluate.sweep import read_run_config

    raw = to_dict(Config())
    raw["optim"]["lr"] = 3e-4
    raw["data"]["streaming"] = False
    raw["modular"] = {"languages": ["en", "de"], "pivot_language": "en", "stsb_dir": "../shared/data/stsb-multi-mt",
                      "min_score": 4.0, "parallel_max_rows": None, "language_overrides": [], "cla_overrides": []}  # fmt: skip
    run = tmp_path / "language" / "de"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    cfg, path = read_run_config(run)
    assert cfg.optim.lr == 3e-4 and path == run / "config.yaml"
    raw["nosuch"] = {}
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with pytest.raises(SweepError, match=rf"{re.escape(str(run))}: unreadable training config: .*unknown key 'nosuch'"):
        read_run_config(run)
