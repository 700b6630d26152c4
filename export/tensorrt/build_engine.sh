#!/usr/bin/env bash
# Build a TensorRT engine from an `mst5 export` folder, with min/opt/max shape profiles taken from
# its export_report.json, then compare TensorRT with ONNX Runtime through polygraphy.
#
#   export/tensorrt/build_engine.sh EXPORT_DIR [VARIANT]      # VARIANT: fp32 (default) or fp16
#
# TensorRT 10+/11 builds in the precision of the graph: TensorRT 11 has no --fp16 flag (strongly
# typed networks), so fp16 means the fp16 graph (`mst5 export --dtype fp16`), whose norms and
# residual stream are kept in fp32 by construction. The int8 graph (DynamicQuantizeLinear /
# MatMulInteger) is for ONNX Runtime on CPU; TensorRT's parser rejects it.
set -euo pipefail
EXPORT_DIR=${1:?usage: build_engine.sh EXPORT_DIR [fp32|fp16]}
VARIANT=${2:-fp32}
HERE=$(cd "$(dirname "$0")" && pwd)
python "$HERE/../check_tensorrt_ops.py" "$EXPORT_DIR" --variant "$VARIANT"
read -r ONNX MIN OPT MAX < <(python - "$EXPORT_DIR" "$VARIANT" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/export_report.json"))
p = r["shape_profile"]
shape = lambda s: f"input_ids:{s[0]}x{s[1]},attention_mask:{s[0]}x{s[1]}"
print(f"{sys.argv[1]}/{r['variants'][sys.argv[2]]['file']}", shape(p["min"]), shape(p["opt"]), shape(p["max"]))
PY
)
ENGINE="$EXPORT_DIR/onnx/model_${VARIANT}.plan"
trtexec --onnx="$ONNX" --saveEngine="$ENGINE" \
  --minShapes="$MIN" --optShapes="$OPT" --maxShapes="$MAX" \
  --memPoolSize=workspace:4096 --skipInference
echo "engine: $ENGINE"
# TensorRT vs ONNX Runtime on the same random inputs (token ids in [3, 1000), mask all ones).
polygraphy run "$ONNX" --trt --onnxrt \
  --trt-min-shapes "${MIN//,/ }" --trt-opt-shapes "${OPT//,/ }" --trt-max-shapes "${MAX//,/ }" \
  --input-shapes "${OPT//,/ }" \
  --val-range input_ids:[3,1000] attention_mask:[1,1] \
  --atol 1e-3 --rtol 1e-3 --check-error-stat median
