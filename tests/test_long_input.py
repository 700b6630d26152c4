"""Memory on long input (issue 22, section 5). Every tokenizer call with truncation goes through
``model.batching.tokenize_truncated``, which cuts a long text to a prefix first
(``bounded_texts``): a 50 MB sentence costs what ``max_seq_length`` tokens cost, not the 250 to 460
bytes of RAM per input byte of tokenising it whole. The cut must change no token: that is proved
on real text in many scripts, against a naive cut and a cut without margin that do change some.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO, TINY_CONFIG, mst5_cmd

from mst5_dist.collate import BatchCollator
from mst5_dist.data import lengths as data_lengths
from mst5_dist.model import batching
from mst5_dist.objectives.base import Collated

MiB = 1 << 20
# ------------------------------------------------------------------ real text in many scripts

# (name, file under shared/data, tab column or None): spaced scripts, long-word languages (German,
# Finnish), scripts without spaces (Chinese, Japanese, Thai), Hangul, Arabic, Devanagari, Cyrillic.
SOURCES = [
    ("eng", "tatoeba/tatoeba.deu-eng.eng", None),
    ("deu", "tatoeba/tatoeba.deu-eng.deu", None),
    ("fin", "tatoeba/tatoeba.fin-eng.fin", None),
    ("tha", "tatoeba/tatoeba.tha-eng.tha", None),
    ("cmn", "tatoeba/tatoeba.cmn-eng.cmn", None),
    ("jpn", "tatoeba/tatoeba.jpn-eng.jpn", None),
    ("kor", "tatoeba/tatoeba.kor-eng.kor", None),
    ("ara", "tatoeba/tatoeba.ara-eng.ara", None),
    ("hin", "tatoeba/tatoeba.hin-eng.hin", None),
    ("rus", "tatoeba/tatoeba.rus-eng.rus", None),
    ("zh", "bucc2018/zh-en.dev.zh", 1),
]
# How consecutive lines are joined into one long text: spaces; nothing (words run across line
# ends); an emoji ZWJ sequence between spaces; an emoji glued to the words.
JOINS = {"spaced": " ", "glued": "", "zwj-emoji": " 👨\u200d👩\u200d👧\u200d👦 ", "emoji": "🙂"}
LINES_PER_TEXT = 100
MAX_LENGTHS = (1, 2, 5, 16, 61, 128, 256)  # 1: below BERT's two special tokens (no truncation at all)


@pytest.fixture(scope="module")
def documents(shared_data) -> list[tuple[str, str]]:
    """(name, long text) per source and join, and per source one run of letters alone (a word of
    thousands of characters: WordPiece makes a word over 100 characters one [UNK])."""
    docs = []
    for name, rel, column in SOURCES:
        rows = (shared_data / rel).read_text(encoding="utf-8").splitlines()
        rows = [r.split("\t")[column] if column is not None else r for r in rows]
        for k, (join_name, sep) in enumerate(JOINS.items()):
            docs.append((f"{name}/{join_name}", sep.join(rows[k * LINES_PER_TEXT : (k + 1) * LINES_PER_TEXT])))
        docs.append((f"{name}/one-word", "".join(ch for ch in " ".join(rows[:LINES_PER_TEXT]) if ch.isalnum())))
    return docs


def _tokenizer(request, model: str, fast: bool):
    from transformers import AutoTokenizer

    folder = request.getfixturevalue("tiny_base" if model == "tiny-mt5" else "minilm_path")
    return AutoTokenizer.from_pretrained(str(folder), use_fast=fast)


def _differing(tok, texts, cut, max_len) -> int:
    whole = tok(texts, truncation=True, max_length=max_len)["input_ids"]
    return sum(a != b for a, b in zip(whole, tok(cut, truncation=True, max_length=max_len)["input_ids"]))


TOKENIZERS = [("tiny-mt5", True), ("tiny-mt5", False), ("all-MiniLM-L6-v2", True), ("all-MiniLM-L6-v2", False)]


@pytest.mark.unit
@pytest.mark.parametrize(("model", "fast"), TOKENIZERS)
def test_cut_texts_give_exactly_the_tokens_of_the_whole_texts(request, model, fast, documents, monkeypatch):
    """Each first cut (1, 3 or 8 characters per token needed) and max length: the token ids of the
    cut texts equal those of the whole texts, truncated. Negative controls on the same texts: a
    fixed cut at 3 characters per token, and the same doubling cut without the token margin (the
    word the cut ends inside tokenises differently), each change some text's tokens."""
    tok = _tokenizer(request, model, fast)
    names, texts = zip(*documents)
    cuts = naive_differ = unmargined_differ = 0
    for max_len in MAX_LENGTHS:
        whole = tok(list(texts), truncation=True, max_length=max_len)["input_ids"]
        for chars in (1, 3, 8):
            monkeypatch.setattr(batching, "CUT_CHARS_PER_TOKEN", chars)
            cut = batching.bounded_texts(tok, texts, max_len)
            cuts += sum(len(c) < len(t) for c, t in zip(cut, texts))
            got = tok(cut, truncation=True, max_length=max_len)["input_ids"]
            wrong = [n for n, a, b in zip(names, whole, got) if a != b]
            assert not wrong, f"max_length {max_len}, first cut {chars} chars/token: tokens differ for {wrong}"
            monkeypatch.setattr(batching, "CUT_MARGIN_TOKENS", 0)
            unmargined_differ += _differing(tok, texts, batching.bounded_texts(tok, texts, max_len), max_len)
            monkeypatch.undo()
        naive_differ += _differing(tok, texts, [t[: 3 * max_len] for t in texts], max_len)
    assert cuts > len(texts) * len(MAX_LENGTHS)  # the texts were cut, mostly more than once
    assert naive_differ > 0, "the naive cut changed nothing: the texts cannot show a wrong cut"
    assert unmargined_differ > 0, "the cut without margin changed nothing: the margin is untested"


@pytest.mark.unit
def test_a_text_that_vanishes_in_tokenisation_is_read_only_to_the_bound(tiny_base, caplog):
    """Spaces collapse to nothing: doubling would end at the whole text (its whole size in memory).
    It stops at ``need x CUT_MAX_CHARS_PER_TOKEN`` characters, with a warning; a text with enough
    tokens (the control) is cut as before, without one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    need = 16 + batching.CUT_MARGIN_TOKENS
    limit = need * batching.CUT_MAX_CHARS_PER_TOKEN
    blank = "word" + " " * (3 * limit) + "end"
    normal = "The cat sleeps on the sofa. " * 2000
    seen: list[int] = []

    def recording(texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return tok(texts, **kwargs)

    recording.truncation_side, recording.num_special_tokens_to_add = "right", tok.num_special_tokens_to_add
    with caplog.at_level("WARNING", logger="mst5_dist"):
        cut = batching.bounded_texts(recording, [blank, normal], 16)
    assert len(cut[0]) == limit and max(seen) <= limit < len(blank)
    assert "text 0: its first" in caplog.text and "text 1" not in caplog.text
    assert cut[1] == batching.bounded_texts(tok, [normal], 16)[0] and len(cut[1]) < len(normal)


@pytest.mark.unit
def test_short_texts_and_untruncating_tokenizers_keep_the_whole_text(tiny_base):
    """A text under the first cut is the same object; a tokenizer that truncates on the left, or a
    max length below its special tokens (no truncation at all), keeps every text whole."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    short, long = "The cat sleeps.", "The cat sleeps on the sofa. " * 2000
    kept = batching.bounded_texts(tok, [short, long], 16)
    assert kept[0] is short and len(kept[1]) < len(long)  # control: the long text is cut
    assert batching.bounded_texts(tok, [long], 0) == [long]  # T5 adds one special token: 0 < 1
    tok.truncation_side = "left"
    assert batching.bounded_texts(tok, [long], 16) == [long]
    assert (
        tok(long, truncation=True, max_length=16)["input_ids"]
        == batching.tokenize_truncated(tok, [long], 16)["input_ids"][0]
    )


# ------------------------------------------------------------------ every call site is bounded


class Spy:
    """A tokenizer (or Rust backend) that records the longest text it is handed."""

    def __init__(self, inner) -> None:
        self.inner, self.longest = inner, 0

    def _seen(self, texts) -> None:
        self.longest = max([self.longest] + [len(t) for t in ([texts] if isinstance(texts, str) else texts)])

    def __call__(self, texts, *args, **kwargs):
        self._seen(texts)
        return self.inner(texts, *args, **kwargs)

    def encode_batch(self, texts, *args, **kwargs):
        self._seen(texts)
        return self.inner.encode_batch(texts, *args, **kwargs)

    encode_batch_fast = encode_batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _collate(tok, texts, max_len):
    objective = SimpleNamespace(collate=lambda rows: Collated(texts=[r["anchor"] for r in rows]))
    collator = BatchCollator(tok, max_len, objective, chunker=lambda ids: [list(x) for x in ids])
    return collator([{"anchor": t, "source_id": str(i)} for i, t in enumerate(texts)]).encode


def _lengths(tok, texts, max_len):
    from datasets import Dataset

    return data_lengths.token_lengths(Dataset.from_dict({"anchor": texts}), tok, max_len, ("anchor",)).tolist()


def _encode_batched(tok, texts, max_len):
    out, stats = batching.encode_batched(
        tok, texts, lambda ids, mask: ids[:, :4].astype(float), dim=4, max_length=max_len
    )
    return out.tolist(), stats


CALL_SITES = {  # name -> (call(tokenizer, texts, max_len), reference from the whole texts)
    "collate": (_collate, lambda tok, texts, n: [list(x) for x in tok(texts, truncation=True, max_length=n)["input_ids"]]),
    "token_lengths": (_lengths, lambda tok, texts, n: [len(x) for x in tok(texts, truncation=True, max_length=n)["input_ids"]]),
    "encode_batched": (_encode_batched, None),
}  # fmt: skip


@pytest.mark.unit
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("site", sorted(CALL_SITES))
def test_every_call_site_hands_the_tokenizer_a_bounded_text(tiny_base, site, fast, monkeypatch):
    """A 1.5 M-character text reaches the tokenizer (and the Rust backend token_lengths counts
    with) as a prefix of a few thousand characters, and the result is the whole text's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base), use_fast=fast)
    texts = ["Die Katze schläft auf dem Sofa. 猫がソファで寝ている。" * 30_000, "The cat sleeps."]
    call, reference = CALL_SITES[site]
    spy = Spy(tok)
    backends = []
    copy = data_lengths._backend_copy
    monkeypatch.setattr(data_lengths, "_backend_copy", lambda t: backends.append(Spy(copy(t))) or backends[-1])
    got = call(spy, texts, 64)
    if reference is None:  # encode_batched: compare with the same call on the whole texts
        monkeypatch.setattr(batching, "CUT_CHARS_PER_TOKEN", 10**12)
        expected, longest = call(tok, texts, 64), len(texts[0])
    else:
        expected, longest = reference(tok, texts, 64), len(texts[0])
    assert got == expected
    seen = max([spy.longest] + [b.longest for b in backends])
    assert 0 < seen <= 64 * (64 + batching.CUT_MARGIN_TOKENS) < longest / 10


@pytest.mark.unit
def test_no_tokenizer_call_truncates_outside_the_one_bounded_function():
    """A call with ``truncation=True`` anywhere but ``model/batching.py`` would tokenise whole texts
    again (the section 5 regression); the scan finds the one call it allows (control)."""
    found = []
    for path in sorted((REPO / "mst5_dist").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and any(
                k.arg == "truncation" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            ):
                found.append(path.relative_to(REPO).as_posix())
    assert "mst5_dist/model/batching.py" in found
    assert set(found) == {"mst5_dist/model/batching.py"}, found


# ------------------------------------------------------------------ peak memory of the commands


def _long_line(documents, n_bytes: int) -> str:
    """Real multilingual text (every script and join above), repeated to ``n_bytes`` of UTF-8."""
    unit = " ".join(text for _, text in documents)
    text = unit * (n_bytes // len(unit.encode()) + 1)
    return text.encode()[:n_bytes].decode("utf-8", "ignore")


# Runs the command as its child and writes the child's peak RSS (KiB) to argv[1]. The measuring
# process must be small: a child's peak starts at the size of the process it was forked from
# (Linux keeps the larger RSS across exec), and pytest here is ~0.8 GB.
_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def _measured(cmd: list[str], cwd: Path, *, uncut: bool = False, timeout: float = 300) -> tuple[int, str, int, float]:
    """(exit code, stderr, peak RSS in bytes, seconds) of ``cmd`` (an ``mst5_cmd``); ``uncut``
    disables the cut (the old path: every text tokenised whole) in that process."""
    if uncut:
        patch = "import sys, mst5_dist.model.batching as b; b.CUT_CHARS_PER_TOKEN = 10**15; "
        cmd = [sys.executable, "-c", patch + "from mst5_dist.cli import main; sys.exit(main(sys.argv[1:]))", *cmd[3:]]
    peak = cwd / "peak_rss_kib.txt"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(peak), *cmd],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stderr, int(peak.read_text()) * 1024, time.monotonic() - start


def _embed_measured(model: Path, folder: Path, texts: list[str], *, uncut: bool = False):
    folder.mkdir()
    inp = folder / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    cmd = mst5_cmd("embed", "--model", str(model), "--input", str(inp), "--output", str(folder / "out.npy"))
    code, err, peak, seconds = _measured(cmd, folder, uncut=uncut)
    assert code == 0, err[-2000:]
    return np.load(folder / "out.npy"), peak, seconds


def test_embed_of_a_50mb_line_stays_under_1_5_gb(tiny_onnx, documents, tmp_path):
    """Before: the whole line tokenised, ~250 bytes per byte (12 GB here; the issue's run was
    killed at 23.4 GB). Bound: the process alone (onnxruntime, transformers) takes ~0.3 GB and
    the line is held a few times as bytes and str (~0.1-0.25 GB): 1.5 GB leaves room, and is
    an eighth of the old path's need. The line embeds as its 100,000-character prefix does (the
    cut changes no token), and not as a short sentence (control)."""
    line = _long_line(documents, 50_000_000)
    emb, peak, seconds = _embed_measured(tiny_onnx, tmp_path / "e", [line, line[:100_000], "The cat sleeps."])
    assert peak < 1.5 * 1024 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    assert seconds < 120, f"{seconds:.0f} s"
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)
    assert np.abs(emb[0] - emb[2]).max() > 1e-2


def test_embed_memory_grew_with_the_line_before_the_cut(tiny_onnx, documents, tmp_path):
    """Negative control at 2 MB (never the uncut path on a big line): tokenised whole, the line
    costs over 75 bytes of RAM per byte more than with the cut (measured: ~150); the embeddings
    are the same either way."""
    line = _long_line(documents, 2_000_000)
    cut, cut_peak, _ = _embed_measured(tiny_onnx, tmp_path / "cut", [line])
    whole, whole_peak, _ = _embed_measured(tiny_onnx, tmp_path / "whole", [line], uncut=True)
    assert whole_peak - cut_peak > 75 * len(line.encode()), (whole_peak / MiB, cut_peak / MiB)
    np.testing.assert_allclose(cut, whole, atol=1e-6)


def _train_measured(base: Path, documents, folder: Path, n_bytes: int, *, uncut: bool = False):
    """One training step of the tiny model on 32 rows (one global batch: every row is in it), the
    first with a ``n_bytes`` anchor; (peak RSS, seconds, the step's loss)."""
    rows = [json.loads(r) for r in (REPO / "mst5_dist/resources/tiny_nli.jsonl").read_text().splitlines()[:32]]
    for i, row in enumerate(rows):
        row["source_id"] = f"row{i}"
    rows[0]["anchor"] = _long_line(documents, n_bytes)
    folder.mkdir()
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cmd = mst5_cmd(
        "train", "--config", TINY_CONFIG, f"model.name_or_path={base}", f"train.output_dir={folder / 'run'}",
        f"data.paths=[{data}]", f"data.cache_dir={folder / 'cache'}", "train.batch_size=32", "train.max_steps=1",
        "train.save_every=null",
    )  # fmt: skip
    code, err, peak, seconds = _measured(cmd, folder, uncut=uncut)
    assert code == 0, err[-2000:]
    log = [json.loads(line) for line in (folder / "run" / "train_log.jsonl").read_text().splitlines()]
    return peak, seconds, [r["loss"] for r in log if "loss" in r]


def test_a_training_step_on_a_50mb_line_stays_under_1_5_gb(tiny_base, documents, tmp_path):
    """Before: ~460 bytes per byte (23 GB for 50 MB, killed). The trainer process takes ~0.65 GB
    (torch, the model, DeepSpeed/Accelerate imports); the line is held as JSON bytes, in Arrow and
    as Python str a few times: 1.5 GB leaves room. The step trains on all 32 rows."""
    peak, seconds, losses = _train_measured(tiny_base, documents, tmp_path / "t", 50_000_000)
    assert peak < 1.5 * 1024 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    assert seconds < 180, f"{seconds:.0f} s"
    assert len(losses) == 1 and np.isfinite(losses[0])


@pytest.mark.slow
def test_training_memory_grew_with_the_line_before_the_cut(tiny_base, documents, tmp_path):
    """Negative control at 2 MB: tokenised whole (token lengths and the collator), the line costs
    over 75 bytes per byte more; the step's loss is the same either way (the cut changes no token)."""
    cut_peak, _, cut_loss = _train_measured(tiny_base, documents, tmp_path / "cut", 2_000_000)
    whole_peak, _, whole_loss = _train_measured(tiny_base, documents, tmp_path / "whole", 2_000_000, uncut=True)
    assert whole_peak - cut_peak > 75 * 2_000_000, (whole_peak / MiB, cut_peak / MiB)
    assert cut_loss == whole_loss
