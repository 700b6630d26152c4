"""Length-aware encoding (``mst5_dist.encoding``): the chunk plan is the cheapest one, the chunks hold
every row once and come back in input order, and losses and LoRA gradients equal the one-width path
(1 process here; 2 real ranks under DDP, and ZeRO-2/3 when slow tests run), with and without
GradCache and hard negatives. Negative controls: a chunker that forgets the input order or pads with
attention mask 1 fails the same comparison."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from conftest import PROBE, TINY_CONFIG, launch, read_log

from mst5_dist import encoding, objectives
from mst5_dist.collate import BatchCollator
from mst5_dist.config import ConfigError, load_config
from mst5_dist.data import read_jsonl
from mst5_dist.distributed import Gather
from mst5_dist.tiny_default import builtin_path
from mst5_dist.training.builders import build_data, build_encoder
from mst5_dist.training.step import compute_loss

# ------------------------------------------------------------------ the plan


def brute_force_cost(lengths: list[int], budget: int, overhead: int, cap: int | None) -> int:
    """The cheapest cut over every composition of the sorted rows (small n only)."""
    n, best = len(lengths), None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        rows, count = [], 1
        for c in cuts:
            if c:
                rows.append(count)
                count = 0
            count += 1
        rows.append(count)
        cost = plan_cost(lengths, rows, overhead)
        ok = all((r == 1 or r * lengths[s] <= budget) and (cap is None or r <= cap) for s, r in starts(rows))
        if ok and (best is None or cost < best):
            best = cost
    return best


def starts(rows: list[int]):
    s = 0
    for r in rows:
        yield s, r
        s += r


def plan_cost(lengths: list[int], rows: list[int], overhead: int) -> int:
    return sum(r * lengths[s] + overhead for s, r in starts(rows))


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_cheapest_cut_within_budget_and_rows(seed):
    rng = random.Random(seed)
    lengths = sorted((rng.randint(1, 20) for _ in range(rng.randint(1, 9))), reverse=True)
    budget, overhead = rng.choice([20, 40, 100]), rng.choice([0, 3, 30])
    cap = rng.choice([None, 2, 3])
    rows = encoding.plan_chunks(lengths, budget, overhead, cap)
    assert sum(rows) == len(lengths)
    assert all((r == 1 or r * lengths[s] <= budget) and (cap is None or r <= cap) for s, r in starts(rows))
    assert plan_cost(lengths, rows, overhead) == brute_force_cost(lengths, budget, overhead, cap)


@pytest.mark.unit
def test_overhead_trades_chunks_for_padding():
    lengths = [40, 38, 20, 19, 10, 9, 5, 5]
    assert encoding.plan_chunks(lengths, 10_000, 0, None) == [1, 1, 1, 1, 1, 1, 2]  # no cost: cut everywhere
    assert encoding.plan_chunks(lengths, 10_000, 10_000, None) == [8]  # dear chunks: one
    assert encoding.plan_chunks(lengths, 10_000, 30, None) == [2, 2, 4]
    assert encoding.plan_chunks([70, 3], 64, 0, None) == [1, 1]  # a row over the budget still gets a chunk


def ids_of(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(5, 99) for _ in range(rng.randint(1, 30))] for _ in range(n)]


def unpack(chunked: encoding.ChunkedBatch) -> list[list[int]]:
    """Each input row back from the chunks: its masked ids, in input order."""
    rows = [ids[m.bool()].tolist() for i, m in zip(chunked.input_ids, chunked.attention_mask) for ids, m in zip(i, m)]
    order = range(len(rows)) if chunked.restore is None else chunked.restore.tolist()
    return [rows[k] for k in order]


@pytest.mark.unit
@pytest.mark.parametrize(
    "chunker",
    [encoding.Chunker(0), encoding.Chunker(0, max_rows=4), encoding.Chunker(0, 64, 0), encoding.Chunker(0, 200, 32, 5)],
    ids=["one-width", "gradcache-rows", "tokens-64", "tokens-200+rows-5"],
)
def test_chunks_hold_every_row_once_in_input_order(chunker):
    ids = ids_of(23)
    chunked = chunker(ids)
    assert unpack(chunked) == ids
    assert chunked.real_tokens == sum(map(len, ids)) == sum(int(m.sum()) for m in chunked.attention_mask)
    widths = [t.shape[1] for t in chunked.input_ids]
    assert all(int(m[:, -1].max()) == 1 for m in chunked.attention_mask)  # each chunk cut to its longest row
    if chunker.budget:
        assert all(t.numel() <= chunker.budget or t.shape[0] == 1 for t in chunked.input_ids)
        assert widths == sorted(widths, reverse=True)
    # Negative control: without the restore step the rows come back in sorted order, not input order.
    if chunked.restore is not None:
        assert unpack(encoding.ChunkedBatch(**{**chunked.__dict__, "restore": None})) != ids


@pytest.mark.unit
def test_split_to_a_count_keeps_rows_and_adds_no_padding():
    chunked = encoding.Chunker(0, 10_000, 10_000)(ids_of(23, seed=1))
    assert len(chunked.input_ids) == 1
    split = encoding.split_to(chunked, 4)
    assert len(split.input_ids) == 4 and unpack(split) == unpack(chunked)
    assert split.padded_tokens <= chunked.padded_tokens and split.counts().chunks == 4
    with pytest.raises(ValueError):
        encoding.split_to(encoding.Chunker(0, 64, 0)(ids_of(2)), 3)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.chunk_tokens=32", r"loss\.chunk_tokens: must hold one sequence of model\.max_seq_length=64"),
        ("loss.chunk_tokens=0", r"loss\.chunk_tokens: must be >= 1"),
        ("loss.chunk_overhead_tokens=-1", r"loss\.chunk_overhead_tokens: must be auto or an integer >= 0"),
        ("loss.chunk_overhead_tokens=some", r"loss\.chunk_overhead_tokens: expected"),
    ],
)
def test_bad_chunk_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, [override])


@pytest.mark.unit
def test_good_chunk_settings_load():
    assert load_config(TINY_CONFIG, ["loss.chunk_tokens=null"]).loss.chunk_tokens is None
    cfg = load_config(TINY_CONFIG, ["loss.chunk_overhead_tokens=100"])
    assert encoding.chunker(cfg.loss, 0, "cpu").overhead == 100
    auto = load_config(TINY_CONFIG, []).loss
    assert auto.chunk_tokens == 16384 and auto.chunk_overhead_tokens == "auto"
    assert encoding.chunker(auto, 0, "cpu").overhead == 32 and encoding.chunker(auto, 0, "cuda").overhead == 8192


# ------------------------------------------------------------------ losses and gradients, 1 process


@pytest.fixture(scope="module")
def tiny_setup(tiny_base):
    return _setup(str(tiny_base), [])


@pytest.fixture(scope="module")
def minilm_setup(minilm_path):
    return _setup(str(minilm_path), ["lora.preset=qv", "model.pooling=mean"])


def _setup(base: str, extra: list[str]):
    cfg = load_config(TINY_CONFIG, [f"model.name_or_path={base}", "model.dropout=0.0", "lora.dropout=0.0", *extra])
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero lora_B: every LoRA tensor gets a gradient
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    rows = read_jsonl(builtin_path("tiny_nli")).rows[::6][:16]  # one row per source example
    return cfg, encoder, rows


def loss_and_grads(setup, tokens, cache, hard, fault=None, packed=False):
    cfg, encoder, rows = setup
    cfg.loss.chunk_tokens, cfg.loss.cache_chunk_size, cfg.loss.hard_negatives = tokens, cache, hard
    cfg.loss.pack_sequences = packed
    objective = objectives.build(cfg)
    chunker = encoding.chunker(cfg.loss, encoder.tokenizer.pad_token_id, "cpu", encoder.packing is not None)
    batch = BatchCollator(encoder.tokenizer, 64, objective, chunker)(rows)
    if fault == "order":
        batch.encode.restore = None
    elif fault == "mask":
        batch.encode.attention_mask = [torch.ones_like(m) for m in batch.encode.attention_mask]
    encoder.zero_grad(set_to_none=True)
    loss, batch = compute_loss(encoder, batch, objective, cfg, "cpu", Gather(False))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, batch


@pytest.fixture(scope="module")
def computed():
    """``loss_and_grads`` of a model, each distinct call once per module: the reference and the padded
    chunks recur across cases, and a call sets every setting it reads, so a repeat gives the same."""
    memo = {}

    def get(model, setup, tokens, cache, hard, fault=None, packed=False):
        key = (model, tokens, cache, hard, fault, packed)
        if key not in memo:
            memo[key] = loss_and_grads(setup, tokens, cache, hard, fault, packed)
        return memo[key]

    return get


def worst_relative(grads, ref) -> float:
    assert grads.keys() == ref.keys() and len(ref) > 0 and all(g.norm() > 0 for g in ref.values())
    return max(float((grads[n] - ref[n]).norm() / ref[n].norm()) for n in ref)


# (model, chunk_tokens, cache_chunk_size, hard negatives, fault): every case against the one-width,
# uncached case of the same model and negatives; a fault must FAIL the comparison.
CASES = [
    ("tiny", 16384, None, True, None),
    ("tiny", 16384, None, False, None),
    ("tiny", 64, None, True, None),
    ("tiny", 16384, 5, True, None),
    ("tiny", 64, 3, False, None),
    ("tiny", None, 5, True, None),
    ("minilm", 16384, None, True, None),
    ("minilm", 64, 4, False, None),
    ("tiny", 16384, None, True, "order"),
    ("tiny", 16384, None, True, "mask"),
    ("minilm", 16384, 4, True, "mask"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("model", "tokens", "cache", "hard", "fault"), CASES)
def test_length_aware_equals_one_width_in_one_process(model, tokens, cache, hard, fault, request, computed):
    setup = request.getfixturevalue(f"{model}_setup")
    ref_loss, ref_grads, ref_batch = computed(model, setup, None, None, hard)
    loss, grads, batch = computed(model, setup, tokens, cache, hard, fault)
    assert ref_batch.counts.chunks == 1 and batch.counts.chunks > 1
    assert batch.counts.real_tokens == ref_batch.counts.real_tokens
    assert batch.counts.padded_tokens < ref_batch.counts.padded_tokens
    same = loss == pytest.approx(ref_loss, rel=1e-5) and worst_relative(grads, ref_grads) < 1e-5
    assert same == (fault is None), (loss, ref_loss, worst_relative(grads, ref_grads))


# (model, chunk_tokens, hard negatives, fault): packed rows against the one-width case.
PACKED_CASES = [
    ("tiny", 16384, True, None),
    ("tiny", 64, False, None),
    ("minilm", 16384, True, None),
    ("minilm", 64, False, None),
    ("tiny", 16384, True, "order"),
    ("tiny", 64, True, "mask"),  # one segment per row: sequences attend to their row-mates
    ("minilm", 16384, True, "mask"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("model", "tokens", "hard", "fault"), PACKED_CASES)
def test_packed_rows_equal_one_width_in_one_process(model, tokens, hard, fault, request, computed):
    setup = request.getfixturevalue(f"{model}_setup")
    ref_loss, ref_grads, ref_batch = computed(model, setup, None, None, hard)
    _, _, padded = computed(model, setup, tokens, None, hard)  # length-aware padded chunks
    loss, grads, batch = computed(model, setup, tokens, None, hard, fault, packed=True)
    chunked = batch.encode
    assert chunked.position_ids is not None and sum(int(t.shape[0]) for t in chunked.input_ids) < len(chunked.lengths)
    assert batch.counts.real_tokens == ref_batch.counts.real_tokens
    assert batch.counts.padded_tokens < ref_batch.counts.padded_tokens
    if tokens == 16384:  # (at 64 tokens, rows as wide as the longest sequence pack coarsely)
        assert batch.counts.padded_tokens < padded.counts.padded_tokens
    assert (batch.counts.chunks == 1) == (tokens == 16384)  # 64 tokens: more than one chunk of packed rows
    same = loss == pytest.approx(ref_loss, rel=1e-5) and worst_relative(grads, ref_grads) < 1e-5
    assert same == (fault is None), (loss, ref_loss, worst_relative(grads, ref_grads))


@pytest.mark.unit
def test_packing_falls_back_where_it_does_not_apply(tiny_setup):
    """CLS pooling, a GradCache run or pack_sequences=false: padded chunks, never packed rows."""
    cfg, encoder, _ = tiny_setup
    assert encoder.packing == "relative"
    cfg.loss.chunk_tokens, cfg.loss.pack_sequences = 16384, True
    assert encoding.chunker(cfg.loss, 0, "cpu", True).packed
    assert not encoding.chunker(cfg.loss, 0, "cpu", False).packed  # the model cannot take packed rows
    cfg.loss.cache_chunk_size = 4
    assert not encoding.chunker(cfg.loss, 0, "cpu", True).packed
    cfg.loss.cache_chunk_size, cfg.loss.pack_sequences = None, False
    assert not encoding.chunker(cfg.loss, 0, "cpu", True).packed
    encoder.pooling = "cls"
    try:
        assert encoder.packing is None
    finally:
        encoder.pooling = "mean"


# ------------------------------------------------------------------ 2 ranks


def assert_probe_equal(got: dict, fault: str | None) -> None:
    """Every case of a probe run against its one-width, uncached case (same negatives); some
    length-aware case had ranks planning different chunk counts (so they had to agree)."""
    assert len(got) >= 4
    assert any(len(set(ranks)) > 1 for r in got.values() for ranks in r["planned"])
    for key, result in got.items():
        hard = key.split(",")[1]
        ref = got[f"chunk=0,{hard},tokens=None"]
        if key.startswith("chunk=0,") and key.endswith("tokens=None"):
            continue
        same = (
            result["losses"] == pytest.approx(ref["losses"], rel=1e-5)
            and worst_relative(result["grads"], ref["grads"]) < 1e-5
        )
        length_aware = not key.endswith("tokens=None")
        assert same == (fault is None or not length_aware), key
        assert max(result["chunks"]) > 1, key


TWO_RANK_CASES = [
    pytest.param("ddp", None, id="ddp"),
    pytest.param("zero2", None, id="zero2", marks=pytest.mark.slow),
    pytest.param("zero3", None, id="zero3", marks=pytest.mark.slow),
    pytest.param("ddp", "order", id="ddp-forgets-order", marks=pytest.mark.slow),
    pytest.param("zero3", "mask", id="zero3-pads-with-mask-1", marks=pytest.mark.slow),
]


@pytest.mark.distributed
@pytest.mark.parametrize(("backend", "fault"), TWO_RANK_CASES)
def test_length_aware_equals_one_width_on_two_ranks(backend, fault, tiny_base, tmp_path):
    """2 ranks x 4 rows: the ranks plan different chunk counts at 64 tokens (and agree on the
    largest); with GradCache chunks of 3 rows and without; hard negatives on and off."""
    path = tmp_path / "probe.pt"
    args = [str(PROBE), "--base", str(tiny_base), "--out", str(path), "--chunks", "0,3", "--tokens", "none,64"]
    proc = launch(backend, tmp_path, *args, *(["--fault", fault] if fault else []))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_probe_equal(torch.load(path), fault)


# ------------------------------------------------------------------ what the log reports


def test_logged_padding_is_what_the_chunks_encoded(tiny_base, tmp_path):
    """A real tiny run logs less padding with length-aware chunks than at one width, and less again
    with packed rows; the logged figure equals 1 - real / (rows x width) recomputed from the same
    batches' chunk tensors (real = mask > 0: a packed chunk's mask holds segment ids)."""
    from torch.utils.data import DataLoader

    from mst5_dist.training.recipe import train

    logs, expected = {}, {}
    variants = {
        "packed": ["loss.chunk_tokens=16384"],
        "chunks": ["loss.chunk_tokens=16384", "loss.pack_sequences=false"],
        "onewidth": ["loss.chunk_tokens=null"],
    }
    for name, overrides in variants.items():
        out = tmp_path / name
        cfg = load_config(
            TINY_CONFIG,
            [f"model.name_or_path={tiny_base}", f"train.output_dir={out}", *overrides,
             "train.max_steps=3", "train.report_to=[]", "train.progress_bar=false", "train.save_every=null",
             f"data.cache_dir={tmp_path / 'cache'}"],
        )  # fmt: skip
        train(cfg)
        logs[name] = read_log(out)
        dataset, sampler, collator = build_data(cfg, build_encoder(cfg), objectives.build(cfg), 1, 0)
        sampler.set_epoch(0, 0)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator)
        batches = [b for _, b in zip(range(3), loader)]
        assert all((b.encode.position_ids is not None) == (name == "packed") for b in batches)
        real = [sum(int((m > 0).sum()) for m in b.encode.attention_mask) for b in batches]
        fed = [sum(m.numel() for m in b.encode.input_ids) for b in batches]
        expected[name] = [1 - r / f for r, f in zip(real, fed)]
        assert [r["chunks"] for r in logs[name]] == [len(b.encode.input_ids) for b in batches]
        assert [(r["real_tokens"], r["padded_tokens"]) for r in logs[name]] == list(zip(real, fed))
    for name in logs:
        assert [r["padding_fraction"] for r in logs[name]] == pytest.approx(expected[name], abs=1e-12)
    assert all(r["chunks"] == 1 for r in logs["onewidth"]) and all(r["chunks"] > 1 for r in logs["chunks"])
    assert all(r["chunks"] == 1 for r in logs["packed"])  # a few hundred tokens: one chunk of packed rows
    packed, aware, one = (sum(r["padding_fraction"] for r in logs[t]) / 3 for t in variants)
    assert aware < 0.5 * one, (aware, one)
    assert packed < aware, (packed, aware)
    print(json.dumps({"padding_fraction_length_aware": aware, "padding_fraction_one_width": one}))
