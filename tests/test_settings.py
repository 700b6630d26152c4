"""No silent wrong result from a setting (issue 22, sections 4, 6 and 7): command-line numbers,
override values, the data cache key, invisible and repeated rows, ``mst5 embed``'s input, progress
and file mode, and the multinode SLURM launch line. Each case beside a negative control."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, mst5_cmd

from mst5_dist.cli import build_parser
from mst5_dist.config import DataConfig, load_config
from mst5_dist.data import DataError, GlobalBatchSampler, load_cached, source_codes
from mst5_dist.data import blocks as data_blocks
from mst5_dist.data.rows import ReadReport, RowChecker, iter_jsonl
from mst5_dist.errors import ConfigError
from mst5_dist.export.cli import read_texts
from mst5_dist.files import atomic_write_bytes

TINY = str(REPO / "configs" / "tiny.yaml")


def _row(anchor: str, positive: str = "p", negative: str = "n", **extra) -> str:
    return json.dumps({"anchor": anchor, "positive": positive, "negative": negative, **extra}, ensure_ascii=False)


# ------------------------------------------------------------------ command-line numbers

ARGS = {
    "embed": ["embed", "--model", "m", "--input", "i", "--output", "o"],
    "eval": ["eval", "--model", "m", "--data-dir", "d"],
    "export": ["export", "--model", "m", "--output", "o"],
    "import-adapter": ["import-adapter", "src", "--base", "b", "--output", "o"],
    "build-tiny": ["build-tiny"],
    "data": ["data", "download", "all"],
}


@pytest.mark.unit
@pytest.mark.parametrize(
    "command, option, value",
    [
        ("embed", "--batch-size", "-1"),  # wrote all-zero embeddings
        ("embed", "--batch-size", "0"),  # a traceback
        ("eval", "--batch-size", "-1"),  # NaN scores on an export
        ("eval", "--batch-size", "0"),
        ("eval", "--limit", "0"),
        ("eval", "--bucc-threshold", "nan"),
        ("export", "--opset", "-3"),
        ("import-adapter", "--max-seq-length", "0"),
        ("build-tiny", "--vocab-size", "-5"),
        ("data", "--timeout", "0"),
        ("embed", "--batch-size", "2.5"),
    ],
)
def test_a_bad_number_on_the_command_line_is_one_line_and_exit_2(command, option, value, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*ARGS[command], option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and f"argument {option}: expected a" in err and repr(value) in err, err


@pytest.mark.unit
@pytest.mark.parametrize(
    "command, option, value, expected",
    [
        ("embed", "--batch-size", "1", 1),
        ("eval", "--batch-size", "64", 64),
        ("eval", "--limit", "3", 3),
        ("eval", "--bucc-threshold", "-0.25", -0.25),
        ("import-adapter", "--max-seq-length", "512", 512),
        ("data", "--timeout", "0.5", 0.5),
    ],
)
def test_a_good_number_passes_unchanged(command, option, value, expected):
    args = build_parser().parse_args([*ARGS[command], option, value])
    assert getattr(args, option.lstrip("-").replace("-", "_")) == expected


# ------------------------------------------------------------------ override values


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, expected",
    [
        ("/x/run #2", "/x/run #2"),  # was cut at " #" to /x/run (a YAML comment)
        ("#2", "#2"),  # was null
        ("/x/run#2", "/x/run#2"),  # control: no comment either way
        ("'/x/run #2'", "/x/run #2"),  # control: quoted
        ("/x/plain", "/x/plain"),  # control
    ],
)
def test_an_override_value_keeps_every_character(text, expected):
    assert load_config(TINY, [f"train.output_dir={text}"]).train.output_dir == expected


@pytest.mark.unit
def test_a_number_followed_by_a_comment_is_refused_not_cut():
    assert load_config(TINY, ["optim.lr=2e-4"]).optim.lr == 2e-4  # control
    with pytest.raises(ConfigError, match=r"override 'optim.lr=2e-4 # try'"):
        load_config(TINY, ["optim.lr=2e-4 # try"])


@pytest.mark.unit
@pytest.mark.parametrize(
    "override, problem",
    [
        ("train.output_dir=!!python/object/apply:os.system ['touch PWNED']", "YAML tags"),
        ("train.output_dir=!foo x", "YAML tags"),
        ("train.seed=!!int 3", "YAML tags"),
        ("lora.target_modules=[q, v", "invalid YAML value"),
        ("train.output_dir={a: 1", "invalid YAML value"),
    ],
)
def test_a_yaml_tag_or_malformed_yaml_in_an_override_names_it(override, problem):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    assert f"override '{override}'" in str(e.value) and problem in str(e.value)
    assert "\n" not in str(e.value)


def test_a_tagged_override_exits_2_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    bad = f"train.output_dir=!!python/object/apply:os.system ['touch {marker}']"
    r = subprocess.run(mst5_cmd("train", "--config", TINY, bad), capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "YAML tags" in r.stderr, r.stderr
    assert not marker.exists()


# ------------------------------------------------------------------ the data cache key


def _cache(tmp_path: Path, data: Path) -> tuple[Path, list[str]]:
    cfg = DataConfig(paths=[str(data)], cache_dir=str(tmp_path / "cache"))
    ds, folder = load_cached(cfg, seed=0)
    return folder, list(ds["anchor"])


@pytest.mark.unit
def test_the_cache_notices_a_same_size_edit_with_its_old_mtime_restored(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(_row(f"old {i}", source_id=str(i)) for i in range(8)) + "\n")
    first, rows = _cache(tmp_path, data)
    assert rows[0] == "old 0"
    again, _ = _cache(tmp_path, data)
    assert again == first  # negative control: an untouched file reuses the cache
    st = data.stat()
    data.write_text(data.read_text().replace("old", "new"))  # same size
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, tar and rsync -a do
    assert data.stat().st_size == st.st_size and data.stat().st_mtime_ns == st.st_mtime_ns
    edited, rows = _cache(tmp_path, data)
    assert edited != first and rows[0] == "new 0"


# ------------------------------------------------------------------ invisible and repeated rows

INVISIBLE_ONLY = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", " \u200b\u00a0\u200d ", "\u2063\u180e"]


def _read_python(path: Path) -> list[dict]:
    return list(iter_jsonl(path, RowChecker(ReadReport(), skip_bad=False)))


def _read_blocks(path: Path) -> list[dict]:
    tables = data_blocks.jsonl_tables(path, True, RowChecker(ReadReport(), skip_bad=False))
    return [row for t in tables for row in t.to_pylist()]


@pytest.mark.unit
@pytest.mark.parametrize("read", [_read_python, _read_blocks], ids=["python", "arrow-blocks"])
@pytest.mark.parametrize("text", INVISIBLE_ONLY)
def test_an_invisible_only_sentence_is_an_empty_one(tmp_path, read, text):
    path = tmp_path / "d.jsonl"
    path.write_text(_row("fine") + "\n" + _row("ok", positive=text) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'positive': empty sentence"):
        read(path)


@pytest.mark.unit
@pytest.mark.parametrize("read", [_read_python, _read_blocks], ids=["python", "arrow-blocks"])
def test_a_sentence_with_a_visible_character_is_kept_as_written(tmp_path, read):
    path = tmp_path / "d.jsonl"
    path.write_text(_row("a\u200bb") + "\n" + _row(" \u200dx ") + "\n", encoding="utf-8")
    assert [r["anchor"] for r in read(path)] == ["a\u200bb", "\u200dx"]


@pytest.mark.unit
def test_exact_repeats_never_share_a_batch_but_are_kept(tmp_path, caplog):
    rows = [_row(f"a{i}", f"p{i}", f"n{i}", source_id=f"s{i}") for i in range(40)]
    rows += [_row("a0", "p0", "n0", source_id="other-id")] * 3  # three repeats of row 0, new ids
    rows.append(_row("a1", "p1", "other negative", source_id="s-x"))  # not exact: stays apart
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(paths=[str(data)], cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="mst5_dist"):
        ds, folder = load_cached(cfg, seed=0)
    assert "3 rows repeat another row exactly" in caplog.text
    codes = source_codes(ds, folder)
    assert len(ds) == 44  # nothing dropped
    twins = [0, 40, 41, 42]
    assert len(set(codes[twins].tolist())) == 1  # one group: never in one batch
    assert len(set(codes.tolist())) == 40 + 1  # control: row 43 keeps a group of its own
    for epoch in range(3):
        for batch in GlobalBatchSampler(codes, 8, seed=epoch).global_batches(epoch):
            assert len(set(batch.tolist()) & set(twins)) <= 1


@pytest.mark.unit
def test_distinct_rows_keep_their_source_groups(tmp_path, caplog):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(_row(f"a{i}", source_id=f"s{i // 2}") for i in range(10)) + "\n")
    with caplog.at_level("WARNING", logger="mst5_dist"):
        ds, folder = load_cached(DataConfig(paths=[str(data)], cache_dir=str(tmp_path / "c")), seed=0)
    assert "repeat another row" not in caplog.text
    assert source_codes(ds, folder).tolist() == [i // 2 for i in range(10)]


# ------------------------------------------------------------------ mst5 embed


@pytest.mark.unit
def test_a_lone_surrogate_in_an_embed_line_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "caf\\u00e9"}\n"fine"\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:3: field 'text': contains a lone surrogate"):
        read_texts(path)
    path.write_text('{"text": "caf\\u00e9"}\n"\\ud83d\\ude00"\n')  # control: a valid escaped pair
    assert read_texts(path) == ["café", "\U0001f600"]


@pytest.mark.unit
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_usual_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "x.npy", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "x.npy").stat().st_mode & 0o777 == mode


def _embed(onnx: Path, tmp_path: Path, n: int, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    texts = tmp_path / f"in{n}.txt"
    texts.write_text("".join(f"sentence number {i}\n" for i in range(n)))
    out = tmp_path / f"out{n}.npy"
    cmd = mst5_cmd("embed", "--model", str(onnx), "--input", str(texts), "--output", str(out), *extra)
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022))
    return r, out


def test_embed_refuses_a_bad_batch_size_and_shows_progress_with_the_usual_mode(tiny_onnx, tmp_path):
    r, out = _embed(tiny_onnx, tmp_path, 5, "--batch-size", "-1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--batch-size" in r.stderr, r.stderr
    assert not out.exists()
    r, out = _embed(tiny_onnx, tmp_path, 40, "--batch-size", "2")  # 20 batches: 2 parts of 32 and 8
    assert r.returncode == 0, r.stderr
    assert "embedded 32/40 texts (80%)" in r.stderr and "embedded 40/40 texts (100%)" in r.stderr
    emb = np.load(out)
    assert emb.shape[0] == 40 and np.all(np.abs(np.linalg.norm(emb, axis=1) - 1) < 1e-3)
    assert out.stat().st_mode & 0o777 == 0o644
    r, small = _embed(tiny_onnx, tmp_path, 6, "--batch-size", "2")  # control: short input, no parts
    assert r.returncode == 0 and "embedded" not in r.stderr, r.stderr
    np.testing.assert_allclose(np.load(small), emb[:6], atol=1e-5)  # parts change no row


# ------------------------------------------------------------------ SLURM multinode launch line


def _launch_line(tmp_path: Path, master_addr: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The per-node command of slurm/train_multinode.sbatch without SLURM: a stub ``srun`` runs
    the node's ``bash -c`` string once (node 0), which prints the launch line (MST5_DRY_RUN)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (stubs / "srun").chmod(0o755)
    env = {
        **os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "MST5_REPO": str(REPO),
        "PYTHONPATH": str(REPO), "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7",
        "MST5_DRY_RUN": "1", "MST5_PROCS_PER_NODE": "1", "MASTER_ADDR": master_addr,
    }  # fmt: skip
    args = ["--config", "c.yaml", "train.output_dir=/x/a b"]
    script = str(REPO / "slurm" / "train_multinode.sbatch")
    r = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    line = [ln for ln in r.stdout.splitlines() if "accelerate launch" in ln]
    return r, shlex.split(line[0].split("] ", 1)[1]) if line else []


@pytest.mark.parametrize(
    "master_addr",
    ["h$(touch {marker})", "h`touch {marker}`;touch {marker}", "node 1 'quoted' \"x\"", "10.0.0.5"],
    ids=["command-substitution", "backticks-and-semicolon", "spaces-and-quotes", "plain-control"],
)
def test_master_addr_reaches_the_trainer_unchanged_and_runs_nothing(tmp_path, master_addr):
    marker = tmp_path / "PWNED"
    addr = master_addr.format(marker=marker)
    r, argv = _launch_line(tmp_path, addr)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists()
    assert argv[argv.index("--main_process_ip") + 1] == addr
    assert argv[argv.index("--main_process_port") + 1] == "20007"
    assert argv[-4:] == ["c.yaml", "train.output_dir=/x/a b", "--resume", "latest"]
