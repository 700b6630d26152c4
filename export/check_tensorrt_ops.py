"""Check that every op of an exported graph is one TensorRT's ONNX parser supports.

    python export/check_tensorrt_ops.py EXPORT_DIR [--variant fp32|fp16|int8]

Exit 0 when parsable, 1 otherwise (the unsupported ops are printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mst5_dist.export.tensorrt_ops import check_tensorrt_ops


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--variant", default=None, help="default: the export's primary variant")
    args = ap.parse_args()
    report = json.loads((args.export_dir / "export_report.json").read_text())
    variant = args.variant or report["primary_variant"]
    result = check_tensorrt_ops(args.export_dir / report["variants"][variant]["file"])
    print(json.dumps({k: v for k, v in result.items() if k != "ops"}, indent=2))
    return 0 if result["tensorrt_parsable"] else 1


if __name__ == "__main__":
    sys.exit(main())
