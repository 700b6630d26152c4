"""Records only on logged / evaluated / checkpointed / last steps, figures summed on the device in
between, and the NaN/inf check exact without a host sync per step: the first non-finite step is
named even when it falls between records, and nothing is written after it."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NaNAtStep3, last_line, read_log, tiny_args

from mst5_dist import encoding
from mst5_dist.cli import main
from mst5_dist.training import metrics


def window_of(steps: list[tuple[float, float | None]]) -> metrics.LogWindow:
    """A LogWindow fed one (loss, grad norm) per step (counts of one all-real 2 x 3 chunk)."""
    window = metrics.LogWindow("cpu")
    batch = encoding.Chunker(0)([[5, 6, 7], [8, 9, 10]]).counts()
    for i, (loss, norm) in enumerate(steps, start=1):
        sums = metrics.StepSums("cpu")
        sums.add(torch.tensor(loss), batch)
        window.add(i, sums, None if norm is None else torch.tensor(norm), started=0.0)
    return window


def figures_of(*ranks: metrics.LogWindow) -> metrics.StepMetrics:
    """The ranks' windows packed, summed and gathered (as the recipe does over ranks), unpacked."""
    packed = [w.metrics(0.0).pack("cpu") for w in ranks]
    return metrics.StepMetrics.unpack(sum(p[0] for p in packed), torch.stack([p[1] for p in packed]))


FIRST_BAD = [  # (steps, message start or None for no error)
    ([(1.0, 1.0), (2.0, 2.0)], None),
    ([(1.0, None), (2.0, None)], None),  # DeepSpeed before its first norm: no norm is not a bad norm
    ([(1.0, 1.0), (math.nan, 1.0), (math.inf, math.nan)], "step 2: loss = nan"),
    ([(1.0, 1.0), (1.0, math.inf), (math.nan, 1.0)], "step 2: grad_norm = inf"),
    ([(math.inf, math.nan)], "step 1: loss = inf, grad_norm = nan"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("steps", "message"), FIRST_BAD)
def test_the_first_non_finite_step_is_kept_exactly(steps, message):
    figures = figures_of(window_of(steps))
    if message is None:
        metrics.first_bad_step(figures)
        assert figures.loss == sum(loss for loss, _ in steps)  # the window's loss sum
        return
    with pytest.raises(metrics.NonFinite, match="^" + message.replace(".", r"\.") + " "):
        metrics.first_bad_step(figures)


@pytest.mark.unit
def test_the_first_bad_step_over_ranks_is_the_earliest():
    ranks = [window_of(s) for s in ([(1.0, 1.0), (math.nan, 2.0)], [(math.nan, 1.0)])]
    with pytest.raises(metrics.NonFinite, match=r"^step 1: loss = nan"):
        metrics.first_bad_step(figures_of(*ranks))
    with pytest.raises(metrics.NonFinite, match=r"^step 2: loss = nan"):  # negative control: rank 0 alone
        metrics.first_bad_step(figures_of(ranks[0]))


def test_step_metrics_pack_and_unpack_by_name():
    """Two ranks' figures: the summed fields come back summed, the gathered ones by rank."""
    counts = encoding.Counts(10, 12, 2, 1, 50, 72)
    ranks = [
        metrics.StepMetrics(torch.tensor(1.5), counts, 100.0, torch.tensor(2.0), 0.0, 0.0, 0.0),
        metrics.StepMetrics(torch.tensor(0.5), counts + counts, 200.0, torch.tensor(3.0), 4.0, math.inf, 1.0),
    ]
    packed = [m.pack("cpu") for m in ranks]
    figures = metrics.StepMetrics.unpack(packed[0][0] + packed[1][0], torch.cat([p[1] for p in packed]))
    assert figures.loss == 2.0 and figures.counts == encoding.Counts(30, 36, 6, 3, 150, 216)
    assert figures.peak_memory_mb == [100.0, 200.0] and figures.grad_norm == [2.0, 3.0]
    assert (figures.bad_step, figures.bad_loss, figures.bad_grad_norm) == ([0.0, 4.0], [0.0, math.inf], [0.0, 1.0])


def run_log(base, out, *extra) -> list[dict]:
    assert main(tiny_args(base, out, "loss.hard_negatives=false", "train.max_steps=7", *extra)) == 0
    return read_log(out)


def test_records_cover_the_steps_since_the_previous_one(tiny_base, tmp_path):
    every = run_log(tiny_base, tmp_path / "every")
    sparse = run_log(tiny_base, tmp_path / "sparse", "train.log_every=3", "train.save_every=5")
    assert [r["step"] for r in every] == list(range(1, 8))
    # logged at 3 and 6, checkpointed at 5, last step 7; each record covers the steps since the previous one
    assert [(r["step"], r["steps_in_record"]) for r in sparse] == [(3, 3), (5, 2), (6, 1), (7, 1)]
    first = 0
    for record in sparse:  # the same run: its window means equal the per-step figures
        steps = every[first : record["step"]]
        first = record["step"]
        for key in ("loss", "grad_norm"):
            assert record[key] == pytest.approx(sum(s[key] for s in steps) / len(steps), rel=1e-6)
        assert record["model_flops"] == pytest.approx(sum(s["model_flops"] for s in steps) / len(steps), rel=1e-9)
    # negative control: a window's mean is not its last step's figure
    assert sparse[0]["loss"] != pytest.approx(every[2]["loss"], rel=1e-6)
    assert "mfu" not in sparse[0] and "hfu" not in sparse[0]  # no peak known on a CPU
    assert all(r["hardware_flops"] >= r["model_flops"] > 0 for r in every)


class NaNGradAtStep3(NaNAtStep3):
    """A finite loss whose gradient is NaN from the third micro-batch on (sqrt'(0) x 0)."""

    def loss(self, embeddings, batch, gather):
        self.calls += 1
        loss = self.inner.loss(embeddings, batch, gather)
        return loss + (embeddings.sum() * 0).sqrt() if self.calls >= 3 else loss


def test_a_nan_between_records_is_named_and_nothing_after_it_is_written(tiny_base, tmp_path, capsys):
    from mst5_dist import objectives

    objectives.register("nan-grad-at-3")(NaNGradAtStep3)
    try:
        out = tmp_path / "run"
        args = tiny_args(tiny_base, out, "loss.objective=nan-grad-at-3", "train.max_steps=6")
        code = main([*args, "train.log_every=5", "train.save_every=2"])
    finally:
        objectives.unregister("nan-grad-at-3")
    assert code == 1
    line = last_line(capsys)  # found at step 4's record (a checkpoint step), named as step 3
    assert line.startswith("mst5 train: error: step 3: grad_norm = nan (non-finite)"), line
    assert [(r["step"], r["steps_in_record"]) for r in read_log(out)] == [(2, 2)]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "final").exists()
