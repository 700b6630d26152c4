"""The data start-up at scale: the vectorised sampler's contract (a table of tiny cases, each
checked by one property checker, and broken variants the checker must catch), the JSONL block
reader against the Python reference reader, token lengths and source codes cached beside the
Arrow data, rank 0 first with real processes, and the start-up benchmark kept alive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

from mst5_dist import data
from mst5_dist.config import DataConfig
from mst5_dist.data import DataError, GlobalBatchSampler, load_cached, read_jsonl, read_triplets, repeated_in_rows
from mst5_dist.data import blocks as data_blocks
from mst5_dist.data import cache as data_cache
from mst5_dist.data import lengths as data_lengths
from mst5_dist.tiny_default import builtin_path

sys.path.insert(0, str(REPO / "benchmarks"))
import data_startup

# ------------------------------------------------------------------ the sampler's contract


def sampler_violations(make, n_rows: int, codes: np.ndarray, global_batch: int, world: int) -> list[str]:
    """Every rule of the sampler's contract that ``make(rank)`` (a sampler for that rank) breaks."""
    found: list[str] = []
    ranks = [make(r) for r in range(world)]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        if len({len(p) for p in per_rank}) != 1:
            found.append("ranks see different numbers of batches")
            continue
        used: list[int] = []
        for step in zip(*per_rank, strict=True):
            if any(len(local) != global_batch // world for local in step):
                found.append("a rank got a batch of the wrong size")
            batch = [i for local in step for i in local]
            if len(set(codes[batch].tolist())) != len(batch):
                found.append("a source id twice in one global batch")
            used += batch
        if len(set(used)) != len(used):
            found.append("a row twice in one epoch")
        if ranks[0].dropped != n_rows - len(used):
            found.append(f"dropped {ranks[0].dropped} but {n_rows - len(used)} rows unused")
        again = make(0)
        again.set_epoch(epoch)
        if [list(b) for b in again] != per_rank[0]:
            found.append("not deterministic per (seed, epoch)")
        if len(per_rank[0]) > 2:
            again.set_epoch(epoch, start=2)
            if list(again) != per_rank[0][2:]:
                found.append("resume by (epoch, batch) differs")
    if len(ranks[0].global_batches(0)) > 2 and np.array_equal(ranks[0].global_batches(0), ranks[0].global_batches(1)):
        found.append("epochs 0 and 1 have the same order")
    return sorted(set(found))


def _case(n_rows, per_source, seed=0, lengths="random"):
    rng = np.random.default_rng(seed)
    codes = rng.permutation(n_rows) // per_source  # rows of one id scattered, `per_source` each
    if lengths == "random":
        base = rng.integers(3, 60, n_rows // per_source + 1)
        lengths = base[codes] + rng.integers(0, 5, n_rows)  # translations: similar lengths
    elif lengths == "equal":
        lengths = np.full(n_rows, 7)
    return codes, lengths


# n_rows, rows per source id, global batch, world, bucket_batches, lengths, seed
SAMPLER_CASES = {
    "xnli-like": (3000, 15, 32, 8, 4, "random", 0),
    "tiny-like": (300, 6, 16, 4, 8, "random", 1),
    "unique-ids": (100, 1, 10, 2, 2, "random", 2),
    "no-grouping": (500, 15, 20, 4, 32, None, 3),
    "equal-lengths": (400, 5, 16, 2, 3, "equal", 4),
    "one-row-batches": (20, 4, 1, 1, 2, "random", 5),
    "fewer-ids-than-batch": (60, 15, 8, 2, 2, "random", 6),  # 4 ids: no batch of 8 is possible
    "fewer-rows-than-batch": (5, 1, 8, 1, 1, "random", 7),
    "one-bucket": (90, 3, 30, 3, 100, "random", 8),
    "negative-seed": (960, 15, 32, 4, 2, "random", -3),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(SAMPLER_CASES))
def test_sampler_contract(name):
    n, per, g, world, bb, lengths, seed = SAMPLER_CASES[name]
    codes, lengths = _case(n, per, abs(seed), lengths)

    def make(rank):
        return GlobalBatchSampler(codes, g, world_size=world, rank=rank, seed=seed, lengths=lengths, bucket_batches=bb)

    assert sampler_violations(make, n, codes, g, world) == []
    kept = len(make(0).global_batches(0)) * g
    n_ids = len(set(codes.tolist()))
    if n_ids < g:
        assert kept == 0  # no batch of g distinct ids exists
    elif n_ids >= 4 * g:  # many ids per batch: the rule costs few rows
        assert kept >= 0.9 * n, (kept, n)
    else:
        assert kept > 0


@pytest.mark.unit
def test_string_ids_and_codes_give_the_same_order():
    codes, lengths = _case(900, 15, 3)
    as_codes = GlobalBatchSampler(codes * 7 + 1000, 32, seed=4, lengths=lengths).global_batches(0)
    as_strings = GlobalBatchSampler([f"id-{c}" for c in codes], 32, seed=4, lengths=lengths).global_batches(0)
    assert np.array_equal(as_codes, as_strings)


class _NoPush(GlobalBatchSampler):
    """Broken: cuts length-sorted buckets and never moves repeated ids, nor checks them."""

    def _fill(self, items):
        g = self.global_batch
        items = items[np.argsort(self.lengths[items], kind="stable")]
        n = len(items) // g
        return items[: n * g].reshape(n, g), items[n * g :]


class _UnevenRanks(GlobalBatchSampler):
    """Broken: the last rank gets one row less."""

    def __iter__(self):
        for batch in super().__iter__():
            yield batch[:-1] if self.rank == self.world_size - 1 else batch


class _RowTwice(GlobalBatchSampler):
    """Broken: the second batch repeats a row of the first (ids stay unique inside each batch)."""

    def global_batches(self, epoch):
        batches = super().global_batches(epoch).copy()
        batches[1, 0] = batches[0, 0]
        return batches


class _Unseeded(GlobalBatchSampler):
    """Broken: the epoch order depends on a global random state, not only on (seed, epoch)."""

    def global_batches(self, epoch):
        batches = super().global_batches(epoch)
        return batches[np.random.permutation(len(batches))]


class _WrongDropped(GlobalBatchSampler):
    """Broken: reports no dropped rows."""

    def global_batches(self, epoch):
        batches = super().global_batches(epoch)
        self.dropped = 0
        return batches


BROKEN = {
    "no-push": (_NoPush, "a source id twice in one global batch"),
    "uneven-ranks": (_UnevenRanks, "a rank got a batch of the wrong size"),
    "row-twice": (_RowTwice, "a row twice in one epoch"),
    "unseeded": (_Unseeded, "not deterministic per (seed, epoch)"),
    "wrong-dropped": (_WrongDropped, "dropped 0 but"),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_property_checker_catches_a_broken_sampler(name):
    """Negative controls: each deliberately broken variant is caught, and names its rule."""
    cls, rule = BROKEN[name]
    codes, lengths = _case(3000, 15, 0)

    def make(rank):
        return cls(codes, 32, world_size=8, rank=rank, seed=0, lengths=lengths, bucket_batches=4)

    violations = sampler_violations(make, 3000, codes, 32, 8)
    assert any(v.startswith(rule) for v in violations), violations


@pytest.mark.unit
def test_final_check_breaks_up_batches_the_rounds_could_not_fix(monkeypatch):
    """With the repeat-pushing rounds switched off, the final check alone still keeps the rule."""
    codes, _ = _case(30_000, 15, 0)
    lengths = np.random.default_rng(0).integers(3, 60, len(codes))  # unrelated to the ids: some batches survive
    monkeypatch.setattr(GlobalBatchSampler, "_push_repeats", lambda self, items, codes: (items, codes, 0))
    s = GlobalBatchSampler(codes, 32, seed=0, lengths=lengths, bucket_batches=4)
    batches = s.global_batches(0)
    assert len(batches) > 0 and not repeated_in_rows(codes[batches]).any()
    assert s.dropped > 0  # the repeats it could not fix cost rows instead


@pytest.mark.unit
def test_length_grouping_keeps_batches_narrow():
    """Rows of a batch come from a narrow length range (their bucket, sorted): far narrower than
    ungrouped batches of the same rows."""
    codes, lengths = _case(20_000, 15, 1)

    def spread(sampler):
        b = lengths[sampler.global_batches(0)]
        return float(np.mean(b.max(axis=1) - b.min(axis=1)))

    grouped = spread(GlobalBatchSampler(codes, 128, seed=0, lengths=lengths, bucket_batches=32))
    plain = spread(GlobalBatchSampler(codes, 128, seed=0, bucket_batches=32))
    assert grouped < 0.25 * plain, (grouped, plain)


@pytest.mark.unit
def test_sampler_uses_arrays_not_per_row_objects():
    """2 x 10^5 rows (a tenth of XNLI): codes stay a numpy array; an epoch is one array."""
    codes, lengths = _case(200_000, 15, 2)
    s = GlobalBatchSampler(codes, 128, world_size=8, lengths=lengths)
    batches = s.global_batches(0)
    assert isinstance(s.codes, np.ndarray) and isinstance(batches, np.ndarray)
    assert batches.shape[1] == 128 and len(batches) * 128 + s.dropped == 200_000
    assert not repeated_in_rows(codes[batches]).any()


@pytest.mark.unit
def test_datasets_column_is_read_once_through_arrow(tmp_path):
    """Given the lazy ``datasets.Column`` (the old cause of the superlinear start-up), the
    sampler takes the Arrow column once instead of reading item by item."""
    ds = data.load_dataset(DataConfig(paths=["builtin:tiny_nli"], cache_dir=str(tmp_path)), seed=0)
    column = ds["source_id"]
    assert type(column).__name__ == "Column"
    from_column = GlobalBatchSampler(column, 16, seed=1).global_batches(0)
    from_list = GlobalBatchSampler(list(column), 16, seed=1).global_batches(0)
    assert np.array_equal(from_column, from_list)


# ------------------------------------------------------------------ JSONL block reader vs reference

GOOD = {"anchor": "a b", "positive": "c d", "negative": "e f"}


def _line(**kw) -> str:
    return json.dumps({**GOOD, **kw}, ensure_ascii=False)


READER_CASES = {
    "plain": "\n".join(_line(source_id=f"s{i}") for i in range(50)) + "\n",
    "no-source-ids": "\n".join(_line() for _ in range(20)) + "\n",
    "some-source-ids": "\n".join(_line(source_id="x") if i % 3 else _line() for i in range(20)) + "\n",
    "null-source-id": _line() + "\n" + json.dumps({**GOOD, "source_id": None}) + "\n",
    "int-source-id": _line(source_id=7) + "\n" + _line(source_id="7") + "\n",
    "blank-lines": _line() + "\n\n  \n" + _line() + "\n",
    "crlf": _line() + "\r\n" + _line() + "\r\n",
    "no-final-newline": _line() + "\n" + _line(),
    "bom": "\ufeff" + _line() + "\n",
    "two-objects-one-line": _line() + " " + _line() + "\n",
    "escaped-key": '{"anchor": "a", "positive": "b", "negative": "c", "source\\u005fid": "esc"}\n',
    "escaped-duplicate-key": '{"anchor": "a", "anch\\u006fr": "z", "positive": "b", "negative": "c"}\n',
    "unicode-whitespace": _line(anchor="\u3000 x \x1c", positive="\u2028y\xa0") + "\n",
    "unicode-escapes": json.dumps({**GOOD, "anchor": "Kätzchen 猫"}, ensure_ascii=True) + "\n",
    "extra-fields": json.dumps({**GOOD, "lang": "en", "meta": {"k": [1, None]}, "score": float("nan")}) + "\n",
    "empty-sentence": _line() + "\n" + _line(positive="   ") + "\n",
    "missing-field": _line() + '\n{"anchor": "a", "positive": "b"}\n',
    "wrong-type": _line() + "\n" + _line(anchor=5) + "\n",
    "invalid-json": _line() + "\n{not json\n",
    "not-an-object": _line() + "\n[1, 2]\n",
    "lone-surrogate-escape": '{"anchor": "a\\ud800", "positive": "b", "negative": "c"}\n',
    "lone-surrogate-source-id": _line()
    + '\n{"anchor": "a", "positive": "b", "negative": "c", "source_id": "\\udfff"}\n',
    "surrogate-pair-escape": '{"anchor": "a\\ud83d\\ude00", "positive": "b", "negative": "c"}\n',
}
READER_BYTES = {"invalid-utf8": (_line() + "\n").encode() + b'{"anchor": "x\xff", "positive": "b", "negative": "c"}\n'}


def _reference(path, skip_bad, need_negative=True, max_rows=None):
    """What the old in-memory path gave: the Python reader's rows (or its error)."""
    cfg = DataConfig(paths=[str(path)], skip_bad_rows=skip_bad, max_rows=max_rows)
    try:
        report = read_triplets(cfg, seed=0, need_negative=need_negative)
    except DataError as e:
        return "error", str(e)
    return "rows", [{c: r[c] for c in data.COLUMNS} for r in report.rows]


def _block_reader(path, tmp_path, skip_bad, need_negative=True, max_rows=None):
    cfg = DataConfig(paths=[str(path)], cache_dir=str(tmp_path / "cache"), skip_bad_rows=skip_bad, max_rows=max_rows)
    try:
        ds, _ = load_cached(cfg, seed=0, need_negative=need_negative)
    except DataError as e:
        return "error", str(e)
    finally:
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    return "rows", ds.to_list()


@pytest.mark.unit
@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("name", sorted([*READER_CASES, *READER_BYTES]))
def test_block_reader_equals_the_python_reader(tmp_path, monkeypatch, name, skip_bad):
    monkeypatch.setattr(data_blocks, "_BLOCK_BYTES", 97)  # many blocks: boundaries inside the cases too
    path = tmp_path / "in.jsonl"
    path.write_bytes(READER_BYTES[name] if name in READER_BYTES else READER_CASES[name].encode())
    assert _block_reader(path, tmp_path, skip_bad) == _reference(path, skip_bad)


@pytest.mark.unit
def test_block_reader_fuzz_equals_the_python_reader(tmp_path, monkeypatch):
    """Seeded random damage to valid lines: the block reader gives exactly the reference's rows,
    or the same one-line error naming file, line and field."""
    monkeypatch.setattr(data_blocks, "_BLOCK_BYTES", 311)
    rng = np.random.default_rng(0)
    base = [_line(source_id=f"s{i % 7}", anchor=f"w{i} \u00e9 x", lang=["en", 5][i % 2]).encode() for i in range(30)]
    noise = [b"", b" ", b"\n", b"\r", b'"', b",", b"\\", b"\\u0041", b"\xff", b"\xef\xbb\xbf", b"null", b"{}", b"\t"]
    for trial in range(60):
        lines = list(base)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(lines)))
            at = int(rng.integers(len(lines[i]) + 1))
            lines[i] = lines[i][:at] + noise[int(rng.integers(len(noise)))] + lines[i][at + 1 :]
        path = tmp_path / f"fuzz{trial}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        for skip_bad in (False, True):
            assert _block_reader(path, tmp_path, skip_bad) == _reference(path, skip_bad), (trial, skip_bad)


@pytest.mark.unit
def test_block_reader_max_rows_and_need_negative(tmp_path, monkeypatch):
    monkeypatch.setattr(data_blocks, "_BLOCK_BYTES", 200)
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(_line(source_id=f"s{i}") for i in range(40)) + "\n")
    assert _block_reader(path, tmp_path, False, max_rows=13) == _reference(path, False, max_rows=13)
    assert _block_reader(path, tmp_path, False, need_negative=False) == _reference(path, False, need_negative=False)


@pytest.mark.unit
def test_clean_blocks_take_the_arrow_path(tmp_path, monkeypatch):
    """Positive control that the fast path is used: clean data never reaches the Python reader,
    while a bad row does (and is named)."""
    calls = []
    real = data_blocks._python_block
    monkeypatch.setattr(data_blocks, "_python_block", lambda *a: calls.append(a[1]) or real(*a))
    monkeypatch.setattr(data_blocks, "_BLOCK_BYTES", 1000)
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(_line(source_id=f"s{i}") for i in range(60)) + "\n")
    _block_reader(path, tmp_path, False)
    assert calls == []
    path.write_text("\n".join(_line(source_id=f"s{i}", anchor="" if i == 42 else "a") for i in range(60)) + "\n")
    assert _block_reader(path, tmp_path, False) == ("error", f"{path}:43: field 'anchor': empty sentence")
    assert len(calls) == 1


@pytest.mark.unit
def test_python_whitespace_table_is_exact():
    assert "".join(ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace()) == data_blocks._PY_WHITESPACE


# ------------------------------------------------------------------ token lengths and source codes


@pytest.fixture(scope="module")
def tokenizers(tiny_base, minilm_path):
    from transformers import AutoTokenizer

    return {
        "tiny-mt5": AutoTokenizer.from_pretrained(str(tiny_base)),
        "minilm": AutoTokenizer.from_pretrained(str(minilm_path)),
    }


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory, shared_data):
    """The embedded set plus 1,500 XNLI dev triplets (15 languages), as one cached dataset."""
    from mst5_dist.data import read_xnli

    folder = tmp_path_factory.mktemp("ml")
    rows = read_jsonl(builtin_path("tiny_nli")).rows
    rows += read_xnli(shared_data / "xnli", "dev", None, cross_lingual=True, seed=1).rows[:1500]
    path = folder / "ml.jsonl"
    path.write_text("".join(json.dumps({c: r[c] for c in data.COLUMNS}, ensure_ascii=False) + "\n" for r in rows))
    return load_cached(DataConfig(paths=[str(path)], cache_dir=str(folder / "cache")), seed=0)


@pytest.mark.unit
@pytest.mark.parametrize("max_len", [8, 128])
@pytest.mark.parametrize("name", ["tiny-mt5", "minilm"])
def test_token_lengths_equal_the_tokenizer_call(tokenizers, multilingual, name, max_len):
    tok, (ds, _) = tokenizers[name], multilingual
    cols = ("anchor", "positive", "negative")
    got = data.token_lengths(ds, tok, max_len, cols)
    table = ds.to_dict()
    want = np.max(
        [[len(ids) for ids in tok(table[c], truncation=True, max_length=max_len)["input_ids"]] for c in cols], axis=0
    )
    assert got.dtype == np.int32 and np.array_equal(got, want)
    if max_len == 8:
        assert (got == 8).any()  # truncation bites


@pytest.mark.unit
def test_token_lengths_are_cached_once_per_tokenizer_length_and_columns(tokenizers, multilingual, monkeypatch):
    ds, folder = multilingual
    tiny, minilm = tokenizers["tiny-mt5"], tokenizers["minilm"]
    first = data.token_lengths(ds, tiny, 64, ("anchor", "positive"), folder)
    monkeypatch.setattr(data_lengths, "_compute_lengths", lambda *a: pytest.fail("recomputed a cached array"))
    assert np.array_equal(data.token_lengths(ds, tiny, 64, ("anchor", "positive"), folder), first)
    monkeypatch.undo()
    before = set(folder.glob("lengths-*.npy"))
    for tok, max_len, cols in [
        (minilm, 64, ("anchor", "positive")),
        (tiny, 32, ("anchor", "positive")),
        (tiny, 64, ("anchor",)),
    ]:
        data.token_lengths(ds, tok, max_len, cols, folder)
        after = set(folder.glob("lengths-*.npy"))
        assert len(after) == len(before) + 1  # another key: another file, never the wrong one
        before = after
    assert os.environ.get("TOKENIZERS_PARALLELISM") == "false"  # restored after the parallel pass


@pytest.mark.unit
def test_a_damaged_lengths_cache_is_recomputed(tokenizers, multilingual):
    ds, folder = multilingual
    tok = tokenizers["tiny-mt5"]
    good = data.token_lengths(ds, tok, 16, ("anchor",), folder)
    cached = data.lengths_cache_path(folder, len(ds), tok, 16, ("anchor",))
    assert np.array_equal(np.load(cached), good)
    np.save(cached, good[:-1])  # wrong shape, e.g. written for other rows
    assert np.array_equal(data.token_lengths(ds, tok, 16, ("anchor",), folder), good)
    cached.write_bytes(b"not an npy file")
    assert np.array_equal(data.token_lengths(ds, tok, 16, ("anchor",), folder), good)


@pytest.mark.unit
def test_tokenizer_fingerprint_follows_content_not_path(tmp_path, tiny_base, tokenizers):
    from transformers import AutoTokenizer

    copy = shutil.copytree(tiny_base, tmp_path / "moved")
    fp = data.tokenizer_fingerprint
    tiny = tokenizers["tiny-mt5"]
    tiny("make the wrapper set truncation on its backend", truncation=True, max_length=5)
    assert fp(AutoTokenizer.from_pretrained(str(copy))) == fp(tiny)
    assert fp(tokenizers["minilm"]) != fp(tiny)
    changed = AutoTokenizer.from_pretrained(str(copy))
    changed.add_tokens(["zzqx"])
    assert fp(changed) != fp(tiny)


@pytest.mark.unit
def test_source_codes_match_ids_and_are_cached(multilingual, monkeypatch):
    ds, folder = multilingual
    codes = data.source_codes(ds, folder)
    ids = ds["source_id"]
    ids = list(ids)
    first: dict[str, int] = {}
    assert all(first.setdefault(s, c) == c for s, c in zip(ids, codes.tolist(), strict=True))
    assert len(set(first.values())) == len(first)  # equal codes exactly for equal ids
    assert (folder / data.SOURCE_CODES).is_file()
    monkeypatch.setattr(data_cache, "encode_source_ids", lambda *a: pytest.fail("recomputed a cached array"))
    assert np.array_equal(data.source_codes(ds, folder), codes)


# ------------------------------------------------------------------ rank 0 first, real processes

_WORKER = r"""
import json, os, sys, time
import torch.distributed as dist
from pathlib import Path
rank, world, init, log, cache = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5]
fail_on_rank0 = sys.argv[6] == "fail"
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
from mst5_dist import data, distributed
from mst5_dist.config import DataConfig
from mst5_dist.data import lengths as data_lengths
from transformers import AutoTokenizer
computed = []
real = data_lengths._compute_lengths
data_lengths._compute_lengths = lambda *a: computed.append(1) or real(*a)
tok = AutoTokenizer.from_pretrained(sys.argv[7])
events = []
try:
    with distributed.main_process_first():
        events.append(("enter", time.time()))
        if fail_on_rank0 and rank == 0:
            raise RuntimeError("rank 0 failed")
        ds, folder = data.load_cached(DataConfig(paths=["builtin:tiny_nli"], cache_dir=cache), seed=0)
        lengths = data.token_lengths(ds, tok, 64, ("anchor", "positive", "negative"), folder)
        time.sleep(1.0 if rank == 0 else 0)
        events.append(("exit", time.time()))
    outcome = {"lengths": lengths.tolist()}
except RuntimeError as e:
    outcome = {"error": str(e)}
with open(log / f"rank{rank}.json", "w") as f:
    json.dump({"events": events, "computed": len(computed), **outcome}, f)
dist.destroy_process_group()
"""


def _launch_ranks(tmp_path, tiny_base, mode: str, world: int = 2) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world), init, str(tmp_path), str(tmp_path / "cache"), mode, str(tiny_base)],
            env=env, stderr=subprocess.PIPE, text=True,
        )
        for r in range(world)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def test_rank_zero_builds_the_cache_the_others_read(tmp_path, tiny_base):
    ranks = _launch_ranks(tmp_path, tiny_base, "ok")
    r0, r1 = ranks
    assert r1["events"][0][1] >= r0["events"][1][1]  # rank 1 entered after rank 0 left
    assert (r0["computed"], r1["computed"]) == (1, 0)  # only rank 0 tokenised
    assert r0["lengths"] == r1["lengths"] and len(r0["lengths"]) == 300


def test_rank_zero_failing_releases_the_others_at_once(tmp_path, tiny_base):
    """Negative control for the wait: rank 0 raises inside the block; rank 1 is let through at
    once (it then builds the cache itself) instead of waiting out the timeout."""
    start = time.time()
    r0, r1 = _launch_ranks(tmp_path, tiny_base, "fail")
    assert r0["error"] == "rank 0 failed" and r1["computed"] == 1 and len(r1["lengths"]) == 300
    assert time.time() - start < 200


# ------------------------------------------------------------------ the benchmark, kept alive


@pytest.mark.unit
def test_synthetic_data_is_xnli_like(tmp_path):
    path = data_startup.write_synthetic(tmp_path / "s.jsonl", 3000)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3000
    per_id: dict[str, int] = {}
    for r in rows:
        per_id[r["source_id"]] = per_id.get(r["source_id"], 0) + 1
    assert set(per_id.values()) == {15}
    scripts = {
        "latin": lambda s: any("a" <= c.lower() <= "z" for c in s),
        "cyrillic": lambda s: any("\u0400" <= c <= "\u04ff" for c in s),
        "cjk": lambda s: any("\u4e00" <= c <= "\u9fff" for c in s),
        "arabic": lambda s: any("\u0600" <= c <= "\u06ff" for c in s),
    }
    assert all(any(f(r["anchor"]) for r in rows) for f in scripts.values())
    words = np.array([len(r["anchor"].split()) for r in rows if r["lang"] == "en"])
    assert 10 < np.median(words) < 30  # premise-like lengths
    assert data_startup.write_synthetic(tmp_path / "t.jsonl", 3000).read_bytes() == path.read_bytes()


@pytest.mark.unit
def test_growth_exponent():
    assert data_startup.exponent([10, 100, 1000], [1.0, 10.0, 1000.0]) == pytest.approx([1.0, 2.0])


def test_benchmark_stages_run(tmp_path, tiny_base):
    """Every stage of benchmarks/data_startup.py, in this process on 3,000 rows, and its report
    (the subprocess driver is the slow test below)."""
    jsonl = data_startup.write_synthetic(tmp_path / "s.jsonl", 3000)
    cache, out = tmp_path / "cache", tmp_path / "run"
    results = {}
    for key, name, where in [
        ("load cold", "load", cache), ("load warm", "load", cache), ("lengths cold", "lengths", cache),
        ("lengths warm", "lengths", cache), ("sampler", "sampler", cache), ("legacy load", "legacy_load", tmp_path / "old"),
        ("legacy lengths", "legacy_lengths", cache), ("legacy sampler", "legacy_sampler", cache),
        ("train cold", "train", tmp_path / "train-cache"), ("train warm", "train", tmp_path / "train-cache"),
    ]:  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        results[key] = data_startup.stage(name, jsonl, where, tiny_base, out)
        assert results[key]["seconds"] >= 0 and results[key]["rss_mb"] > 0
    assert results["load cold"]["rows"] == results["legacy load"]["rows"] == 3000
    assert results["lengths cold"]["mean_length"] == pytest.approx(results["legacy lengths"]["mean_length"])
    assert results["sampler"]["batches"] > 0 and results["train warm"]["launch_to_step1"] > 0
    assert data.RowChecker.text.__name__ == "text"  # the legacy stage put the reader back
    data_startup.report([3000], {3000: results})


@pytest.mark.slow
def test_benchmark_quick_mode_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "data_startup.py"), "--quick", "--work", str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for stage in ("load", "token lengths", "sampler epoch order", "trainer: launch to end of step 1"):
        assert f"| {stage}" in out, out
    assert "growth exponent" in out and "before / now" in out and "peak RSS of any stage" in out
