"""The objective seam: a third objective, defined in this file only, trains through the unchanged
trainer; the built-in objectives are what ``loss.objective`` selects; unknown names are refused."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from conftest import TINY_CONFIG, last_line, read_log, tiny_args

from mst5_dist import objectives
from mst5_dist.config import ConfigError, load_config
from mst5_dist.losses import info_nce
from mst5_dist.objectives import Collated


class SymmetricInfoNCE:
    """A toy objective the package does not have: InfoNCE in both directions (anchor -> positive and
    positive -> anchor), no hard negatives. It counts what the trainer asks of it."""

    columns = ("anchor", "positive")
    calls: ClassVar[dict[str, int]] = {"setup": 0, "collate": 0, "loss": 0}

    def __init__(self, cfg) -> None:
        self.temperature = cfg.loss.temperature

    def setup(self, ctx) -> None:
        SymmetricInfoNCE.calls["setup"] += 1
        assert len(ctx.dataset) == 300 and "positive" in ctx.dataset.column_names

    def collate(self, rows):
        SymmetricInfoNCE.calls["collate"] += 1
        texts = [r["anchor"] for r in rows] + [r["positive"] for r in rows]
        return Collated(texts=texts, extras={"row_ids": torch.arange(len(rows))})

    def loss(self, embeddings, batch, gather):
        SymmetricInfoNCE.calls["loss"] += 1
        n = batch.rows
        assert batch.extras["row_ids"].tolist() == list(range(n))  # the extras reach the loss
        a, p = embeddings[:n], embeddings[n : 2 * n]
        forward = info_nce(a, p, temperature=self.temperature, gather=gather, rank=gather.rank)
        backward = info_nce(p, a, temperature=self.temperature, gather=gather, rank=gather.rank)
        return (forward + backward) / 2


@pytest.fixture
def toy_objective():
    objectives.register("toy-symmetric")(SymmetricInfoNCE)
    SymmetricInfoNCE.calls.update(setup=0, collate=0, loss=0)
    yield SymmetricInfoNCE
    objectives.unregister("toy-symmetric")


def test_a_new_objective_trains_without_touching_the_trainer(toy_objective, tiny_base, tmp_path):
    from mst5_dist.training.recipe import train

    out = tmp_path / "toy"
    cfg = load_config(
        TINY_CONFIG,
        [f"model.name_or_path={tiny_base}", f"train.output_dir={out}", "loss.objective=toy-symmetric",
         "train.max_steps=4", "train.grad_accum_steps=2", "train.report_to=[]", "train.progress_bar=false",
         f"data.cache_dir={tmp_path / 'cache'}"],
    )  # fmt: skip
    final = train(cfg)
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    # The trainer used this objective: set up once, one collate and one loss per micro-batch.
    assert toy_objective.calls == {"setup": 1, "collate": 8, "loss": 8}
    assert (final / "adapter_model.safetensors").is_file()
    assert load_config(out / "config.yaml").loss.objective == "toy-symmetric"


@pytest.mark.unit
def test_loss_objective_selects_the_built_in_implementations(tmp_path):
    triplet = objectives.build(load_config(None, []))
    assert type(triplet).__name__ == "TripletObjective" and triplet.columns == ("anchor", "positive", "negative")
    pairs = objectives.build(load_config(None, ["loss.hard_negatives=false"]))
    assert pairs.columns == ("anchor", "positive")
    cla = objectives.build(
        load_config(
            None, ["loss.objective=cla", "loss.hard_negatives=false", "loss.pivot_model=x", "model.merge_adapters=[y]"]
        )
    )
    assert type(cla).__name__ == "ClaObjective" and cla.columns == ("anchor", "positive")
    rows = [{"anchor": f"a{i}", "positive": f"p{i}", "negative": f"n{i}", "source_id": str(i)} for i in range(3)]
    assert triplet.collate(rows).texts == ["a0", "a1", "a2", "p0", "p1", "p2", "n0", "n1", "n2"]
    assert pairs.collate(rows).texts == ["a0", "a1", "a2", "p0", "p1", "p2"]


@pytest.mark.unit
def test_an_unknown_objective_is_refused_naming_the_registered_ones(tiny_base, tmp_path):
    from mst5_dist.training.recipe import train

    cfg = load_config(TINY_CONFIG, [f"model.name_or_path={tiny_base}", f"train.output_dir={tmp_path / 'x'}",
                                    "loss.objective=nope"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"loss\.objective: unknown objective 'nope' \(registered: cla, triplet\)"):
        train(cfg)
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.unit
def test_a_matryoshka_size_above_the_models_is_refused_once_the_model_is_known(tiny_base, tmp_path, capsys):
    from mst5_dist.cli import main

    args = tiny_args(tiny_base, tmp_path / "x", f"data.cache_dir={tmp_path / 'cache'}")
    assert main([*args, "loss.matryoshka_dims=[65,32]"]) == 2
    assert "loss.matryoshka_dims: [65] larger than the model's embedding size 64" in last_line(capsys)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_triplet_trains_symmetric_over_matryoshka_prefixes(tiny_base, tmp_path):
    """Two real steps with both settings (the model's full size listed); the run records them."""
    from mst5_dist.cli import main

    out = tmp_path / "run"
    extra = ["loss.symmetric=true", "loss.matryoshka_dims=[64,16]", "loss.matryoshka_weights=[1,0.5]"]
    assert main(tiny_args(tiny_base, out, f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", *extra)) == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    saved = load_config(out / "config.yaml").loss
    assert saved.symmetric and saved.matryoshka_dims == [64, 16] and saved.matryoshka_weights == [1.0, 0.5]
