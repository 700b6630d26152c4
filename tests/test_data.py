import json
import re
import subprocess
from collections import Counter

import pytest
from conftest import REPO, mst5_cmd

from mst5_dist.config import ConfigError, DataConfig
from mst5_dist.data import (
    DataError,
    GlobalBatchSampler,
    read_csv,
    read_jsonl,
    read_snli,
    read_triplets,
    read_xnli,
)
from mst5_dist.tiny_default import builtin_path


@pytest.mark.unit
def test_embedded_set_shape():
    rows = read_jsonl(builtin_path("tiny_nli")).rows
    assert len(rows) >= 300
    per_source = Counter(r["source_id"] for r in rows)
    assert len(per_source) >= 50 and set(per_source.values()) == {6}
    langs = {json.loads(line)["lang"] for line in builtin_path("tiny_nli").read_text().splitlines()}
    assert len(langs) >= 5


@pytest.mark.unit
def test_snli_real_rows(shared_data):
    report = read_snli(shared_data / "nli" / "snli_1.0_dev.jsonl")
    assert len(report.rows) > 300
    r = report.rows[0]
    assert r["anchor"] and r["positive"] and r["negative"] and r["source_id"].startswith("snli:")


@pytest.mark.unit
def test_xnli_cross_lingual_draws_other_languages(shared_data):
    langs = ["en", "de", "ru", "zh", "ar"]
    mono = read_xnli(shared_data / "xnli", "dev", langs, cross_lingual=False, seed=0).rows
    cross = read_xnli(shared_data / "xnli", "dev", langs, cross_lingual=True, seed=0).rows
    assert len(mono) == len(cross) == 5 * 830  # 830 premises with both labels in XNLI dev

    # in monolingual mode the anchor and positive share a script; cross-lingual mixes them
    def has_cjk(s):
        return any("\u4e00" <= c <= "\u9fff" for c in s)

    mixed = sum(has_cjk(r["anchor"]) != has_cjk(r["positive"]) for r in cross)
    assert sum(has_cjk(r["anchor"]) != has_cjk(r["positive"]) for r in mono) == 0
    assert mixed > 0.2 * len(cross)


@pytest.mark.unit
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_source_id_rule_on_real_xnli(shared_data, world_size):
    """No two rows of one source example in one GLOBAL batch, on every batch of a real run."""
    rows = read_xnli(shared_data / "xnli", "dev", None, cross_lingual=True, seed=3).rows  # 15 languages
    sids = [r["source_id"] for r in rows]
    lengths = [len(r["anchor"]) for r in rows]
    ranks = [
        GlobalBatchSampler(sids, 128, world_size=world_size, rank=k, seed=7, lengths=lengths) for k in range(world_size)
    ]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1  # every rank sees the same number of batches
    assert len(per_rank[0]) * 128 >= 0.95 * len(rows)  # the source-id rule drops few rows
    for step in zip(*per_rank):
        assert {len(local) for local in step} == {128 // world_size}  # equal per-rank batches
        global_batch = [i for local in step for i in local]
        assert len({sids[i] for i in global_batch}) == len(global_batch)


@pytest.mark.unit
def test_sampler_is_deterministic_and_resumable():
    sids = [f"s{i // 3}" for i in range(300)]
    s = GlobalBatchSampler(sids, 16, seed=1, lengths=[i % 17 for i in range(300)])
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=5)
    assert list(s) == full[5:]
    s.set_epoch(3)
    assert list(s) != full


@pytest.mark.unit
def test_length_grouping_cuts_padding():
    rows = read_jsonl(builtin_path("tiny_nli")).rows
    sids = [r["source_id"] for r in rows]
    lengths = [max(len(r[c]) for c in ("anchor", "positive", "negative")) for r in rows]

    def padding(sampler):
        pad = total = 0
        for b in sampler:
            m = max(lengths[i] for i in b)
            pad += sum(m - lengths[i] for i in b)
            total += m * len(b)
        return pad / total

    grouped = padding(GlobalBatchSampler(sids, 16, seed=0, lengths=lengths, bucket_batches=8))
    plain = padding(GlobalBatchSampler(sids, 16, seed=0))
    assert grouped < 0.5 * plain


# ------------------------------------------------------------------ bad input, named precisely

BAD_CASES = {
    "jsonl-missing-field": (
        "jsonl",
        b'{"anchor": "a b", "positive": "c d", "negative": "e f"}\n{"anchor": "a", "positive": "b"}\n',
        r":2: field 'negative': missing",
    ),
    "jsonl-empty-sentence": (
        "jsonl",
        b'{"anchor": "a b", "positive": "  ", "negative": "e f"}\n',
        r":1: field 'positive': empty sentence",
    ),
    "jsonl-bad-utf8": (
        "jsonl",
        b'{"anchor": "ok", "positive": "ok2", "negative": "bad \xff\xfe"}\n',
        r":1: field 'negative': contains bytes that are not valid UTF-8",
    ),
    "csv-missing-field": ("csv", b"sent0,sent1,hard_neg\nx,y,z\nx,y\n", r":3: field 'hard_neg': missing"),
    "csv-bad-utf8": ("csv", b"sent0,sent1,hard_neg\nx,\xc3\x28,z\n", r":2: field 'sent1': contains bytes"),
    "snli-unknown-label": (
        "snli",
        b'{"gold_label": "entails", "sentence1": "a", "sentence2": "b"}\n',
        r":1: field 'gold_label': unknown label 'entails'",
    ),
    "snli-empty": (
        "snli",
        b'{"gold_label": "entailment", "sentence1": "", "sentence2": "b"}\n',
        r":1: field 'sentence1': empty sentence",
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_line_field(tmp_path, case):
    fmt, content, message = BAD_CASES[case]
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(content)
    reader = {"jsonl": read_jsonl, "csv": read_csv, "snli": read_snli}[fmt]
    with pytest.raises(DataError, match=rf"bad\.{fmt}{message}"):
        reader(path)


@pytest.mark.unit
def test_xnli_bad_label_and_bytes(tmp_path):
    good = "P one\tH one\tentailment\nP one\tH two\tcontradiction\n"
    (tmp_path / "dev-en.tsv").write_text(good)
    (tmp_path / "dev-de.tsv").write_bytes(b"P eins\tH eins\tentailment\nP eins\tH zwei\tcontra\n")
    with pytest.raises(DataError, match=r"dev-de\.tsv:2: field 'label': unknown label 'contra'"):
        read_xnli(tmp_path, "dev", ["en", "de"])
    (tmp_path / "dev-de.tsv").write_bytes(b"P eins\tH \xff eins\tentailment\nP eins\tH zwei\tcontradiction\n")
    with pytest.raises(DataError, match=r"dev-de\.tsv:1: field 'hypothesis': contains bytes"):
        read_xnli(tmp_path, "dev", ["en", "de"])


@pytest.mark.unit
def test_skip_bad_rows_reports_count(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = {"anchor": "a b", "positive": "c d", "negative": "e f"}
    path.write_text("\n".join([json.dumps(good), '{"anchor": ""}', "not json", json.dumps(good)]) + "\n")
    report = read_triplets(DataConfig(format="jsonl", paths=[str(path)], skip_bad_rows=True), seed=0)
    assert len(report.rows) == 2 and report.skipped == 2
    assert "mixed.jsonl:2" in report.errors[0] and "mixed.jsonl:3" in report.errors[1]


@pytest.mark.parametrize("case", ["jsonl-missing-field", "jsonl-bad-utf8", "snli-unknown-label"])
def test_cli_bad_input_fails_cleanly_and_writes_nothing(tmp_path, tiny_base, case):
    fmt, content, _message = BAD_CASES[case]
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(content)
    out = tmp_path / "run"
    proc = subprocess.run(
        mst5_cmd(
            "train",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            f"model.name_or_path={tiny_base}",
            f"data.format={fmt}",
            f"data.paths=[{path}]",
            f"train.output_dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mst5 train: error:") and str(path) in last
    assert not out.exists()  # no partial output
    assert not any((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def _odd_jsonl(shared_data, folder):
    """Rows with odd whitespace and unicode (read by Arrow), a real JSONL file (the embedded set,
    then SNLI dev triplets), and last the rows Arrow leaves to the Python fallback: an integer or
    missing source id, an ASCII escape, bad rows."""
    good = {"anchor": "a b", "positive": "c d", "negative": "e f"}
    odd = [
        {**good, "anchor": "\u3000 Kätzchen 猫 \x1c", "positive": "\u2028y\xa0", "source_id": "odd"},
        {**good, "anchor": "\t tab and newline\n", "negative": "emoji 😀 \u200a", "source_id": "odd"},
    ]
    fallback = [
        {**good, "source_id": 7},  # kept (as "7"), but Arrow cannot read it as a string
        {**good, "positive": "   "},  # empty sentence
        {"anchor": "no negative", "positive": "b"},  # missing field
        {**good, "anchor": 5},  # wrong type
    ]
    snli = read_snli(shared_data / "nli" / "snli_1.0_dev.jsonl").rows[:400]
    lines = [json.dumps(r, ensure_ascii=False) for r in odd]
    lines += builtin_path("tiny_nli").read_text().splitlines()
    lines += [json.dumps(r, ensure_ascii=False) for r in snli + fallback]
    lines += ["{not json", '{"anchor": "\\u0041bc \\u00e9", "positive": "p", "negative": "n"}', json.dumps(good)]
    path = folder / "real-and-odd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("skip_bad", [True, False])
def test_block_reader_rows_equal_the_python_reference(tmp_path, shared_data, monkeypatch, skip_bad):
    """The cached dataset (JSONL block reader into Arrow) against the Python reference reader on
    the same file, with small blocks so that both the Arrow path and its fallback run."""
    from mst5_dist.data import blocks, load_dataset

    path = _odd_jsonl(shared_data, tmp_path)
    monkeypatch.setattr(blocks, "_BLOCK_BYTES", 8192)
    python_blocks = []
    real = blocks._python_block
    monkeypatch.setattr(blocks, "_python_block", lambda *a: python_blocks.append(a[1]) or real(*a))
    cfg = DataConfig(paths=[str(path)], skip_bad_rows=skip_bad, cache_dir=str(tmp_path / "cache"))
    if not skip_bad:
        with pytest.raises(DataError) as reference:
            read_triplets(cfg, seed=0)
        with pytest.raises(DataError, match=re.escape(str(reference.value))):
            load_dataset(cfg, seed=0)
        assert not list((tmp_path / "cache").rglob("dataset_info.json"))  # nothing a later run would trust
        return
    want = [{c: r[c] for c in ("anchor", "positive", "negative", "source_id")} for r in read_triplets(cfg, 0).rows]
    got = load_dataset(cfg, seed=0).to_list()
    n_blocks = len(list(blocks._jsonl_blocks(path)))
    assert 0 < len(python_blocks) < n_blocks  # both paths ran: most blocks through Arrow
    assert len(got) == len(want) > 700
    assert got == want


def test_new_seed_reuses_seed_free_caches(tmp_path, shared_data):
    """Only a format whose rows follow the seed keys its cache by it: JSONL under two seeds shares
    one cache folder (no re-parse); XNLI cross-lingual sampling gets one per seed."""
    from mst5_dist.data import load_cached

    jsonl = DataConfig(paths=["builtin:tiny_nli"], cache_dir=str(tmp_path / "cache"))
    ds0, folder0 = load_cached(jsonl, seed=0)
    ds1, folder1 = load_cached(jsonl, seed=1)
    assert folder1 == folder0 and ds1.cache_files == ds0.cache_files
    xnli = DataConfig(
        format="xnli", paths=[str(shared_data / "xnli")], languages=["en", "de"], cache_dir=str(tmp_path / "cache")
    )
    (x0, xfolder0), (x1, xfolder1) = load_cached(xnli, seed=0), load_cached(xnli, seed=1)
    assert xfolder0 != xfolder1 and x0.to_dict() != x1.to_dict()
    assert xfolder0 != folder0


def test_formats_come_from_the_registry(tmp_path):
    """One lookup by ``data.format``: an unknown name is a config error listing the registered
    ones, and a registered reader (as a new module would add) is what reads."""
    from mst5_dist.data import formats, load_dataset

    with pytest.raises(ConfigError, match=r"data\.format: unknown format 'tsv'.*csv, hub, jsonl, snli, xnli"):
        read_triplets(DataConfig(format="tsv"), seed=0)

    @formats.register("shout")
    class Shout(formats.Format):
        def read(self, source, cfg, seed, need_negative, check):
            return [
                {"anchor": f"{source.name} {i}", "positive": "P", "negative": "N", "source_id": str(i)}
                for i in range(5)
            ]

    try:
        cfg = DataConfig(format="shout", paths=[str(tmp_path / "a"), str(tmp_path / "b")], max_rows=7)
        rows = read_triplets(cfg, seed=0).rows
        assert [r["anchor"] for r in rows] == [f"a {i}" for i in range(5)] + ["b 0", "b 1"]
        cfg.cache_dir = str(tmp_path / "cache")
        assert load_dataset(cfg, seed=0).to_list() == rows
    finally:
        formats.unregister("shout")
