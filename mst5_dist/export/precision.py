"""Lower-precision variants of the fp32 graph, each gated separately.

fp16: ``onnxconverter``'s ``convert_float_to_float16`` with an op block list does not keep a
*chain* of ops in fp32 (it puts fp32->fp16->fp32 casts between blocked nodes, so the RMS norm's
x^2 still overflows; STACK-FACTS). Instead the precision plan is decided per module in PyTorch
and the graph is exported from that: every ``nn.Linear`` runs in fp16 (fp16 in, fp16 weights,
result cast back to fp32) EXCEPT the modules the model family keeps in fp32 (T5's FFN output
``wo``, whose activations exceed 65504 on real mT5). Embeddings, the residual stream, every norm
(RMS norm / LayerNorm), softmax, pooling and L2 norm stay fp32 by construction. ``check_fp16_islands``
then verifies on the saved graph, node by node, that norm arithmetic never sees fp16.

int8: the recipe is chosen per model by the gate (``mst5_dist.export.int8``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

# Modules whose outputs overflow fp16 in real checkpoints (transformers' T5 _keep_in_fp32_modules).
FP32_LINEAR_NAMES = {"wo"}


class HalfLinear(nn.Module):
    """fp16 matmul between fp32 activations: cast in, compute, cast out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.inner = copy.deepcopy(linear).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float16)).to(x.dtype)


def fp16_plan(backbone: nn.Module) -> nn.Module:
    """A copy of the fp32 backbone with fp16 matmuls (see module docstring); returns the copy."""
    model = copy.deepcopy(backbone)
    keep = set(FP32_LINEAR_NAMES) | set(getattr(model, "_keep_in_fp32_modules", None) or [])
    targets = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.split(".")[-1] not in keep
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, HalfLinear(linear))
    return model


def naive_fp16(backbone: nn.Module) -> nn.Module:
    """Everything in fp16 (what a plain ``.half()`` export gives): the negative control."""
    return copy.deepcopy(backbone).half()


# Ops that make up normalisation arithmetic (RMS norm: Pow, ReduceMean, Add eps, Sqrt, Div;
# LayerNorm: the same or a fused LayerNormalization) and must see fp32 in the fp16 graph.
NORM_OPS = {"Pow", "ReduceMean", "Sqrt", "LayerNormalization", "SimplifiedLayerNormalization"}


def check_fp16_islands(path: Path) -> dict[str, int]:
    """Raise if any normalisation node consumes fp16; return counts of fp16 / fp32 matmuls."""
    import onnx
    from onnx import TensorProto, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    inferred = shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.input})
    types.update({init.name: init.data_type for init in model.graph.initializer})
    bad = []
    counts = {"matmul_fp16": 0, "matmul_fp32": 0, "norm_nodes_fp32": 0}
    for node in model.graph.node:
        first = types.get(node.input[0]) if node.input else None
        if node.op_type in NORM_OPS:
            if first != TensorProto.FLOAT:
                bad.append(f"{node.name or node.op_type} ({node.op_type}) input type {first}")
            else:
                counts["norm_nodes_fp32"] += 1
        elif node.op_type in ("MatMul", "Gemm"):
            counts["matmul_fp16" if first == TensorProto.FLOAT16 else "matmul_fp32"] += 1
    if bad:
        from mst5_dist.export.onnx_graph import ExportError

        raise ExportError(f"{path}: normalisation nodes run in fp16: {bad[:5]}")
    if counts["matmul_fp16"] == 0:
        from mst5_dist.export.onnx_graph import ExportError

        raise ExportError(f"{path}: no fp16 matmul in the fp16 graph")
    return counts
