"""``load_embedder(path)``: the right ``Embedder`` for whatever folder a user points at.

    a modular model (``modular.json``)       -> ModularEmbedder (routes by language)
    a modular ONNX export (``manifest.json``) -> OnnxModularEmbedder
    an ONNX export (``onnx/model.onnx``)      -> OnnxEmbedder
    anything else (checkpoint, training output, sentence-transformers folder) -> TorchEmbedder

It knows every form of model, so it sits above all of them (the evaluation tasks below take any
``Embedder`` and know none).
"""

from __future__ import annotations

from pathlib import Path

from mst5_dist.evaluate.embedder import CachedEmbedder, Embedder, EmbeddingCache, TorchEmbedder
from mst5_dist.layout import MODULAR_MANIFEST, ONNX_MODEL, resolve_model_dir


def load_embedder(
    path: str | Path,
    *,
    device: str | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    onnx_provider: str = "cpu",
    onnx_variant: str | None = None,
    modular_routing: str = "auto",
) -> Embedder:
    """ONNX export if ``path/onnx/model.onnx`` exists (``onnx_variant`` fp32/fp16/int8, default the
    export's primary one), a modular model (``modular.json``) or modular export (``manifest.json``)
    routed by language, else a PyTorch ``SentenceEncoder``."""
    from mst5_dist import modular

    embedder: Embedder
    if (Path(path) / MODULAR_MANIFEST).is_file():
        embedder = modular.ModularEmbedder(path, routing=modular_routing, device=device)
    elif modular.is_modular_export(path):
        embedder = modular.OnnxModularEmbedder(path, provider=onnx_provider, variant=onnx_variant)
    elif (resolve_model_dir(path) / ONNX_MODEL).is_file():
        from mst5_dist.export.runtime import OnnxEmbedder  # lazy: onnxruntime only when needed

        embedder = OnnxEmbedder(resolve_model_dir(path), provider=onnx_provider, variant=onnx_variant)
    else:
        embedder = TorchEmbedder.from_pretrained(resolve_model_dir(path), device=device, progress=progress)
    if cache_dir is not None:
        embedder = CachedEmbedder(embedder, EmbeddingCache(cache_dir))
    return embedder
