"""Embedding with an exported encoder through ONNX Runtime (CPU, CUDA or TensorRT provider)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mst5_dist.errors import BadInput, ModelError
from mst5_dist.export.onnx_graph import model_files
from mst5_dist.files import fingerprint
from mst5_dist.layout import EXPORT_REPORT
from mst5_dist.model.batching import encode_batched
from mst5_dist.model.loading import load_pretrained_tokenizer
from mst5_dist.outputs import inside

REPORT_FILE = EXPORT_REPORT
__all__ = ["REPORT_FILE", "OnnxEmbedder", "ProviderUnavailable"]
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderUnavailable(BadInput):
    """The requested execution provider is not in this onnxruntime build."""


def _max_seq_length(export_dir: Path, report: dict) -> int:
    if "max_seq_length" in report:
        return int(report["max_seq_length"])
    st = export_dir / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text())["max_seq_length"])
    return 128


def _variant_entry(export_dir: Path, report: dict, variant: str) -> dict:
    """The report entry of a gated graph: a variant, or ``fp32_optimized`` (the ORT transformer
    optimizer's fp32 graph, present only when the export kept it)."""
    optimizer = report.get("optimizer") or {}
    if variant == "fp32_optimized" and optimizer.get("kept"):
        return optimizer
    if variant not in report["variants"]:
        have = sorted(report["variants"]) + (["fp32_optimized"] if optimizer.get("kept") else [])
        why = f" (optimizer not kept: {optimizer.get('reason')})" if variant == "fp32_optimized" and optimizer else ""
        raise BadInput(f"{export_dir}: no '{variant}' variant{why} (has {have})")
    return report["variants"][variant]


def _graphs(graph):
    """``graph`` and every subgraph of its nodes (If / Loop / Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def check_external_data(path: Path, folder: Path) -> None:
    """Every external-data ``location`` of the graph at ``path`` lies beside it, inside ``folder``
    (ONNX Runtime's rule too, which it reports with a traceback): else BadInput naming the graph,
    the tensor and the location; read before ONNX Runtime opens the graph."""
    import onnx

    if not path.is_file():
        raise BadInput(f"{path}: no such graph file")
    model = onnx.load(str(path), load_external_data=False)
    for graph in _graphs(model.graph):
        tensors = list(graph.initializer) + list(graph.sparse_initializer)
        tensors += [a.t for node in graph.node for a in node.attribute if a.HasField("t")]
        for tensor in tensors:
            for item in getattr(tensor, "external_data", []):
                if item.key == "location":
                    where = f"{path}: tensor '{tensor.name}' external data"
                    inside(path.parent, item.value, where)
                    inside(folder, item.value, where, base=path.parent)


class OnnxEmbedder:
    """``OnnxEmbedder(export_dir).encode(texts)`` -> float32 (n, dim), L2-normalised, input order.

    ``variant`` picks ``fp32`` / ``fp16`` / ``int8`` / ``fp32_optimized`` among the gated graphs of
    the export (default: the export's primary variant). ``fingerprint`` is the sha256 of the chosen graph file(s).
    """

    def __init__(self, export_dir: str | Path, provider: str = "cpu", variant: str | None = None) -> None:
        import onnxruntime as ort

        self.export_dir = Path(export_dir)
        report_file = self.export_dir / REPORT_FILE
        if not report_file.is_file():
            raise FileNotFoundError(f"{self.export_dir}: no {REPORT_FILE} (not a finished `mst5 export` folder)")
        report = json.loads(report_file.read_text(encoding="utf-8"))
        self.variant = variant or report["primary_variant"]
        entry = _variant_entry(self.export_dir, report, self.variant)
        self.model_path = inside(self.export_dir, entry.get("file"), f"{report_file}: {self.variant} file")
        check_external_data(self.model_path, self.export_dir)
        if provider not in PROVIDERS:
            raise BadInput(f"unknown provider '{provider}' (use {', '.join(PROVIDERS)})")
        available = ort.get_available_providers()
        wanted = PROVIDERS[provider][0]
        if wanted not in available:
            raise ProviderUnavailable(
                f"provider '{provider}' ({wanted}) is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu with CUDA/TensorRT libraries, "
                "or use --provider cpu"
            )
        self.provider = provider
        self.fingerprint = fingerprint(model_files(self.model_path))
        recorded = entry.get("fingerprint")
        if recorded != self.fingerprint:
            # The graph was replaced or edited after the parity gate passed it: what would run is
            # not what was checked (a graph copied in from another run embedded with exit 0).
            raise ModelError(
                f"{self.model_path}: sha256 {self.fingerprint[:16]}... differs from the one {REPORT_FILE} recorded "
                f"when it passed the parity gate ({str(recorded)[:16]}...): the file was changed after export; "
                "export again"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.model_path), opts, providers=[p for p in PROVIDERS[provider] if p in available]
        )
        self.tokenizer = load_pretrained_tokenizer(self.export_dir, None)
        self.max_seq_length = _max_seq_length(self.export_dir, report)
        self.dim = int(report["embedding_dim"])

    def encode(self, texts: list[str], batch_size: int = 64, max_tokens: int | None = None) -> np.ndarray:
        out, _ = encode_batched(
            self.tokenizer,
            texts,
            self._run,
            dim=self.dim,
            max_length=self.max_seq_length,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )
        # Already unit length in the graph; re-normalising makes fp16/int8 rows exactly unit too.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (emb,) = self.session.run(["sentence_embedding"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return emb
