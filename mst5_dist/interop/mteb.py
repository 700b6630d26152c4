"""``as_mteb_model``: any of our embedders (PyTorch or ONNX) as an mteb 2 ``EncoderProtocol``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mst5_dist.interop.adapter import InteropError


def _embedder_facts(embedder: Any) -> dict[str, Any]:
    """Runtime, embedding size, token limit, parameter count and fingerprint of any of our embedders
    (``TorchEmbedder``, ``OnnxEmbedder``, ``CachedEmbedder`` around either, or a ``SentenceEncoder``)."""
    inner = getattr(embedder, "inner", embedder)  # CachedEmbedder
    encoder = getattr(inner, "encoder", inner)  # TorchEmbedder -> SentenceEncoder
    facts: dict[str, Any] = {"fingerprint": getattr(embedder, "fingerprint", None)}
    if hasattr(inner, "session"):  # OnnxEmbedder
        facts.update(
            framework=["ONNX"],
            dim=int(inner.dim),
            max_tokens=int(inner.max_seq_length),
            n_parameters=None,
            label=f"onnx-{inner.variant}-{inner.export_dir.name}",
        )
    elif isinstance(encoder, torch.nn.Module):
        facts.update(
            framework=["PyTorch"],
            dim=int(encoder.embedding_dim),
            max_tokens=int(encoder.max_seq_length),
            n_parameters=sum(p.numel() for p in encoder.parameters()),
            label=f"torch-{encoder.model_type}",
        )
    else:
        raise InteropError(f"{type(embedder).__name__}: not one of our embedders (TorchEmbedder, OnnxEmbedder, ...)")
    return facts


class MtebEncoder:
    """One of our embedders behind mteb 2's ``EncoderProtocol``, our own ``encode(texts, batch_size)``
    left as it is.

    mteb 2 calls ``encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type, **encode_kwargs)``
    with batches ``{"text": [...], ...}`` and reads ``mteb_model_meta`` (name, revision, embedding size;
    ``similarity_fn_name`` cosine) and ``similarity`` / ``similarity_pairwise``. Texts are passed to the
    wrapped embedder unchanged: our encoders use no instructions, so ``prompt_type`` is ignored; the
    batches are flattened and re-batched by ``encode_kwargs["batch_size"]`` in our length-sorted order.
    mteb is imported only when this class is used (it takes ~5 s to import).
    """

    def __init__(self, embedder: Any, *, name: str | None = None, revision: str | None = None) -> None:
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.embedder = embedder
        facts = _embedder_facts(embedder)
        self.dim = facts["dim"]
        fingerprint = facts["fingerprint"]
        name = name or f"mst5-dist/{facts['label']}"
        if "/" not in name:
            name = f"mst5-dist/{name}"
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": name,
                # mteb keys its result cache by (name, revision): the content fingerprint keeps two
                # different models of the same name apart.
                "revision": revision or (fingerprint[:16] if fingerprint else None),
                "embed_dim": facts["dim"],
                "max_tokens": facts["max_tokens"],
                "n_parameters": facts["n_parameters"],
                "framework": facts["framework"],
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": False,
                "modalities": ["text"],
            }
        )

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise InteropError(f"mteb passed a batch without text (keys {sorted(batch)}): text-only encoder")
            texts.extend(str(t) for t in batch["text"])
        emb = self.embedder.encode(texts, batch_size=int(kwargs.get("batch_size") or 32))
        emb = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        if emb.shape != (len(texts), self.dim):
            raise InteropError(f"embedder returned shape {emb.shape} for {len(texts)} texts (dim {self.dim})")
        # mteb turns rows into torch tensors, which refuse negative strides (a reversed view).
        return np.ascontiguousarray(emb, dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def as_mteb_model(embedder: Any, *, name: str | None = None, revision: str | None = None) -> MtebEncoder:
    """``mteb.evaluate(as_mteb_model(load_embedder(PATH)), tasks)``: any of our embedders for mteb 2."""
    return MtebEncoder(embedder, name=name, revision=revision)
