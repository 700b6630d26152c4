"""Triton Inference Server model repository for an export (``onnxruntime_onnx`` platform).

Layout: ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (+ ``model.onnx_data``). The
``tensorrt_plan`` variant (an engine built by ``export/tensorrt/build_engine.sh``) is documented in
``export/README.md``: same inputs/outputs, ``platform: "tensorrt_plan"``, ``1/model.plan``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from mst5_dist.export.onnx_graph import ExportError, model_files

# ONNX TensorProto element types -> Triton data types (the ones an encoder graph can carry).
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}
_TENSOR = re.compile(r"\{\s*name:\s*\"([^\"]+)\"\s+data_type:\s*(\w+)\s+dims:\s*\[([^\]]*)\]\s*\}")


def config_pbtxt(name: str, hidden: int, *, max_batch_size: int = 64, platform: str = "onnxruntime_onnx") -> str:
    # With max_batch_size > 0, Triton prepends the batch dimension: dims exclude it.
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }}
]
output [
  {{ name: "last_hidden_state" data_type: TYPE_FP32 dims: [ -1, {hidden} ] }},
  {{ name: "sentence_embedding" data_type: TYPE_FP32 dims: [ {hidden} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {max(1, max_batch_size // 4)}, {max_batch_size} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [ {{ kind: KIND_AUTO count: 1 }} ]
"""


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # large models: no second copy on the same filesystem
    except OSError:
        shutil.copy2(src, dst)


def write_triton_repo(onnx_path: Path, repo: Path, *, name: str, hidden: int, max_batch_size: int = 64) -> Path:
    model_dir = repo / name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    files = model_files(onnx_path)
    # Triton's ORT backend loads 1/model.onnx; the external data must keep the name the graph records.
    _link_or_copy(files[0], version / "model.onnx")
    for extra in files[1:]:
        _link_or_copy(extra, version / extra.name)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name, hidden, max_batch_size=max_batch_size))
    problems = config_problems(model_dir)
    if problems:
        raise ExportError(f"{model_dir / 'config.pbtxt'} does not match its graph: " + "; ".join(problems))
    return model_dir


def read_config_tensors(text: str) -> tuple[int, dict[str, dict[str, tuple[str, list[int]]]]]:
    """(max_batch_size, {"input"|"output": {name: (data_type, dims)}}) of a config.pbtxt in the
    one-tensor-per-brace form ``config_pbtxt`` writes."""
    batch = re.search(r"^max_batch_size:\s*(\d+)", text, re.M)
    tensors: dict[str, dict[str, tuple[str, list[int]]]] = {}
    for kind in ("input", "output"):
        block = re.search(rf"^{kind}\s*\[(.*?)^\]", text, re.M | re.S)
        found = _TENSOR.findall(block.group(1)) if block else []
        tensors[kind] = {n: (t, [int(d) for d in dims.replace(",", " ").split()]) for n, t, dims in found}
    return int(batch.group(1)) if batch else 0, tensors


def _inferred_output_dims(model) -> dict[str, list[int | None]]:
    """Output dims from ONNX shape inference with the declared output shapes cleared (None: not a
    fixed size). The legacy exporter declares the embedding axis of ``sentence_embedding``
    symbolic (it loses the size at the L2 norm); inference from the weights' shapes recovers it."""
    import copy

    import onnx

    probe = copy.deepcopy(model)
    for v in probe.graph.output:
        v.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # an op without a shape function: keep the declared dims
        return {}
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.output
        if v.type.tensor_type.HasField("shape")
    }


def graph_tensors(onnx_path: Path) -> dict[str, dict[str, tuple[str, list[int]]]]:
    """The graph's inputs and outputs as Triton would declare them: (data type, dims), a dimension
    of no fixed size as -1 (declared symbolic and not fixed by shape inference)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inferred = _inferred_output_dims(model)
    out: dict[str, dict[str, tuple[str, list[int]]]] = {}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        out[kind] = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            known = inferred.get(v.name, []) if kind == "output" else []
            if len(known) == len(dims):
                dims = [k if d == -1 and k else d for d, k in zip(dims, known)]
            out[kind][v.name] = (ONNX_TO_TRITON.get(t.elem_type, f"ONNX elem_type {t.elem_type}"), dims)
    return out


def config_problems(model_dir: Path) -> list[str]:
    """Every input/output of ``model_dir/config.pbtxt`` whose name, data type or dims (the batch
    dimension excluded when ``max_batch_size`` > 0, a dynamic one as -1) differ from the graph
    ``model_dir/1/model.onnx``; ``[]`` when Triton's declared interface is the graph's."""
    max_batch, declared = read_config_tensors((model_dir / "config.pbtxt").read_text())
    actual = graph_tensors(model_dir / "1" / "model.onnx")
    problems = []
    for kind in ("input", "output"):
        for name in sorted(set(declared[kind]) | set(actual[kind])):
            if name not in actual[kind]:
                problems.append(f"{kind} '{name}' is not in the graph (graph has {sorted(actual[kind])})")
                continue
            if name not in declared[kind]:
                problems.append(f"graph {kind} '{name}' is not declared")
                continue
            (want_type, want_dims), (got_type, dims) = declared[kind][name], actual[kind][name]
            if max_batch > 0:
                if not dims or dims[0] != -1:
                    problems.append(
                        f"{kind} '{name}': max_batch_size {max_batch} needs a dynamic first axis, graph has {dims}"
                    )
                    continue
                dims = dims[1:]
            if want_type != got_type:
                problems.append(f"{kind} '{name}': data_type {want_type}, graph has {got_type}")
            if want_dims != dims:
                problems.append(f"{kind} '{name}': dims {want_dims}, graph has {dims}")
    return problems
