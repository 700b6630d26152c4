"""ONNX graph of a sentence encoder: (input_ids, attention_mask) -> (last_hidden_state,
sentence_embedding), pooling and L2 norm inside the graph, dynamic batch and sequence.

Uses the legacy TorchScript exporter (``dynamo=False``): with transformers 5 the dynamo exporter
fails on mT5 with sdpa attention, and the legacy one matches PyTorch to ~2e-6 (STACK-FACTS).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mst5_dist.errors import BadInput

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["last_hidden_state", "sentence_embedding"]
EXTERNAL_DATA = "model.onnx_data"  # one stable name, the one sentence-transformers/optimum use
# protobuf cannot serialise a message over 2 GiB; stay well below it.
INLINE_LIMIT_BYTES = 1_500_000_000


class ExportError(BadInput):
    """The export could not be produced or is malformed; the message says why."""


class EmbeddingWrapper(nn.Module):
    """Backbone + the encoder's pooling (+ L2 norm), the graph we ship."""

    def __init__(self, backbone: nn.Module, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0].float()
        m = mask.unsqueeze(-1).to(torch.float32)
        # clamp: an all-padding row gives a zero vector, exactly like model.mean_pool
        return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = self.pool(hidden, attention_mask)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return hidden.float(), emb


def example_inputs(pad_id: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 2 x 7 with padding in one row: no dimension of size 0 or 1 that could be specialised."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, max(4, min(vocab_size, 1000)), (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 4:] = 0
    ids[1, 4:] = pad_id
    return ids.to(torch.int64), mask


def export_onnx(wrapper: EmbeddingWrapper, path: Path, *, opset: int, pad_id: int, vocab_size: int) -> Path:
    """Write ``path`` (+ ``model.onnx_data`` beside it when large) and check its dims are dynamic."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper.eval()
    args = example_inputs(pad_id, vocab_size)
    dyn = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "last_hidden_state": {0: "batch", 1: "sequence"},
        "sentence_embedding": {0: "batch"},
    }
    # The legacy exporter scatters one file per tensor beside the model when it exceeds 2 GiB;
    # export into scratch space and re-save with a single external-data file of a stable name.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                str(raw),
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes=dyn,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        size = sum(f.stat().st_size for f in Path(scratch).iterdir())
        if size <= INLINE_LIMIT_BYTES and not any(p.name != "model.onnx" for p in Path(scratch).iterdir()):
            shutil.move(str(raw), path)
        else:
            model = onnx.load(str(raw), load_external_data=True)
            save_onnx(model, path, external=True)
    check_dynamic(path)
    return path


def save_onnx(model, path: Path, *, external: bool) -> None:
    import onnx

    for old in (path, path.with_name(path.name + "_data")):
        old.unlink(missing_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + "_data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def model_files(path: Path) -> list[Path]:
    """The graph file and its external-data file, if any."""
    data = path.with_name(path.name + "_data")
    return [path, data] if data.is_file() else [path]


def check_dynamic(path: Path) -> None:
    """Raise unless batch and sequence are symbolic in the saved graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    expect = {"input_ids": 2, "attention_mask": 2, "last_hidden_state": 2, "sentence_embedding": 1}
    seen = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        seen[vi.name] = [d.dim_param or d.dim_value for d in dims]
        for axis in range(expect.get(vi.name, 0)):
            if not dims[axis].dim_param or dims[axis].HasField("dim_value"):
                raise ExportError(f"{path}: {vi.name} axis {axis} is fixed ({seen[vi.name]}), not dynamic")
    missing = set(expect) - set(seen)
    if missing:
        raise ExportError(f"{path}: graph lacks {sorted(missing)} (has {sorted(seen)})")
    if [v.name for v in model.graph.output] != OUTPUT_NAMES:
        raise ExportError(f"{path}: outputs are {[v.name for v in model.graph.output]}, expected {OUTPUT_NAMES}")
