"""Monolithic LoRA training vs modular training (language modules + CLA adapters), same budget.

Both systems see the same rows: every language's STS-B train paraphrase pairs and the
(language, English) parallel pairs that `mst5 train-modular` writes to OUT/modular/data/. The
monolithic run trains ONE LoRA on all of them, shuffled together, for as many optimizer steps
(same batch size) as the modular stages take in total. Both are then evaluated by `mst5 eval` on
STS-B test (monolingual), cross-lingual STS-B en-xx, Tatoeba xx<->en, language bias and RSIM.

    python benchmarks/modular_vs_monolithic.py [--langs en,de,ru,zh] [--steps 30] [--out runs/bench-modular]

Prints a Markdown table (also written to OUT/modular_vs_monolithic.md, numbers in .json). The tiny
default model is a random-init mT5 with a 2k-piece tokenizer: the numbers show the machinery, not
what the method does on mt5-xxl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mst5(*args: str) -> None:
    cmd = [sys.executable, "-m", "mst5_dist.cli", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-4000:]}")


def evaluate(model: Path, out: Path, langs: list[str], data_dir: Path, limit: int | None) -> dict:
    others = [lang for lang in langs if lang != "en"]
    args = ["eval", "--model", str(model), "--output", str(out), "--data-dir", str(data_dir), "--no-progress",
            "--tasks", "stsb,xstsb,tatoeba,langbias,rsim", "--stsb-langs", ",".join(langs),
            "--tatoeba-langs", ",".join(others), "--rsim-langs", ",".join(others)]  # fmt: skip
    if limit:
        args += ["--limit", str(limit)]
    mst5(*args)
    return json.loads(out.read_text())["results"]


def rows_for(name: str, res: dict, langs: list[str]) -> list[list[str]]:
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    own = res["langbias"]["own_spearman"]
    pooled = res["langbias"]["pooled_spearman"]
    rows = []
    for lang in langs:
        cross = res["xstsb"].get(f"en-{lang}", {}).get("spearman")
        tat = res["tatoeba"]["languages"].get(lang, {}).get("mean")
        rsim = res["rsim"]["languages"].get(lang)
        drop = own[f"en-{lang}"] - pooled if f"en-{lang}" in own else None
        rows.append([name, lang, f(res["stsb"][lang]["spearman"]), f(cross), f(tat), f(drop),
                     f(None if rsim is None else 100 * rsim)])  # fmt: skip
    rows.append([name, "**all**", f(sum(res["stsb"][x]["spearman"] for x in langs) / len(langs)),
                 f(sum(res["xstsb"][f"en-{x}"]["spearman"] for x in langs if x != "en") / (len(langs) - 1)),
                 f(sum(res["tatoeba"]["languages"][x]["mean"] for x in langs if x != "en") / (len(langs) - 1)),
                 f(res["langbias"]["bias"]), f(100 * res["rsim"]["mean"])])  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="runs/tiny-mt5", help="base model (built with `mst5 build-tiny` if missing)")
    p.add_argument("--langs", default="en,de,ru,zh")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per modular stage")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--limit", type=int, default=None, help="first N items of every evaluation set")
    p.add_argument("--out", default="runs/bench-modular")
    a = p.parse_args()
    out, data_dir, langs = (REPO / a.out).resolve(), Path(a.data_dir).resolve(), a.langs.split(",")
    base = (REPO / a.base).resolve()
    if not (base / "config.json").is_file():
        mst5("build-tiny", "--output", str(base))
    common = [f"model.name_or_path={base}", f"train.batch_size={a.batch_size}", "train.save_every=0",
              f"data.cache_dir={out / 'arrow'}"]  # fmt: skip

    t0 = time.perf_counter()
    mst5("train-modular", "--config", "configs/modular-tiny.yaml", *common, f"train.output_dir={out / 'modular'}",
         f"train.max_steps={a.steps}", f"modular.languages=[{','.join(langs)}]",
         f"modular.stsb_dir={data_dir / 'stsb-multi-mt'}")  # fmt: skip
    t_mod = time.perf_counter() - t0
    # One epoch of the union holds more batches than this many steps, so max_steps is the budget.
    stage_steps = sum(  # the last logged step of every stage run
        json.loads(log.read_text().splitlines()[-1])["step"] for log in (out / "modular").glob("*/*/train_log.jsonl")
    )

    data_files = sorted(str(f) for f in (out / "modular" / "data").glob("*.jsonl"))
    t0 = time.perf_counter()
    mst5("train", "--config", "configs/modular-tiny.yaml", *common, f"train.output_dir={out / 'monolithic'}",
         f"train.max_steps={stage_steps}", f"data.paths={json.dumps(data_files)}", "loss.hard_negatives=false")  # fmt: skip
    t_mono = time.perf_counter() - t0

    results = {
        "monolithic": evaluate(out / "monolithic", out / "monolithic.json", langs, data_dir, a.limit),
        "modular": evaluate(out / "modular", out / "modular.json", langs, data_dir, a.limit),
    }
    header = ["system", "lang", "STS-B mono", "XSTS en-xx", "Tatoeba xx<->en", "bias drop (own-pooled)", "RSIM x100"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, res in results.items():
        lines += ["| " + " | ".join(r) + " |" for r in rows_for(name, res, langs)]
    table = "\n".join(lines)
    summary = (
        f"Budget: {stage_steps} optimizer steps of {a.batch_size} pairs each for both systems "
        f"(modular: {a.steps} per stage). Wall time: modular {t_mod:.0f} s, monolithic {t_mono:.0f} s "
        f"(ratio {t_mod / t_mono:.2f}; the modular figure includes per-stage model loading).\n"
        "Spearman x100; Tatoeba mean of both directions, accuracy x100; 'all' rows average the languages "
        "(bias: mean drop from each en-xx dataset's Spearman to the pooled one; lower is better)."
    )
    print(table + "\n\n" + summary)
    (out / "modular_vs_monolithic.md").write_text(table + "\n\n" + summary + "\n", encoding="utf-8")
    (out / "modular_vs_monolithic.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
