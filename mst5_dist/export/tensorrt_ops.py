"""Does TensorRT's ONNX parser support every op in a graph?

The list is written from onnx-tensorrt's ``docs/operators.md`` (TensorRT 10.x, the ops that matter
for T5 / BERT encoder graphs and their shape arithmetic, plus common neighbours). Ops absent from
it, notably ``DynamicQuantizeLinear`` / ``MatMulInteger`` (ONNX Runtime dynamic int8) and
``com.microsoft`` contrib ops, make the graph unusable by ``trtexec``: the int8 variant is for ONNX
Runtime on CPU, TensorRT wants the fp32 or fp16 graph (or explicit Q/DQ quantisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIN_OPSET = 9  # onnx-tensorrt supports opsets 9 through 20+; we export 17 by default
MAX_OPSET = 22

_OPS = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
    GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM MatMul Max MaxPool Mean
    Min Mod Mul Neg NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin
    Sinh Size Slice Softmax Softplus Softsign Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unsqueeze Where Xor
"""
TENSORRT_OPS = frozenset(_OPS.split())


def check_tensorrt_ops(path: Path) -> dict[str, Any]:
    """Op histogram, unsupported ops and opset verdict for ``path``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops: dict[str, int] = {}
    unsupported: set[str] = set()
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS:
            unsupported.add(key)
    opset_ok = opset is not None and MIN_OPSET <= opset <= MAX_OPSET
    return {
        "opset": opset,
        "opset_supported": opset_ok,
        "ops": dict(sorted(ops.items())),
        "unsupported_ops": sorted(unsupported),
        "tensorrt_parsable": opset_ok and not unsupported,
    }
