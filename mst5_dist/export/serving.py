"""What serving runtimes read from an export folder, written and checked here.

* ``tokenizer.json`` alone (Hugging Face ``tokenizers`` in Rust/JS/Python, Triton's Python backend,
  TEI): ``set_tokenizer_limits`` makes its truncation ``max_seq_length`` and its padding the
  encoder's (pad to the longest row, right side). Without it the file keeps whatever the last call
  of the encoder's tokenizer set (the parity gate's 320-token probe), and a runtime that reads
  only this file embeds a long text differently from sentence-transformers on the same export.
* Text Embeddings Inference, ONNX backend (text-embeddings-inference 1.9: ``router/src/lib.rs``,
  ``backends/ort/src/lib.rs``, ``backends/src/lib.rs``): ``tei_problems`` checks every file and
  field that path reads, in the types its parser demands (``TEI_FIELDS``, ``_graph_problems``).
* FastEmbed (0.9): ``TextEmbedding.add_custom_model`` + ``specific_model_path`` reads
  ``tokenizer.json``, ``tokenizer_config.json`` (``model_max_length``, ``pad_token``),
  ``config.json`` (``pad_token_id``) and the graph named by ``model_file``; the arguments for an
  export folder are in docs/export.md and ``fastembed_arguments``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mst5_dist.layout import EXPORT_REPORT, META_FILE
from mst5_dist.model.meta import EncoderMeta

TOKENIZER_JSON = "tokenizer.json"
# The external-data file name TEI fetches beside onnx/model.onnx for a graph over 2 GB
# (backends/src/lib.rs, download_onnx); ONNX Runtime resolves it relative to the graph file.
TEI_EXTERNAL_DATA = "model.onnx_data"
# The JSON fields TEI's ONNX path parses (serde: a missing required field or a wrong type stops
# the server), by file: field -> (required, kind). tokenizer_config.json (padding_side) and
# config_sentence_transformers.json (prompts) are optional and checked on their own.
TEI_FIELDS: dict[str, dict[str, tuple[bool, str]]] = {
    "config.json": {
        "architectures": (True, "str list"),  # one ending in "Classification" makes a classifier
        "model_type": (True, "str"),
        "max_position_embeddings": (True, "uint"),
        "hidden_size": (True, "uint"),
        "num_hidden_layers": (True, "uint"),
        "pad_token_id": (False, "uint?"),  # the pad id, else eos_token_id, else 0
        "eos_token_id": (False, "uint?"),
    },
    "1_Pooling/config.json": {
        "pooling_mode_cls_token": (True, "bool"),
        "pooling_mode_mean_tokens": (True, "bool"),
        "pooling_mode_lasttoken": (False, "bool"),
    },
    "sentence_bert_config.json": {"max_seq_length": (True, "uint")},  # the longest input TEI accepts
}


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def set_tokenizer_limits(folder: Path, *, max_seq_length: int, pad_token: str | None, pad_id: int | None) -> None:
    """Rewrite ``folder/tokenizer.json`` with truncation at ``max_seq_length`` (right side, as the
    encoder truncates) and padding to the longest row with the encoder's pad token."""
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_JSON
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_seq_length, strategy="longest_first", direction="right")
    if pad_token is not None and pad_id is not None:
        tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
    else:
        tokenizer.no_padding()
    tokenizer.save(str(path))


def max_lengths(export_dir: Path) -> dict[str, int | None]:
    """The longest input each file of the export declares, by ``file:field`` (None: not declared)."""
    export_dir = Path(export_dir)

    def field(name: str, *keys: str) -> int | None:
        path = export_dir / name
        if not path.is_file():
            return None
        value: Any = _read(path)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    meta = EncoderMeta.read_or_none(export_dir)
    return {
        "sentence_bert_config.json:max_seq_length": field("sentence_bert_config.json", "max_seq_length"),
        "tokenizer_config.json:model_max_length": field("tokenizer_config.json", "model_max_length"),
        "tokenizer.json:truncation.max_length": field(TOKENIZER_JSON, "truncation", "max_length"),
        f"{META_FILE}:max_seq_length": meta.max_seq_length if meta else None,
        f"{EXPORT_REPORT}:max_seq_length": field(EXPORT_REPORT, "max_seq_length"),
    }


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_problems(export_dir: Path, name: str, checks: dict[str, tuple[bool, str]]) -> tuple[Any, list[str]]:
    """Load ``name``; for each ``field: (required, kind)`` report a missing or mistyped field."""
    path = export_dir / name
    if not path.is_file():
        return None, [f"{name}: missing"]
    try:
        data = _read(path)
    except json.JSONDecodeError as e:
        return None, [f"{name}: not valid JSON ({e})"]
    if not isinstance(data, dict):
        return None, [f"{name}: not a JSON object"]
    kinds = {
        "uint": (_is_uint, "a non-negative integer"),
        "uint?": (lambda v: v is None or _is_uint(v), "a non-negative integer or null"),
        "bool": (lambda v: isinstance(v, bool), "true/false"),
        "str": (lambda v: isinstance(v, str), "a string"),
        "str list": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    }
    out = []
    for key, (required, kind) in checks.items():
        if key not in data:
            if required:
                out.append(f"{name}: field '{key}' missing")
            continue
        test, what = kinds[kind]
        if not test(data[key]):
            out.append(f"{name}: field '{key}' must be {what}, got {data[key]!r}")
    return data, out


def _graph_problems(export_dir: Path) -> list[str]:
    import onnx
    from onnx.external_data_helper import uses_external_data

    rel = "model.onnx" if (export_dir / "model.onnx").is_file() else "onnx/model.onnx"
    path = export_dir / rel
    if not path.is_file():
        return ["model.onnx / onnx/model.onnx: missing (TEI's ONNX backend reads one of them)"]
    model = onnx.load(str(path), load_external_data=False)
    out = []
    inputs = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    outputs = {v.name: v.type.tensor_type.elem_type for v in model.graph.output}
    for name in ("input_ids", "attention_mask"):
        if inputs.get(name) != onnx.TensorProto.INT64:
            out.append(f"{rel}: input '{name}' missing or not int64 (has {sorted(inputs)})")
    used = "sentence_embedding" if "sentence_embedding" in outputs else "last_hidden_state"
    if outputs.get(used) != onnx.TensorProto.FLOAT:
        out.append(f"{rel}: output '{used}' missing or not float32 (TEI's ONNX backend runs float32 only)")
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in sorted(locations):
        if location != TEI_EXTERNAL_DATA:
            out.append(f"{rel}: external data in '{location}', TEI fetches '{TEI_EXTERNAL_DATA}'")
        elif not (path.parent / location).is_file():
            out.append(f"{rel}: external data '{location}' missing beside the graph")
    return out


def tei_problems(export_dir: str | Path) -> list[str]:
    """Everything TEI's ONNX backend would fail on, or read differently from ``mst5 embed``, in an
    export folder, one line per problem naming the file and field; ``[]`` when it would serve it."""
    export_dir = Path(export_dir)
    out = _graph_problems(export_dir)
    parsed = {}
    for name, fields in TEI_FIELDS.items():
        data, found = _json_problems(export_dir, name, fields)
        parsed[name] = data if not found else None
        out += found
    config, pooling, st_config = (parsed[n] for n in TEI_FIELDS)
    if config and any(a.endswith("Classification") for a in config["architectures"]):
        out.append(f"config.json: architectures {config['architectures']} make TEI serve a classifier")
    if pooling and not any(pooling.get(k) for k in TEI_FIELDS["1_Pooling/config.json"]):
        out.append("1_Pooling/config.json: no pooling mode TEI supports is true (cls, mean, lasttoken)")
    tok_config, found = _json_problems(export_dir, "tokenizer_config.json", {})
    out += found if (export_dir / "tokenizer_config.json").is_file() else []  # optional, parsed when present
    if tok_config is not None and tok_config.get("padding_side", "right") not in ("left", "right"):
        out.append(
            f"tokenizer_config.json: field 'padding_side' must be left or right, got {tok_config['padding_side']!r}"
        )
    if (export_dir / "config_sentence_transformers.json").is_file():
        prompts = _read(export_dir / "config_sentence_transformers.json").get("prompts")
        if prompts is not None and not (
            isinstance(prompts, dict) and all(isinstance(v, str) for v in prompts.values())
        ):
            out.append("config_sentence_transformers.json: field 'prompts' must map names to strings")
    out += _tokenizer_problems(export_dir)
    if config and st_config and not out:
        # TEI takes sentence_bert_config.json's max_seq_length; the position table bounds it
        # (RoBERTa-style models start positions at pad_token_id + 1).
        roberta = config["model_type"] in ("xlm-roberta", "camembert", "roberta")
        offset = (config.get("pad_token_id") or 0) + 1 if roberta else 0
        if st_config["max_seq_length"] > config["max_position_embeddings"] - offset:
            out.append(
                f"sentence_bert_config.json: max_seq_length {st_config['max_seq_length']} exceeds config.json "
                f"max_position_embeddings {config['max_position_embeddings']} - {offset}"
            )
    return out


def _tokenizer_problems(export_dir: Path) -> list[str]:
    path = export_dir / TOKENIZER_JSON
    if not path.is_file():
        return [f"{TOKENIZER_JSON}: missing (TEI and FastEmbed only read fast tokenizers)"]
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library's own parse error, whatever its type
        return [f"{TOKENIZER_JSON}: does not load with tokenizers ({e})"]
    return []


def max_length_problems(export_dir: str | Path) -> list[str]:
    """``[]`` when every file that declares a maximum input length declares the same one (so every
    runtime truncates where sentence-transformers and ``mst5 embed`` do), else one line naming them."""
    lengths = max_lengths(Path(export_dir))
    declared = {k: v for k, v in lengths.items() if v is not None}
    missing = [k for k, v in lengths.items() if v is None and not k.startswith("sentence_encoder")]
    out = [f"{k}: not declared" for k in missing]
    if len(set(declared.values())) > 1:
        out.append(f"maximum input lengths disagree: {declared}")
    return out


def fastembed_arguments(export_dir: str | Path, variant: str = "fp32") -> dict[str, Any]:
    """``TextEmbedding.add_custom_model`` keyword arguments (besides ``model``, ``sources`` and the
    enum-typed ``pooling``, which is ``PoolingType.DISABLED``: the graph pools and normalises) for
    one gated variant of an export, from its ``export_report.json``."""
    report = _read(Path(export_dir) / EXPORT_REPORT)
    entry = report["variants"][variant]
    return {
        "dim": report["embedding_dim"],
        "model_file": entry["file"],
        "additional_files": entry["files"][1:],
        "output_name": "sentence_embedding",
        "normalization": True,
    }
