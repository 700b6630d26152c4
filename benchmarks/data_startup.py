"""Training start-up at scale: the seconds and peak memory before step 1, from 10^4 to 2 x 10^6 triplets.

    python benchmarks/data_startup.py [--sizes 1e4,1e5,1e6,2e6] [--quick] [--work DIR] [--baseline-max 1e5]

What is measured
----------------
Synthetic XNLI-like triplets (``write_synthetic``): one source id per example with 15 translations
of it (rows of one id share their sentence lengths up to +-25%), six languages in four scripts with
words drawn from the embedded tiny_nli set, premises ~18 words and hypotheses ~8 (log-normal), as
JSONL. Each stage runs in a FRESH subprocess, so its peak RSS (``ru_maxrss``) is its own:

* ``load``: JSONL -> Arrow cache (``data.load_cached``), cold (empty cache) and warm (cached);
* ``lengths``: token lengths of (anchor, positive, negative) with the tiny mT5 tokenizer at
  max_seq_length 128 (``data.token_lengths``), cold and warm (cached beside the Arrow data);
* ``sampler``: ``GlobalBatchSampler`` epoch-0 order, global batch 128, 8 simulated ranks,
  ``bucket_batches`` 32 (time per rank; every rank's slices are checked for equal size);
* ``train``: the trainer itself (``recipe.setup`` -> ``resume_from`` -> ``open_output`` ->
  ``epoch_loader`` -> one ``train_step``, the functions ``recipe.train`` calls) with the tiny mT5,
  one process, batch 128, from process launch to the end of step 1, cold (empty data cache) and
  warm.

The "before" baseline runs in the same script on the sizes up to ``--baseline-max``: the code of
commit 8711590 copied below verbatim (in-memory Python JSONL reader + ``Dataset.from_dict``; token
lengths through the tokenizer call in chunks of 4096; the sampler indexing ``dataset["source_id"]``,
a lazy ``datasets.Column`` in datasets 5). Each line prints the ratio before / now.

Seconds are wall seconds; CPU seconds (user + system of the stage's process, all threads) are
printed beside them because on a shared 2-core machine wall time depends on what else runs. The
growth exponent is the log-log slope of a stage's seconds between consecutive sizes (1.0: linear).
Generated inputs and the tiny model are kept in ``--work`` (default /tmp/mst5-data-startup) and
reused by later runs; caches are rebuilt per run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, WORLD, BUCKET_BATCHES, MAX_LEN = 128, 8, 32, 128
COLUMNS = ("anchor", "positive", "negative")
GENERATOR_VERSION = 1
QUICK_SIZES = [3000, 6000]


# ------------------------------------------------------------------------------ synthetic data


def _vocabulary() -> dict[str, list[str]]:
    from mst5_dist.tiny_default import builtin_path

    words: dict[str, set[str]] = {}
    for line in builtin_path("tiny_nli").read_text().splitlines():
        row = json.loads(line)
        for c in COLUMNS:
            text = row[c].rstrip(".。")
            words.setdefault(row["lang"], set()).update(text.replace(" ", "") if row["lang"] == "zh" else text.split())
    return {lang: sorted(w) for lang, w in sorted(words.items())}


def write_synthetic(path: Path, n_rows: int, seed: int = 0) -> Path:
    """``n_rows`` XNLI-like triplets as JSONL (15 rows per source id), written atomically."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = _vocabulary()
    langs = list(vocab)
    n_sources = -(-n_rows // 15)
    premise = np.clip(rng.lognormal(math.log(18), 0.5, n_sources), 3, 120)
    hypotheses = np.clip(rng.lognormal(math.log(8), 0.45, (n_sources, 2)), 2, 60)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(n_rows):
            source, k = divmod(i, 15)
            lang = langs[k % len(langs)]
            words, sep, stop = vocab[lang], ("" if lang == "zh" else " "), ("。" if lang == "zh" else ".")
            sizes = np.maximum(2, (np.array([premise[source], *hypotheses[source]]) * rng.uniform(0.8, 1.25, 3)))
            texts = [sep.join(words[j] for j in rng.integers(0, len(words), int(s))) + stop for s in sizes]
            row = {"source_id": f"xnli-train:{source}", "lang": lang, "anchor": texts[0], "positive": texts[1]}
            row["negative"] = texts[2]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.rename(path)
    return path


# ------------------------------------------------------------------------------ the code before
# Verbatim from mst5_dist/data.py at commit 8711590 (only renamed), for the baseline.


def legacy_token_lengths(dataset, tokenizer, max_len: int, columns: tuple[str, ...]) -> list[int]:
    lengths: list[int] = []
    cols = list(columns)
    for start in range(0, len(dataset), 4096):
        chunk = dataset[start : start + 4096]
        per_col = [tokenizer(chunk[c], truncation=True, max_length=max_len)["input_ids"] for c in cols]
        lengths += [max(len(col[i]) for col in per_col) for i in range(len(per_col[0]))]
    return lengths


class LegacyGlobalBatchSampler:
    def __init__(self, source_ids, global_batch, *, world_size=1, rank=0, seed=0, lengths=None, bucket_batches=32):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not divide by world size {world_size}")
        self.source_ids = source_ids
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self.epoch, self.start = 0, 0
        self.dropped = 0
        self._cached = None

    def global_batches(self, epoch):
        import itertools
        import random

        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.source_ids)))
        rng.shuffle(order)
        size = self.global_batch * (self.bucket_batches if self.lengths is not None else 1)
        n_buckets = max(1, round(len(order) / size))
        bounds = [len(order) * k // n_buckets for k in range(n_buckets + 1)]
        batches, carry = [], []
        for lo, hi in itertools.pairwise(bounds):
            full, carry = self._fill(carry + order[lo:hi])
            batches += full
        while carry:
            full, carry = self._fill(carry)
            if not full:
                break
            batches += full
        self.dropped = len(carry)
        rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def _fill(self, items):
        if self.lengths is not None:
            items = sorted(items, key=lambda i: self.lengths[i])
        n_batches = len(items) // self.global_batch
        batches = [[] for _ in range(n_batches)]
        seen = [set() for _ in range(n_batches)]
        carry = []
        first_open = 0
        for i in items:
            while first_open < n_batches and len(batches[first_open]) == self.global_batch:
                first_open += 1
            sid = self.source_ids[i]
            for b in range(first_open, n_batches):
                if len(batches[b]) < self.global_batch and sid not in seen[b]:
                    batches[b].append(i)
                    seen[b].add(sid)
                    break
            else:
                carry.append(i)
        full = [b for b in batches if len(b) == self.global_batch]
        carry += [i for b in batches if len(b) < self.global_batch for i in b]
        return full, carry


def legacy_load(cfg):
    """The old ``load_dataset`` for JSONL: every row as a Python dict, then ``Dataset.from_dict``
    (the old UTF-8 check, a Python loop over every character, patched back in)."""
    import datasets

    from mst5_dist import data

    def old_text(self, path, line, fieldname, value):
        if value is None:
            self.fail(path, line, fieldname, "missing")
            return None
        if not isinstance(value, str):
            self.fail(path, line, fieldname, f"expected a string, got {type(value).__name__}")
            return None
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            self.fail(path, line, fieldname, "contains bytes that are not valid UTF-8")
            return None
        if not value.strip():
            self.fail(path, line, fieldname, "empty sentence")
            return None
        return value.strip()

    new_text, data.RowChecker.text = data.RowChecker.text, old_text
    try:
        report = data.read_triplets(cfg, 0, True)
    finally:
        data.RowChecker.text = new_text
    ds = datasets.Dataset.from_dict({c: [r[c] for r in report.rows] for c in data.COLUMNS})
    target = Path(cfg.cache_dir) / "legacy"
    ds.save_to_disk(str(target))
    return datasets.load_from_disk(str(target))


# ------------------------------------------------------------------------------ stages (children)


def _data_cfg(jsonl: Path, cache: Path):
    from mst5_dist.config import DataConfig

    return DataConfig(paths=[str(jsonl)], cache_dir=str(cache), bucket_batches=BUCKET_BATCHES)


def _tokenizer(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model))


def stage(name: str, jsonl: Path, cache: Path, model: Path, out: Path) -> dict:
    """Run one stage in this (fresh) process; return its figures."""
    import datasets  # noqa: F401  (imports are not the stage: the trainer has them loaded already)
    import pyarrow.json  # noqa: F401

    from mst5_dist import data

    if name != "train":
        import transformers  # noqa: F401

    extra: dict = {}
    start, cpu = time.perf_counter(), time.process_time()
    if name == "load":
        ds, _ = data.load_cached(_data_cfg(jsonl, cache), 0)
        extra["rows"] = len(ds)
    elif name == "legacy_load":
        extra["rows"] = len(legacy_load(_data_cfg(jsonl, cache)))
    elif name in ("lengths", "legacy_lengths"):
        ds, folder = data.load_cached(_data_cfg(jsonl, cache), 0)
        tok = _tokenizer(model)
        start, cpu = time.perf_counter(), time.process_time()
        if name == "lengths":
            lengths = data.token_lengths(ds, tok, MAX_LEN, COLUMNS, folder)
        else:
            lengths = legacy_token_lengths(ds, tok, MAX_LEN, COLUMNS)
        extra["mean_length"] = float(sum(lengths) / len(lengths))
    elif name in ("sampler", "legacy_sampler"):
        import numpy as np

        ds, folder = data.load_cached(_data_cfg(jsonl, cache), 0)
        lengths = data.token_lengths(ds, _tokenizer(model), MAX_LEN, COLUMNS, folder)
        if name == "legacy_sampler":
            lengths = lengths.tolist()
        start, cpu = time.perf_counter(), time.process_time()
        if name == "sampler":
            codes = data.source_codes(ds, folder)
            ranks = [
                data.GlobalBatchSampler(
                    codes, GLOBAL_BATCH, world_size=WORLD, rank=r, lengths=lengths, bucket_batches=BUCKET_BATCHES
                )
                for r in range(WORLD)
            ]
        else:  # as builders.build_data called it: the lazy datasets Column
            ranks = [
                LegacyGlobalBatchSampler(
                    ds["source_id"],
                    GLOBAL_BATCH,
                    world_size=WORLD,
                    rank=0,
                    lengths=lengths,
                    bucket_batches=BUCKET_BATCHES,
                )
            ]
        batches = ranks[0].global_batches(0)  # what each rank computes at start, in parallel
        per_rank = time.perf_counter() - start
        extra.update(batches=len(batches), dropped=ranks[0].dropped)
        if name == "sampler":  # the other ranks: same order, equal slices (not timed)
            first = ranks[0].global_batches(0)
            for s in ranks[1:]:
                assert np.array_equal(s.global_batches(0), first)
            assert {len(b) for s in ranks for b in list(s)[:4]} <= {GLOBAL_BATCH // WORLD}
            codes_b = codes[first]
            assert not data.repeated_in_rows(codes_b).any()
        return {"seconds": per_rank, "cpu": time.process_time() - cpu, "rss_mb": _rss_mb(), **extra}
    elif name == "train":
        extra.update(_train_to_step_one(jsonl, cache, model, out))
    else:
        raise SystemExit(f"unknown stage {name}")
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "rss_mb": _rss_mb(), **extra}


def _train_to_step_one(jsonl: Path, cache: Path, model: Path, out: Path) -> dict:
    """The real trainer (the functions ``recipe.train`` calls), stopped after step 1."""
    import psutil

    from mst5_dist.config import load_config
    from mst5_dist.training import recipe

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"model.name_or_path={model}",
            f"model.max_seq_length={MAX_LEN}",
            f"data.paths=[{jsonl}]",
            f"data.cache_dir={cache}",
            f"data.bucket_batches={BUCKET_BATCHES}",
            f"train.batch_size={GLOBAL_BATCH}",
            "train.epochs=1",
            f"train.output_dir={out}",
            "train.progress_bar=false",
            "train.report_to=[]",
        ],
    )
    run = recipe.setup(cfg)
    setup_done = time.time()
    state = recipe.resume_from(run, None)
    recipe.open_output(run)
    try:
        run.step(recipe.epoch_loader(run, state))
    finally:
        recipe.cleanup(run)
    now = time.time()
    launched = psutil.Process().create_time()
    return {"launch_to_step1": now - launched, "step1": now - setup_done, "batches": run.epoch_batches[0]}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------ driver (parent)


def run_stage(name: str, jsonl: Path, cache: Path, model: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--stage", name, "--jsonl", str(jsonl), "--cache", str(cache)]
    cmd += ["--model", str(model), "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"stage {name} failed ({jsonl.name}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


def exponent(sizes: list[int], seconds: list[float]) -> list[float]:
    """log-log slopes between consecutive sizes."""
    return [
        math.log(max(b, 1e-6) / max(a, 1e-6)) / math.log(m / n)
        for (n, a), (m, b) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:]), strict=False)
    ]


def _fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else (f"{x:.2f}{unit}" if x < 100 else f"{x:.0f}{unit}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6,2e6", help="rows, comma-separated (1e5 or 100000)")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, for the test that keeps this alive")
    ap.add_argument("--work", default="/tmp/mst5-data-startup", help="inputs and the tiny model are kept here")
    ap.add_argument("--baseline-max", type=float, default=1e5, help="run the old code up to this many rows")
    ap.add_argument("--skip-train", action="store_true", help="leave out the trainer stage")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    for hidden in ("--jsonl", "--cache", "--model", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        import logging

        logging.basicConfig(level=logging.WARNING)
        result = stage(args.stage, Path(args.jsonl), Path(args.cache), Path(args.model), Path(args.out))
        print(json.dumps(result))
        return

    sizes = QUICK_SIZES if args.quick else sorted(int(float(s)) for s in args.sizes.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny-mt5"
    if not (model / "config.json").is_file():
        from mst5_dist.tiny_default import build_tiny_mt5

        build_tiny_mt5(model)
    results: dict[int, dict[str, dict]] = {}
    for n in sizes:
        jsonl = work / f"synthetic-v{GENERATOR_VERSION}-{n}.jsonl"
        if not jsonl.is_file():
            t = time.perf_counter()
            write_synthetic(jsonl, n)
            print(f"generated {n:,} rows in {time.perf_counter() - t:.0f} s: {jsonl}", flush=True)
        cache = work / f"cache-{n}"
        r: dict[str, dict] = {}
        for sub in ("", "-train", "-legacy"):
            shutil.rmtree(str(cache) + sub, ignore_errors=True)
        out = work / f"run-{n}"
        r["load cold"] = run_stage("load", jsonl, cache, model, out)
        r["load warm"] = run_stage("load", jsonl, cache, model, out)
        r["lengths cold"] = run_stage("lengths", jsonl, cache, model, out)
        r["lengths warm"] = run_stage("lengths", jsonl, cache, model, out)
        r["sampler"] = run_stage("sampler", jsonl, cache, model, out)
        if n <= args.baseline_max:
            legacy_cache = Path(str(cache) + "-legacy")
            r["legacy load"] = run_stage("legacy_load", jsonl, legacy_cache, model, out)
            r["legacy lengths"] = run_stage("legacy_lengths", jsonl, cache, model, out)
            r["legacy sampler"] = run_stage("legacy_sampler", jsonl, cache, model, out)
        if not args.skip_train and (not args.quick or n == sizes[-1]):
            train_cache = Path(str(cache) + "-train")
            for kind in ("cold", "warm"):
                shutil.rmtree(out, ignore_errors=True)
                r[f"train {kind}"] = run_stage("train", jsonl, train_cache, model, out)
        results[n] = r
        print(f"{n:,} rows: " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in r.items()), flush=True)
        for sub in ("", "-train", "-legacy"):
            shutil.rmtree(str(cache) + sub, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    report(sizes, results)


def report(sizes: list[int], results: dict[int, dict[str, dict]]) -> None:
    stages = [
        ("load", "load cold", "load warm", "legacy load"),
        ("token lengths", "lengths cold", "lengths warm", "legacy lengths"),
        ("sampler epoch order (per rank)", "sampler", "sampler", "legacy sampler"),
        ("trainer: launch to end of step 1", "train cold", "train warm", None),
    ]
    print()
    print("| stage | rows | cold s | cold CPU s | warm s | peak RSS MB (cold) | before s | before / now |")
    print("|---|---|---|---|---|---|---|---|")
    for title, cold, warm, before in stages:
        for n in sizes:
            r = results[n]
            if cold not in r:
                continue
            secs = "launch_to_step1" if title.startswith("trainer") else "seconds"
            c, w = r[cold][secs], r[warm][secs]
            b = r[before]["seconds"] if before and before in r else None
            ratio = f"{b / c:.1f}x" if b is not None else "-"
            print(
                f"| {title} | {n:,} | {_fmt(c)} | {_fmt(r[cold]['cpu'])} | {_fmt(w)} | {r[cold]['rss_mb']:.0f} "
                f"| {_fmt(b)} | {ratio} |"
            )
    print()
    print("growth exponent (log-log slope of cold seconds between consecutive sizes; 1.0 = linear):")
    for title, cold, _warm, before in stages:
        have = [n for n in sizes if cold in results[n]]
        if len(have) < 2:
            continue
        secs = "launch_to_step1" if title.startswith("trainer") else "seconds"
        slopes = exponent(have, [results[n][cold][secs] for n in have])
        cpu = exponent(have, [results[n][cold]["cpu"] for n in have])
        line = ", ".join(f"{a:,}->{b:,}: {s:.2f} (CPU {c:.2f})" for a, b, s, c in zip(have, have[1:], slopes, cpu))
        old = [n for n in have if before and before in results[n]]
        if len(old) >= 2:
            line += "; before: " + ", ".join(
                f"{a:,}->{b:,}: {s:.2f}"
                for a, b, s in zip(old, old[1:], exponent(old, [results[n][before]["seconds"] for n in old]))
            )
        print(f"  {title}: {line}")
    rss = {n: max(v["rss_mb"] for v in results[n].values()) for n in sizes}
    print("peak RSS of any stage: " + ", ".join(f"{n:,}: {v:.0f} MB" for n, v in rss.items()))


if __name__ == "__main__":
    main()
