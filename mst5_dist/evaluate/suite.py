"""``mst5 eval``: run the evaluation tasks on one model, write ``results.json``, print Markdown tables.

Data layout under ``--data-dir`` (the layout of ``../shared/data`` and of ``mst5 data download``):
``tatoeba/tatoeba.{xxx}-eng.{xxx,eng}``, ``bucc2018/{xx}-en.{split}.{xx,en,gold}``,
``sts17/STS.{input,gs}.track*.txt``, ``stsb-multi-mt/stsb-{lang}-{split}.csv``,
``jsts/{split}-v1.3.json``, ``korean/sts-{split}.tsv``, ``sick/SICK_test_annotated.txt``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.commands import finite_float, positive_int
from mst5_dist.errors import BadInput, run_command
from mst5_dist.evaluate import alignment, bucc, sts, tatoeba
from mst5_dist.evaluate.embedder import CachedEmbedder, encode_routed
from mst5_dist.evaluate.loader import load_embedder
from mst5_dist.files import atomic_write_json, file_sha256
from mst5_dist.layout import resolve_model_dir
from mst5_dist.outputs import check_output, claim, refuse_link

logger = logging.getLogger(__name__)

TASKS = ["tatoeba", "bucc", "sts17", "stsb", "xstsb", "jsts", "korsts", "sick", "langbias", "rsim"]
DEFAULT_TASKS = "tatoeba,bucc,sts17,stsb"
RESULTS_VERSION = 1


class EvalUsageError(BadInput):
    """A bad ``mst5 eval`` argument (unknown task)."""


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder, training output (uses final/), or ONNX export")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from: {','.join(TASKS)}, or 'all'")
    p.add_argument("--data-dir", required=True, help="folder with tatoeba/, sts17/, stsb-multi-mt/, ...")
    p.add_argument("--output", default="results.json", help="JSON file to write")
    p.add_argument("--name", default=None, help="row label in the tables (default: model folder name)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: none)")
    p.add_argument("--onnx-variant", default=None, help="ONNX export: fp32, fp16 or int8 (default: its primary one)")
    p.add_argument(
        "--modular-routing",
        choices=["auto", "mono", "cross"],
        default="auto",
        help="modular model: auto = language module alone on monolingual data, plus CLA on cross-lingual",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="first N items of every dataset (quick runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tatoeba-langs", default="all", help="ISO/LASER codes or tatoeba14, tatoeba36, table2, all")
    p.add_argument("--tatoeba-margin", action="store_true", help="also report ratio-margin (k=4) xSIM error")
    p.add_argument("--bucc-langs", default="zh", help="BUCC source languages (pairs xx-en)")
    p.add_argument("--bucc-split", default="dev", help="BUCC split to evaluate")
    p.add_argument("--bucc-threshold", type=finite_float, default=None, help="transfer this threshold (else oracle)")
    p.add_argument("--bucc-threshold-from", default=None, help="split to tune the threshold on (transfer)")
    p.add_argument("--sts17-tracks", default=",".join(sts.STS17_NAMES), help="STS17 tracks (short names)")
    p.add_argument("--stsb-langs", default="en,de,es,fr,it,nl,pl,pt,ru,zh,ja", help="stsb-multi-mt languages")
    p.add_argument("--stsb-split", default="test")
    p.add_argument("--jsts-split", default="valid", help="JSTS split: valid or test")
    p.add_argument("--korsts-split", default="test")
    p.add_argument("--rsim-langs", default="tatoeba14", help="Tatoeba languages for RSIM (xx vs eng)")


def _strip_private(obj: Any) -> Any:
    """Drop arrays and ``_``-prefixed helper entries before writing JSON."""
    if isinstance(obj, dict):
        return {k: _strip_private(v) for k, v in obj.items() if not k.startswith("_") and k != "cosine"}
    if isinstance(obj, list):
        return [_strip_private(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class Suite:
    def __init__(self, embedder: Any, data_dir: Path, args: argparse.Namespace) -> None:
        self.embedder = embedder
        self.data = data_dir
        self.args = args
        self.files: set[str] = set()
        self._xstsb: dict[str, Any] | None = None

    def _dir(self, name: str) -> Path:
        path = self.data / name
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} does not exist: put the {name} files there (layout in mst5_dist/evaluate/suite.py) "
                f"or run `mst5 data download {name}`"
            )
        return path

    def tatoeba(self) -> dict[str, Any]:
        d = self._dir("tatoeba")
        out = tatoeba.evaluate_tatoeba(
            self.embedder, d, self.args.tatoeba_langs, batch_size=self.args.batch_size,
            margin=self.args.tatoeba_margin, limit=self.args.limit,
        )  # fmt: skip
        for lang in out["languages"]:
            self.files.update(str(p) for p in tatoeba.tatoeba_files(d, lang))
        return out

    def bucc(self) -> dict[str, Any]:
        d, a = self._dir("bucc2018"), self.args
        out: dict[str, Any] = {}
        for lang in a.bucc_langs.split(","):
            thr, source = a.bucc_threshold, None
            if a.bucc_threshold is not None:
                source = "--bucc-threshold"
            elif a.bucc_threshold_from and a.bucc_threshold_from != a.bucc_split:
                tuned = bucc.evaluate_bucc(
                    self.embedder, d, lang, a.bucc_threshold_from, batch_size=a.batch_size, limit=a.limit
                )
                thr, source = tuned["threshold"], f"the {a.bucc_threshold_from} split (F1 there {tuned['f1']:.2f})"
            res = bucc.evaluate_bucc(
                self.embedder, d, lang, a.bucc_split, batch_size=a.batch_size, threshold=thr,
                threshold_source=source, limit=a.limit,
            )  # fmt: skip
            self.files.update(res["_files"])
            out[lang] = res
        return out

    def _sts(self, pairs: sts.StsPairs) -> dict[str, Any]:
        pairs = pairs.head(self.args.limit)
        self.files.update(pairs.files)
        return {**sts.sts_scores(self.embedder, pairs, self.args.batch_size), "_gold": pairs.scores}

    def sts17(self) -> dict[str, Any]:
        d = self._dir("sts17")
        return {t: self._sts(sts.read_sts17(d, t)) for t in self.args.sts17_tracks.split(",")}

    def stsb(self) -> dict[str, Any]:
        d, split = self._dir("stsb-multi-mt"), self.args.stsb_split
        return {lang: self._sts(sts.read_stsb_csv(sts.stsb_path(d, lang, split), lang)) for lang in self._stsb_langs()}

    def _stsb_langs(self) -> list[str]:
        return [lang for lang in self.args.stsb_langs.split(",") if lang]

    def xstsb(self) -> dict[str, Any]:
        if self._xstsb is None:  # langbias reuses these (embedded once per evaluation)
            d, split = self._dir("stsb-multi-mt"), self.args.stsb_split
            others = [lang for lang in self._stsb_langs() if lang != "en"]
            self._xstsb = {f"en-{lang}": self._sts(sts.crosslingual_stsb(d, "en", lang, split)) for lang in others}
        return self._xstsb

    def jsts(self) -> dict[str, Any]:
        return {"ja": self._sts(sts.read_jsts(self._dir("jsts") / f"{self.args.jsts_split}-v1.3.json"))}

    def korsts(self) -> dict[str, Any]:
        return {"ko": self._sts(sts.read_korsts(self._dir("korean") / f"sts-{self.args.korsts_split}.tsv"))}

    def sick(self) -> dict[str, Any]:
        return {"en": self._sts(sts.read_sick(self._dir("sick") / "SICK_test_annotated.txt"))}

    def langbias(self) -> dict[str, Any]:
        """Bias over the cross-lingual STS-B datasets en-xx (one per language in --stsb-langs)."""
        datasets = {name: (res["cosine"], np.asarray(res["_gold"])) for name, res in self.xstsb().items()}
        return {**alignment.language_bias(datasets), "datasets": sorted(datasets)}

    def rsim(self) -> dict[str, Any]:
        d = self._dir("tatoeba")
        per = {}
        for lang in tatoeba.expand_languages(self.args.rsim_langs):
            src, eng = tatoeba.read_tatoeba(d, lang)
            src, eng = src[: self.args.limit], eng[: self.args.limit]
            x = encode_routed(self.embedder, src, self.args.batch_size, lang, cross_lingual=True)
            y = encode_routed(self.embedder, eng, self.args.batch_size, "en", cross_lingual=True)
            per[lang] = alignment.rsim(np.asarray(x), np.asarray(y))
            self.files.update(str(p) for p in tatoeba.tatoeba_files(d, lang))
        return {"languages": per, "mean": float(np.mean(list(per.values()))), "corpus": "tatoeba"}


# ---------------------------------------------------------------- tables


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _get(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) else None


def _table(header: list[str], row: list[str]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"])


def markdown_tables(name: str, results: dict[str, Any]) -> str:
    """Table 1 (cross-lingual: BUCC F1, Tatoeba-14/36 accuracy, XSTS Spearman), Table 2 (Tatoeba by
    language, the paper's low-resource set) and an STS table; '–' where a task was not run."""
    r = results
    tat = r.get("tatoeba", {})
    parts = []
    header = ["Model", "BUCC zh-en F1", "Tatoeba-14", "Tatoeba-36"]
    row = [name, _fmt(_get(r, "bucc", "zh", "f1")), _fmt(_get(tat, "averages", "tatoeba14", "mean")),
           _fmt(_get(tat, "averages", "tatoeba36", "mean"))]  # fmt: skip
    xsts = ["ar-ar", "ar-en", "es-es", "es-en", "tr-en"]
    header += [f"STS17 {t}" for t in xsts]
    row += [_fmt(_get(r, "sts17", t, "spearman")) for t in xsts]
    parts.append(
        "Table 1 (BUCC F1, Tatoeba mean accuracy of xx->en and en->xx, STS17 Spearman x100)\n\n" + _table(header, row)
    )
    langs = tatoeba.TABLE2
    t2 = [_get(tat, "languages", lang, "mean") for lang in langs]
    avg = _get(tat, "averages", "table2", "mean")
    parts.append(
        "Table 2 (Tatoeba accuracy by language)\n\n"
        + _table(["Model", *langs, "avg"], [name, *[_fmt(v) for v in t2], _fmt(avg)])
    )
    sts_cols: list[tuple[str, float | None]] = []
    for task in ("stsb", "xstsb", "jsts", "korsts", "sick"):
        for key, res in r.get(task, {}).items():
            sts_cols.append((f"{task} {key}", _get(res, "spearman")))
    if "langbias" in r:
        sts_cols.append(("language bias", _get(r, "langbias", "bias")))
    if "rsim" in r:
        sts_cols.append(("RSIM x100", 100 * r["rsim"]["mean"]))
    if sts_cols:
        parts.append(
            "STS Spearman x100 and alignment\n\n"
            + _table(["Model", *[c for c, _ in sts_cols]], [name, *[_fmt(v) for _, v in sts_cols]])
        )
    return "\n\n".join(parts)


# ---------------------------------------------------------------- entry point


def parse_tasks(spec: str) -> list[str]:
    tasks = TASKS if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalUsageError(f"unknown task(s) {', '.join(unknown)} (known: {', '.join(TASKS)})")
    return tasks


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``args.model`` on the tasks into ``args.output``, held by this process throughout;
    the output may lie in a training run (``RUN/results.json``, where ``mst5 sweep`` reads it) but not
    in the model folder itself or the data."""
    out = check_output(
        args.output, "--output", [("--model", resolve_model_dir(args.model)), ("--data-dir", args.data_dir)]
    )
    refuse_link(out)
    with claim(out):
        return _evaluate(args, out)


def _evaluate(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    tasks = parse_tasks(args.tasks)
    start = time.perf_counter()
    embedder = load_embedder(
        args.model,
        device=args.device,
        progress=not args.no_progress,
        cache_dir=args.cache_dir,
        onnx_variant=args.onnx_variant,
        modular_routing=args.modular_routing,
    )
    suite = Suite(embedder, Path(args.data_dir), args)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for task in tasks:
        t0 = time.perf_counter()
        results[task] = getattr(suite, task)()
        timings[task] = time.perf_counter() - t0
        logger.info(f"{task}: done in {timings[task]:.1f}s")
    name = args.name or Path(args.model).resolve().name
    tables = markdown_tables(name, results)
    inner = embedder.inner if isinstance(embedder, CachedEmbedder) else embedder
    report = {
        "results_version": RESULTS_VERSION,
        "model": {
            "path": str(Path(args.model).resolve()),
            "name": name,
            "fingerprint": embedder.fingerprint,
            "runtime": type(inner).__name__,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
        "protocol": {
            "similarity": "cosine",
            "sts": "Spearman x100 of cosine vs gold (Pearson also given)",
            "tatoeba": "top-1 cosine retrieval accuracy x100, index match, both directions",
            "bucc": "ratio margin k=4, max retrieval, greedy one-to-one, threshold at best F1",
            "limit": args.limit,
        },
        "data_files": {p: file_sha256(p) for p in sorted(suite.files)},
        "results": _strip_private(results),
        "timings_s": timings,
        "elapsed_s": time.perf_counter() - start,
        "markdown": tables,
    }
    if isinstance(embedder, CachedEmbedder):
        report["cache"] = {"dir": str(args.cache_dir), "hits": embedder.cache.hits, "misses": embedder.cache.misses}
    atomic_write_json(out, report)
    return report


def run_eval_command(args: argparse.Namespace) -> int:
    """``mst5 eval``: the tables on stdout; bad data / missing files / unknown task exit 2."""

    def job() -> None:
        report = run_evaluation(args)
        print(report["markdown"])
        print(f"\nresults written to {args.output}")

    return run_command("mst5 eval", job)
