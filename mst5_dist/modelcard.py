"""``write_model_card``: the ``README.md`` of a ``final/``-style or imported model folder.

Facts are read from the folder (``sentence_encoder.json``, ``adapter_config.json``,
``training_config.yaml``, ``import_report.json``, ``results.json``); licences are only what the
caller declares (``None`` -> "not declared"). No torch: files in, Markdown out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mst5_dist.files import read_json_or_none
from mst5_dist.layout import TRAINING_CONFIG
from mst5_dist.model.meta import EncoderMeta

ADAPTER_CONFIG = "adapter_config.json"
IMPORT_REPORT = "import_report.json"
NOT_DECLARED = "not declared (check before redistributing)"


def _results_section(results: dict[str, Any]) -> str:
    if results.get("markdown"):
        return str(results["markdown"])
    rows = []
    for task, res in (results.get("results") or {}).items():
        if not isinstance(res, dict):
            continue
        for key, val in res.items():
            if isinstance(val, dict):
                score = next((val[m] for m in ("spearman", "f1", "mean", "accuracy") if m in val), None)
                if isinstance(score, (int, float)):
                    rows.append(f"| {task} | {key} | {score:.2f} |")
    return "| task | subset | score |\n|---|---|---|\n" + "\n".join(rows) if rows else "(no scores in results.json)"


def _facts(d: Path, base_model: str | None, results: str | Path | None) -> dict[str, Any]:
    """Everything the card says, read from the folder once."""
    meta = EncoderMeta.read_or_none(d) or EncoderMeta()
    train_cfg: dict[str, Any] = {}
    if (d / TRAINING_CONFIG).is_file():
        import yaml

        train_cfg = yaml.safe_load((d / TRAINING_CONFIG).read_text(encoding="utf-8")) or {}
    return {
        "meta": meta,
        "adapter": read_json_or_none(d / ADAPTER_CONFIG),
        "report": read_json_or_none(d / IMPORT_REPORT),
        "train_cfg": train_cfg,
        "results": read_json_or_none(Path(results)) if results else read_json_or_none(d / "results.json"),
        "base": base_model or meta.base_model or (train_cfg.get("model") or {}).get("name_or_path") or "unknown",
        "pooling": meta.pooling or "mean",
        "normalize": meta.normalize is not False,
        "use_fast": meta.tokenizer_use_fast is not False,
        "max_len": meta.max_seq_length or 128,
    }


def _header(f: dict[str, Any], title: str, licence: str | None, source: str | None) -> list[str]:
    lines = ["---", "pipeline_tag: sentence-similarity", "tags:", "- sentence-embeddings", "- m-st5"]
    if licence:
        lines.append(f"license: {licence}")
    lines += ["---", "", f"# {title}", ""]
    lines.append(
        f"Sentence encoder: the encoder of `{f['base']}`, {f['pooling']}-pooled"
        + (" and L2-normalised" if f["normalize"] else " (not normalised; compare with cosine similarity)")
        + f", embedding size {f['meta'].embedding_dim or '?'}, inputs truncated to {f['max_len']} tokens."
    )
    if source:
        lines.append(f"Imported from `{source}` with `mst5 import-adapter`.")
    return lines


def _model_section(f: dict[str, Any]) -> list[str]:
    adapter, report = f["adapter"], f["report"]
    lines = ["", "## Model", "", "| | |", "|---|---|", f"| base model | `{f['base']}` |"]
    lines.append(f"| weights | {'LoRA adapter (PEFT) on the base' if adapter else 'full weights'} |")
    lines.append(f"| pooling | {f['pooling']} |")
    lines.append(f"| normalise | {f['normalize']} |")
    lines.append(f"| tokenizer | {'fast' if f['use_fast'] else 'slow (SentencePiece, use_fast=False)'} |")
    if not adapter:
        return lines
    lines += [
        "",
        "## LoRA settings",
        "",
        f"r {adapter.get('r')}, alpha {adapter.get('lora_alpha')}, dropout {adapter.get('lora_dropout')}, "
        f"target modules {adapter.get('target_modules')}, bias {adapter.get('bias', 'none')}.",
    ]
    if report:
        dropped = report.get("dropped_decoder_keys")
        lines.append(
            f"Source adapter `{report.get('source')}` ({report.get('source_weights')}, sha256 "
            f"`{report.get('source_sha256')}`): {report.get('matched')} of {report.get('keys')} tensors imported"
            + (f", {len(dropped)} decoder tensors dropped on request" if dropped else "")
            + "."
        )
    return lines


def _recipe_section(f: dict[str, Any], data: str | None) -> list[str]:
    train_cfg = f["train_cfg"]
    lines = ["", "## Training recipe", ""]
    if train_cfg:
        lora, optim, tr, loss = (train_cfg.get(s) or {} for s in ("lora", "optim", "train", "loss"))
        lines.append(
            f"Contrastive InfoNCE (temperature {loss.get('temperature')}, hard negatives "
            f"{loss.get('hard_negatives')}), LoRA preset `{lora.get('preset')}` r {lora.get('r')} alpha "
            f"{lora.get('alpha')}, AdamW lr {optim.get('lr')}, global batch {tr.get('batch_size')}, "
            f"{tr.get('epochs')} epoch(s), seed {tr.get('seed')}. Full config: `training_config.yaml`."
        )
    else:
        lines.append("No `training_config.yaml` in this folder; see the source's own documentation.")
    data_desc = data
    if not data_desc and train_cfg.get("data"):
        dcfg = train_cfg["data"]
        data_desc = f"{dcfg.get('format')} data: {', '.join(map(str, dcfg.get('paths') or []))}"
    lines += ["", "## Data", "", data_desc or "not recorded"]
    lines += ["", "## Evaluation", ""]
    res = f["results"]
    lines.append(_results_section(res) if res else "No `results.json` yet: run `mst5 eval --model THIS_DIR ...`.")
    return lines


def _usage_python(f: dict[str, Any]) -> list[str]:
    adapter, base, max_len = f["adapter"], f["base"], f["max_len"]
    st_norm = "\nmodel.append(Normalize())" if f["normalize"] else ""
    lines = [
        "",
        "## Usage",
        "",
        "With this project:",
        "",
        "```python",
        "from mst5_dist.model import SentenceEncoder",
        "",
        'encoder = SentenceEncoder.from_pretrained("THIS_DIR")',
        'emb = encoder.encode(["I am a dog.", "Ich bin ein Hund."])',
        "```",
        "",
        "With sentence-transformers (the base's encoder + this adapter"
        + (")" if adapter else "; or point it at a `mst5 export` folder, which holds modules.json)")
        + ":",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer",
        "",
        f'word = Transformer("{base if adapter else "THIS_DIR"}", max_seq_length={max_len}, '
        f'processor_kwargs={{"use_fast": {f["use_fast"]}}})',
        f'model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "{f["pooling"]}")])'
        + st_norm,
    ]
    if adapter:
        lines.append('model.load_adapter("THIS_DIR")')
    lines += ['emb = model.encode(["I am a dog.", "Ich bin ein Hund."])', "```"]
    return lines


def _usage_serving(f: dict[str, Any]) -> list[str]:
    use_fast, max_len = f["use_fast"], f["max_len"]
    return [
        "",
        "With ONNX Runtime: export first (merges the adapter, checks parity, writes `onnx/model.onnx`):",
        "",
        "```bash",
        "mst5 export --model THIS_DIR --output THIS_DIR-onnx --triton",
        "mst5 embed --model THIS_DIR-onnx --input texts.txt --output emb.npy",
        "```",
        "",
        "```python",
        "import onnxruntime as ort",
        "from transformers import AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("THIS_DIR-onnx", use_fast={use_fast})',
        'sess = ort.InferenceSession("THIS_DIR-onnx/onnx/model.onnx", providers=["CPUExecutionProvider"])',
        f'batch = tok(["I am a dog."], padding=True, truncation=True, max_length={max_len}, return_tensors="np")',
        'emb = sess.run(["sentence_embedding"], {"input_ids": batch["input_ids"].astype("int64"),',
        '                                        "attention_mask": batch["attention_mask"].astype("int64")})[0]',
        "```",
        "",
        "With Triton Inference Server: `mst5 export ... --triton` writes `triton/mst5_encoder/` "
        "(`config.pbtxt` + `1/model.onnx`, platform `onnxruntime_onnx`); inputs `input_ids`, `attention_mask` "
        "(INT64, [batch, seq]), output `sentence_embedding` (FP32). Serve with "
        "`tritonserver --model-repository THIS_DIR-onnx/triton`; tokenize on the client as above.",
    ]


def write_model_card(
    model_dir: str | Path,
    *,
    name: str | None = None,
    base_model: str | None = None,
    base_license: str | None = None,
    data: str | None = None,
    data_license: str | None = None,
    adapter_license: str | None = None,
    source: str | None = None,
    results: str | Path | None = None,
) -> Path:
    """Write ``model_dir/README.md`` describing the model folder; returns the card's path."""
    d = Path(model_dir)
    f = _facts(d, base_model, results)
    lines = _header(f, name or d.name, adapter_license or data_license or base_license, source)
    lines += _model_section(f) + _recipe_section(f, data) + _usage_python(f) + _usage_serving(f)
    lines += [
        "",
        "## Licences",
        "",
        f"- base model `{f['base']}`: {base_license or NOT_DECLARED}",
        f"- training data: {data_license or NOT_DECLARED}",
    ]
    if f["adapter"]:
        lines.append(f"- adapter weights: {adapter_license or NOT_DECLARED}")
    lines.append("")
    card = d / "README.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card
