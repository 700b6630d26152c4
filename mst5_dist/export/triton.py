"""Triton Inference Server model repository for an export (``onnxruntime_onnx`` platform).

Layout: ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (+ ``model.onnx_data``). The
``tensorrt_plan`` variant (an engine built by ``export/tensorrt/build_engine.sh``) is documented in
``export/README.md``: same inputs/outputs, ``platform: "tensorrt_plan"``, ``1/model.plan``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mst5_dist.export.onnx_graph import model_files


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
    return model_dir
