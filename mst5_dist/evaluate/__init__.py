"""Evaluation tasks, one module per family: ``embedder`` (PyTorch / ONNX embedders, cache), ``tatoeba``,
``bucc``, ``sts``, ``alignment`` (language bias, RSIM), ``suite`` (``mst5 eval``), ``download``."""
