"""The sentence encoder: ``pooling``, ``backbone`` (loading by family), ``meta``
(``sentence_encoder.json``), ``adapters`` (the merged adapter stack), ``batching`` (the one
inference batcher), ``encoder`` (``SentenceEncoder``).

Names are re-exported lazily, so ``mst5_dist.model.meta`` and ``mst5_dist.model.batching`` are
importable without torch (the model card and the ONNX runtime use them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mst5_dist.errors import ModelError
    from mst5_dist.families import T5_FAMILY
    from mst5_dist.layout import META_FILE
    from mst5_dist.model.adapters import ADAPTER_WEIGHTS, merge_adapter_stack, resolve_stack, same_model, stack_entry
    from mst5_dist.model.backbone import DTYPES, check_tokenizer, encoder_class, load_backbone
    from mst5_dist.model.batching import encode_batched, plan_batches
    from mst5_dist.model.encoder import SentenceEncoder
    from mst5_dist.model.meta import EncoderMeta
    from mst5_dist.model.pooling import mean_pool, packed_mean_pool, pool, segment_mask

_HOMES = {
    "ModelError": "mst5_dist.errors",
    "T5_FAMILY": "mst5_dist.families",
    "META_FILE": "mst5_dist.layout",
    "ADAPTER_WEIGHTS": "mst5_dist.model.adapters",
    "merge_adapter_stack": "mst5_dist.model.adapters",
    "resolve_stack": "mst5_dist.model.adapters",
    "same_model": "mst5_dist.model.adapters",
    "stack_entry": "mst5_dist.model.adapters",
    "DTYPES": "mst5_dist.model.backbone",
    "check_tokenizer": "mst5_dist.model.backbone",
    "encoder_class": "mst5_dist.model.backbone",
    "load_backbone": "mst5_dist.model.backbone",
    "encode_batched": "mst5_dist.model.batching",
    "plan_batches": "mst5_dist.model.batching",
    "SentenceEncoder": "mst5_dist.model.encoder",
    "EncoderMeta": "mst5_dist.model.meta",
    "mean_pool": "mst5_dist.model.pooling",
    "packed_mean_pool": "mst5_dist.model.pooling",
    "pool": "mst5_dist.model.pooling",
    "segment_mask": "mst5_dist.model.pooling",
}
__all__ = [
    "ADAPTER_WEIGHTS",
    "DTYPES",
    "META_FILE",
    "T5_FAMILY",
    "EncoderMeta",
    "ModelError",
    "SentenceEncoder",
    "check_tokenizer",
    "encode_batched",
    "encoder_class",
    "load_backbone",
    "mean_pool",
    "merge_adapter_stack",
    "packed_mean_pool",
    "plan_batches",
    "pool",
    "resolve_stack",
    "same_model",
    "segment_mask",
    "stack_entry",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mst5_dist.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
