"""One ``Embedder`` protocol for every evaluation task, whatever form the model takes.

- ``TorchEmbedder``: a ``SentenceEncoder`` (checkpoint, LoRA training output, sentence-transformers
  folder), batched by ``mst5_dist.model.batching`` (token-length order), tqdm progress bar.
- ``mst5_dist.evaluate.loader.load_embedder(path)`` picks the right one for a folder (ONNX export,
  modular model, PyTorch checkpoint or training output).
- ``EmbeddingCache`` / ``CachedEmbedder``: ``.npy`` files keyed by the model fingerprint and a hash of
  the exact texts embedded (so a file, or a subset of it, is embedded once per model), written
  atomically (temp file + ``os.replace``) so a killed run never leaves a truncated entry.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mst5_dist.files import atomic_write_bytes, fingerprint
from mst5_dist.layout import resolve_model_dir
from mst5_dist.model.batching import encode_batched
from mst5_dist.model.meta import EncoderMeta

__all__ = ["CachedEmbedder", "Embedder", "EmbeddingCache", "TorchEmbedder", "encode_routed", "unit_rows"]


@runtime_checkable
class Embedder(Protocol):
    """What the tasks need: float32 rows in input order, and a string naming the model exactly."""

    fingerprint: str

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


class TorchEmbedder:
    """A ``SentenceEncoder`` behind the ``Embedder`` protocol.

    ``sort_by_length=False`` keeps the input order in batches (the naive baseline of
    ``benchmarks/eval_speed.py``). ``last_stats`` holds real and padded token counts of the last call.
    """

    def __init__(
        self,
        encoder: Any,
        fingerprint: str,
        *,
        device: str | None = None,
        progress: bool = True,
        sort_by_length: bool = True,
    ) -> None:
        import torch

        self.encoder = encoder
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.encoder.to(self.device)
        self.encoder.eval()
        settings = {k: getattr(encoder, k) for k in ("pooling", "normalize", "max_seq_length")}
        # The settings join the folder hash: the same weights pooled differently are another model.
        self.fingerprint = hashlib.sha256((fingerprint + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
        self.progress = progress
        self.sort_by_length = sort_by_length
        self.last_stats: dict[str, int] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> TorchEmbedder:
        from mst5_dist.model.encoder import SentenceEncoder

        path = resolve_model_dir(path)
        encoder = SentenceEncoder.from_pretrained(path)
        meta = EncoderMeta.read_or_none(path)
        parts: list[str | Path] = [path]
        # A LoRA adapter folder names its base, and may sit on merged adapters: their bytes are part
        # of the model too (retraining a language module must not reuse its CLA adapter's vectors).
        if meta is not None and meta.adapter and meta.base_model:
            parts += [meta.base_model, *encoder.merged_adapters]
        return cls(encoder, fingerprint(*parts), **kwargs)

    def encode(self, texts: list[str], batch_size: int = 64, max_tokens: int | None = None) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        bar = tqdm(total=len(texts), desc="embedding", unit="sent", disable=not self.progress, leave=False)
        with torch.inference_mode():
            out, self.last_stats = encode_batched(
                self.encoder.tokenizer,
                texts,
                self.encoder.embed_padded,
                dim=self.encoder.embedding_dim,
                max_length=self.encoder.max_seq_length,
                batch_size=batch_size,
                max_tokens=max_tokens,
                sort=self.sort_by_length,
                on_batch=bar.update,
            )
        bar.close()
        return out


class EmbeddingCache:
    """``root/<model fingerprint[:16]>/<sha256 of model fingerprint + texts>.npy``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def texts_hash(texts: list[str]) -> str:
        h = hashlib.sha256(str(len(texts)).encode())
        for t in texts:
            # Length-prefixed, so ["a\nb"] and ["a", "b"] hash differently.
            b = t.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
        return h.hexdigest()

    def path(self, fingerprint: str, texts: list[str]) -> Path:
        key = hashlib.sha256((fingerprint + "\0" + self.texts_hash(texts)).encode()).hexdigest()
        return self.root / fingerprint[:16] / f"{key}.npy"

    def get(self, fingerprint: str, texts: list[str]) -> np.ndarray | None:
        path = self.path(fingerprint, texts)
        if not path.is_file():
            self.misses += 1
            return None
        arr = np.load(path)
        if arr.shape[0] != len(texts):  # cannot happen with the key above; refuse rather than trust
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, fingerprint: str, texts: list[str], emb: np.ndarray) -> Path:
        path = self.path(fingerprint, texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(emb, dtype=np.float32))
        atomic_write_bytes(path, buf.getvalue())
        return path


class CachedEmbedder:
    """Any ``Embedder`` with an ``EmbeddingCache`` in front."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.fingerprint = inner.fingerprint
        self.routes_by_language = getattr(inner, "routes_by_language", False)

    def encode(self, texts: list[str], batch_size: int = 64, **route: Any) -> np.ndarray:
        texts = list(texts)
        # A modular model embeds the same text differently per language and routing.
        key = self.fingerprint + (json.dumps(route, sort_keys=True) if route else "")
        hit = self.cache.get(key, texts)
        if hit is not None:
            return hit
        emb = np.asarray(self.inner.encode(texts, batch_size=batch_size, **route), dtype=np.float32)
        self.cache.put(key, texts, emb)
        return emb


def encode_routed(embedder: Any, texts: list[str], batch_size: int, lang: str, cross_lingual: bool) -> np.ndarray:
    """``encode`` that tells a modular (language-routed) embedder the texts' language and whether
    they are compared across languages; every other embedder gets the plain call."""
    if getattr(embedder, "routes_by_language", False):
        return np.asarray(embedder.encode(texts, batch_size=batch_size, lang=lang, cross_lingual=cross_lingual))
    return np.asarray(embedder.encode(texts, batch_size=batch_size))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (zero rows stay zero), so dot products are cosines."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
