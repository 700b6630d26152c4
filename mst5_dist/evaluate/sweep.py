"""``mst5 sweep``: one table and one plot of scores over several training runs (the m-ST5 paper's
Figure 2: score vs model size, or score vs learning rate).

    mst5 sweep runs/lr-1e-5 runs/lr-5e-5 runs/lr-1e-4 runs/lr-5e-4 --metric stsb.en.spearman --output sweeps/lr

For every run folder (a ``train.output_dir``) it reads:

- the training config: ``RUN/config.yaml`` (written when training starts), else
  ``RUN/final/training_config.yaml``, else ``RUN/training_config.yaml`` (RUN is itself a ``final/``);
  it gives ``optim.lr`` and ``model.name_or_path``;
- the model size: the ENCODER's parameter count (frozen base, LoRA excluded; the decoder of an mT5
  checkpoint is never loaded). It is counted on the meta device (no weights read) from the config of
  ``RUN/final`` (full fine-tuning), else of the base model (``base_model`` in
  ``final/sentence_encoder.json``, else ``model.name_or_path``) when that is a local folder, else
  from the published architecture of ``mt5-small`` ... ``mt5-xxl`` (matched by name);
- the scores: a metric ``eval_sts_spearman`` is the LAST value of that field in ``RUN/train_log.jsonl``
  (the trainer's periodic STS evaluation); any other metric is a dotted path into the ``results``
  of the ``results.json`` that ``mst5 eval --model RUN --output RUN/results.json`` writes (the file
  name is ``--results``), e.g. ``stsb.en.spearman``, ``sts17.ar-en.spearman``, ``bucc.zh.f1``,
  ``tatoeba.averages.tatoeba14.mean``.

Outputs (each written under a temporary name, then renamed): ``sweep.md`` (Markdown table, also
printed), ``sweep.json`` (every number and where it came from) and ``sweep.png`` (log-scale x axis,
one line per metric; when the other variable also differs, one line per metric and value of it).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mst5_dist.config import Config, ConfigError, load_config
from mst5_dist.errors import BadInput, ModelError, run_command
from mst5_dist.families import MT5_SIZES, MT5_VOCAB
from mst5_dist.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from mst5_dist.model.meta import EncoderMeta
from mst5_dist.modular.config import ModularRunConfig
from mst5_dist.outputs import check_output

TRAIN_LOG_METRICS = ("eval_sts_spearman",)
X_CHOICES = ("auto", "lr", "model_size")
CONFIG_FILES = ("config.yaml", "final/training_config.yaml", "training_config.yaml")
_MT5_NAME = re.compile(r"(?:^|[/_-])mt5-(small|base|large|xl|xxl)$", re.IGNORECASE)


class SweepError(BadInput):
    """A run folder lacks a file or field the sweep needs; the message names the folder and file."""


@dataclass
class SweepRun:
    path: str
    """The run folder as given."""
    name: str
    """Row label (the folder name, or the path when two folders share a name)."""
    model: str
    """Base model (``base_model`` of ``final/sentence_encoder.json``, else ``model.name_or_path``)."""
    lr: float
    """``optim.lr`` of the training config."""
    params: int | None
    """Encoder parameter count (None when it cannot be determined and the x axis is not model size)."""
    params_source: str | None
    """Where the parameter count came from."""
    config_file: str
    """The training config that was read."""
    scores: dict[str, float] = field(default_factory=dict)
    """Metric -> value."""
    sources: dict[str, str] = field(default_factory=dict)
    """Metric -> file (and step, for train_log.jsonl) it was read from."""


# ---------------------------------------------------------------- reading one run


def read_run_config(run: Path) -> tuple[Config, Path]:
    """The run's saved config, read as ``mst5 train-modular``'s schema: a stage run of an older
    ``train-modular`` saved its ``modular:`` section (languages and all) beside the run sections."""
    if not run.is_dir():
        raise SweepError(f"{run}: run folder not found")
    for rel in CONFIG_FILES:
        path = run / rel
        if path.is_file():
            try:
                return load_config(path, schema=ModularRunConfig), path
            except ConfigError as e:
                raise SweepError(f"{run}: unreadable training config: {e}") from None
    raise SweepError(f"{run}: no training config (looked for {', '.join(CONFIG_FILES)})")


def _read_json(path: Path, run: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SweepError(f"{run}: {path.name} is not valid JSON ({e})") from None


def base_model_of(run: Path, cfg: Config) -> str:
    for folder in (run / "final", run):
        try:
            meta = EncoderMeta.read_or_none(folder)
        except ModelError as e:
            raise SweepError(f"{run}: {e}") from None
        if meta is not None and meta.base_model:
            return meta.base_model
    return cfg.model.name_or_path


def _count_encoder(config: Any) -> int:
    """Parameters of the encoder stack ``load_backbone`` would build, instantiated on the meta device."""
    import torch

    from mst5_dist.model.backbone import encoder_class

    cls = encoder_class(config.model_type)
    with torch.device("meta"):
        model = cls.from_config(config) if cls.__name__ == "AutoModel" else cls(config)
    return sum(p.numel() for p in model.parameters())  # tied embeddings are counted once


def mt5_config(size: str) -> Any:
    from transformers import MT5Config

    d_model, d_ff, layers, heads = MT5_SIZES[size]
    return MT5Config(
        vocab_size=MT5_VOCAB,
        d_model=d_model,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        d_kv=64,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )


def encoder_parameters(run: Path, base: str) -> tuple[int, str] | None:
    """(count, source) of the encoder's parameters, or None when neither a config nor a known name is found."""
    from mst5_dist.model.loading import load_config

    candidates = [run / "final" / "config.json", run / "config.json", Path(base) / "config.json"]
    for path in candidates:
        if path.is_file():
            return _count_encoder(load_config(path.parent)), str(path)
    m = _MT5_NAME.search(base.rstrip("/"))
    if m:
        size = m.group(1).lower()
        return _count_encoder(mt5_config(size)), f"published mt5-{size} architecture"
    return None


def read_metric(run: Path, metric: str, results_name: str) -> tuple[float, str]:
    """The value of ``metric`` for ``run`` and where it was read (see the module docstring)."""
    if metric in TRAIN_LOG_METRICS:
        log = run / "train_log.jsonl"
        if not log.is_file():
            raise SweepError(f"{run}: no train_log.jsonl (needed for metric '{metric}')")
        last = None
        for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SweepError(f"{log}:{number}: not a JSON line") from None
            if metric in record:
                last = record
        if last is None:
            raise SweepError(f"{run}: train_log.jsonl has no '{metric}' (train with eval.sts_path set to log it)")
        return _number(last[metric], run, f"train_log.jsonl step {last.get('step')}", metric), (
            f"{log} (step {last.get('step')})"
        )
    path = run / results_name
    if not path.is_file():
        raise SweepError(
            f"{run}: no {results_name} for metric '{metric}' "
            f"(write it with: mst5 eval --model {run} --output {path} ...)"
        )
    report = _read_json(path, run)
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict):
        raise SweepError(f"{run}: {results_name} has no 'results' mapping (not written by mst5 eval?)")
    node: Any = report["results"]
    walked: list[str] = []
    for key in metric.split("."):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(walked) or "results"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else f"a {type(node).__name__}"
            raise SweepError(f"{run}: {results_name} has no metric '{metric}' (no '{key}' under {where}: {known})")
        node = node[key]
        walked.append(key)
    return _number(node, run, results_name, metric), str(path)


def _number(value: Any, run: Path, where: str, metric: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepError(f"{run}: {where}: metric '{metric}' is {value!r}, not a finite number")
    return float(value)


def read_run(run: Path, metrics: list[str], results_name: str, need_params: bool) -> SweepRun:
    cfg, config_file = read_run_config(run)
    base = base_model_of(run, cfg)
    counted = encoder_parameters(run, base)
    if counted is None and need_params:
        raise SweepError(
            f"{run}: cannot tell the size of model '{base}' (no config.json in {run / 'final'} or in a local "
            f"folder '{base}', and not one of mt5-{{{','.join(MT5_SIZES)}}})"
        )
    out = SweepRun(
        path=str(run),
        name=run.name,
        model=base,
        lr=cfg.optim.lr,
        params=counted[0] if counted else None,
        params_source=counted[1] if counted else None,
        config_file=str(config_file),
    )
    for metric in metrics:
        out.scores[metric], out.sources[metric] = read_metric(run, metric, results_name)
    return out


# ---------------------------------------------------------------- the sweep


def choose_x(runs: list[SweepRun], x: str) -> str:
    if x != "auto":
        return x
    lrs, models = {r.lr for r in runs}, {r.model for r in runs}
    if len(lrs) > 1 and len(models) > 1:
        raise SweepError(
            f"--x auto: the runs differ in both learning rate ({len(lrs)} values) and model ({len(models)}); "
            "pass --x lr or --x model_size"
        )
    if len(lrs) > 1:
        return "lr"
    if len(models) > 1:
        return "model_size"
    raise SweepError(
        f"--x auto: all runs have lr={runs[0].lr:g} and model {runs[0].model}: nothing to sweep "
        "(pass --x lr or --x model_size to plot them anyway)"
    )


def format_params(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _x_value(run: SweepRun, x: str) -> float:
    return run.lr if x == "lr" else float(run.params)  # type: ignore[arg-type]


def _group(run: SweepRun, x: str) -> str:
    """The other variable: lines are split by it when it differs between runs."""
    return run.model if x == "lr" else f"lr {run.lr:g}"


def build_sweep(runs: list[SweepRun], metrics: list[str], x: str) -> dict[str, Any]:
    """Sort the runs along x (within groups of the other variable) and make one series per line."""
    groups = sorted({_group(r, x) for r in runs})
    split = len(groups) > 1
    runs = sorted(runs, key=lambda r: (_group(r, x), _x_value(r, x)))
    seen: dict[tuple[str, float], SweepRun] = {}
    for r in runs:
        key = (_group(r, x), _x_value(r, x))
        if key in seen:
            raise SweepError(
                f"{seen[key].path} and {r.path} give the same point ({x} {_x_value(r, x):g}, {key[0]}): "
                "drop one of them"
            )
        seen[key] = r
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = r.path
    series = []
    for metric in metrics:
        for g in groups:
            members = [r for r in runs if _group(r, x) == g]
            series.append(
                {
                    "label": f"{metric} ({g})" if split else metric,
                    "metric": metric,
                    "group": g,
                    "x": [_x_value(r, x) for r in members],
                    "y": [r.scores[metric] for r in members],
                    "runs": [r.name for r in members],
                }
            )
    return {"x": x, "metrics": metrics, "runs": runs, "series": series}


def markdown_table(sweep: dict[str, Any]) -> str:
    metrics = sweep["metrics"]
    header = ["Run", "Model", "Encoder params", "LR", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sweep["runs"]:
        cells = [r.name, r.model, format_params(r.params), f"{r.lr:g}", *[f"{r.scores[m]:.2f}" for m in metrics]]
        lines.append("| " + " | ".join(cells) + " |")
    axis = "learning rate" if sweep["x"] == "lr" else "encoder parameters"
    return f"Sweep over {axis} (rows sorted by {axis})\n\n" + "\n".join(lines)


def plot(sweep: dict[str, Any], path: Path) -> None:
    """``sweep.png``: score vs x on a log axis, one line per series; written as ``.tmp`` then renamed."""
    try:
        # Imported here, not at module level: only this command plots, and `mst5 train` / `mst5 eval`
        # should not pay matplotlib's import time. Figure + savefig uses no pyplot global state.
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        raise SweepError(
            "matplotlib is needed to draw sweep.png: pip install matplotlib (a dependency of mst5-dist; "
            "`pip install -e .` installs it)"
        ) from None
    x = sweep["x"]
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    for s in sweep["series"]:
        ax.plot(s["x"], s["y"], marker="o", label=s["label"])
    ax.set_xscale("log")
    ticks = sorted({_x_value(r, x) for r in sweep["runs"]})
    if x == "lr":
        labels = [f"{t:g}" for t in ticks]
        ax.set_xlabel("learning rate")
    else:
        by_size = {_x_value(r, x): r.model.rstrip("/").split("/")[-1] for r in sweep["runs"]}
        labels = [f"{by_size[t]}\n{format_params(int(t))}" for t in ticks]
        ax.set_xlabel("encoder parameters")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(labels)
    metrics = sweep["metrics"]
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else "score")
    ax.set_title(f"score vs {'learning rate' if x == 'lr' else 'model size'}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def parse_metrics(specs: list[str] | None) -> list[str]:
    metrics: list[str] = []
    for spec in specs or ["eval_sts_spearman"]:
        for m in spec.split(","):
            m = m.strip()
            if m and m not in metrics:
                metrics.append(m)
    if not metrics:
        raise SweepError("--metric: no metric given")
    return metrics


def run_sweep(
    run_dirs: list[str | Path],
    *,
    metrics: list[str],
    x: str = "auto",
    output: str | Path = "sweep",
    results_name: str = "results.json",
) -> dict[str, Any]:
    """Read the runs, write ``sweep.md``, ``sweep.json`` and ``sweep.png`` into ``output``; return the sweep."""
    if x not in X_CHOICES:
        raise SweepError(f"--x must be one of {', '.join(X_CHOICES)}, got {x!r}")
    if not run_dirs:
        raise SweepError("no run folders given")
    out = check_output(output, "--output", [("run", d) for d in run_dirs])
    runs = [read_run(Path(d), metrics, results_name, need_params=x == "model_size") for d in run_dirs]
    x = choose_x(runs, x)
    if x == "model_size":
        for r in runs:
            if r.params is None:  # --x auto chose model size: now every count is needed
                read_run(Path(r.path), [], results_name, need_params=True)
    sweep = build_sweep(runs, metrics, x)
    table = markdown_table(sweep)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "x": x,
        "metrics": metrics,
        "results_file": results_name,
        "runs": [asdict(r) for r in sweep["runs"]],
        "series": sweep["series"],
        "markdown": table,
    }
    atomic_write_text(out / "sweep.md", table + "\n")
    atomic_write_json(out / "sweep.json", report)
    plot(sweep, out / "sweep.png")
    return sweep


# ---------------------------------------------------------------- CLI


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="training output folders (train.output_dir of each run)")
    p.add_argument(
        "--x", default="auto", choices=X_CHOICES, help="x axis; auto: whichever of lr / model differs between runs"
    )
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        help="repeatable or comma-separated: eval_sts_spearman (last value in train_log.jsonl, the default) "
        "or a dotted path into results.json's results, e.g. stsb.en.spearman, tatoeba.averages.tatoeba14.mean",
    )
    p.add_argument("--results", default="results.json", help="file name of `mst5 eval` output inside each run")
    p.add_argument("--output", default="sweep", help="folder for sweep.md, sweep.json, sweep.png")


def run_sweep_command(args: argparse.Namespace) -> int:
    """``mst5 sweep``: the table on stdout; a missing file or field -> one line on stderr, exit 2."""

    def job() -> None:
        sweep = run_sweep(
            args.runs, metrics=parse_metrics(args.metric), x=args.x, output=args.output, results_name=args.results
        )
        print(markdown_table(sweep))
        print(f"\nsweep written to {args.output}/sweep.{{md,json,png}}")

    return run_command("mst5 sweep", job)
