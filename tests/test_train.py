import json
import signal
import subprocess
import time

from conftest import TINY_CONFIG as TINY
from conftest import english_tiny_nli, minilm_lora_cmd, mst5_cmd, read_log, train_cmd
from safetensors.torch import load_file

LOG_FIELDS = {"step", "loss", "grad_norm", "lr", "sentences_per_s", "tokens_per_s", "padding_fraction"}


def test_readme_main_job_on_fresh_folder(tmp_path):
    """Exactly the README's main job (build-tiny, then train the tiny config) in an empty folder."""
    subprocess.run(mst5_cmd("build-tiny"), cwd=tmp_path, check=True, capture_output=True)
    proc = subprocess.run(mst5_cmd("train", "--config", TINY), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    final = run / "final"
    for name in ("adapter_model.safetensors", "adapter_config.json", "sentence_encoder.json", "tokenizer.json"):
        assert (final / name).is_file(), name
    log = read_log(run)
    assert set(log[0]) >= LOG_FIELDS
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))
    first, last = log[:5], log[-5:]
    assert sum(r["loss"] for r in last) / 5 < 0.8 * sum(r["loss"] for r in first) / 5
    assert all(0.0 <= r["padding_fraction"] < 1.0 and r["sentences_per_s"] > 0 for r in log)
    assert (run / "tensorboard").is_dir()
    assert not list(run.rglob("*.tmp"))


def _run_cmd(tiny_base, out, *extra):
    return train_cmd(tiny_base, out, "train.progress_bar=false", *extra)


def test_sigterm_checkpoint_and_resume_equals_uninterrupted(tiny_base, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_run_cmd(tiny_base, straight), check=True, capture_output=True)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_run_cmd(tiny_base, resumed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_file = resumed / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log_file.exists() and len(log_file.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1] and "--resume latest" in err
    total = len(read_log(straight))
    stopped_at = len(read_log(resumed))
    assert 4 <= stopped_at < total and not (resumed / "final").exists()

    proc2 = subprocess.run(_run_cmd(tiny_base, resumed, "--resume", "latest"), capture_output=True, text=True)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert [r["step"] for r in read_log(resumed)] == list(range(1, total + 1))  # every step exactly once
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    # losses of the resumed part equal the uninterrupted run's
    la = [r["loss"] for r in read_log(straight)]
    lb = [r["loss"] for r in read_log(resumed)]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5


def test_lora_run_on_real_minilm_lowers_loss(minilm_path, tmp_path):
    data = english_tiny_nli(tmp_path)
    out = tmp_path / "minilm"
    cmd = minilm_lora_cmd(minilm_path, data, out, "train.epochs=5", "optim.lr=2e-3")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in read_log(out)]
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    meta = json.loads((out / "final" / "sentence_encoder.json").read_text())
    assert meta["model_type"] == "bert" and meta["pooling"] == "mean" and meta["adapter"]


def test_python_dash_m_entry_point_with_eval_and_checkpointing(tiny_base, tmp_path, shared_data):
    """`python -m mst5_dist.train` (what `accelerate launch -m` runs), gradient checkpointing on,
    periodic STS evaluation on real STS-B dev pairs logged with the training metrics."""
    import sys

    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mst5_dist.train",
            "--config",
            TINY,
            f"model.name_or_path={tiny_base}",
            f"train.output_dir={out}",
            "train.max_steps=4",
            "model.gradient_checkpointing=true",
            f"eval.sts_path={shared_data / 'stsb-multi-mt' / 'stsb-en-dev.csv'}",
            "eval.every_steps=2",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    assert [("eval_sts_spearman" in r) for r in log] == [False, True, False, True]
    assert "gradient checkpointing: on in" in proc.stderr  # the trainer checked that it switched on
    # The logged score is the model's score on those pairs: final/ (the step-4 model) reproduces it.
    from mst5_dist.evaluate.sts import evaluate_sts, read_stsb_csv
    from mst5_dist.model import SentenceEncoder

    pairs = read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-en-dev.csv")
    assert (
        abs(evaluate_sts(SentenceEncoder.from_pretrained(out / "final"), pairs) - log[-1]["eval_sts_spearman"]) < 1e-4
    )
