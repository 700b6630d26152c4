"""Export of a trained encoder: LoRA merge, ONNX graphs (fp32 / fp16 / int8) behind a parity gate,
runtime embedding through ONNX Runtime, Triton and TensorRT material.

    merge.py        fp32 LoRA merge, merged sentence-transformers checkpoint
    onnx_graph.py   wrapper (hidden state + pooled, normalised embedding), torch.onnx export
    precision.py    fp16 plan (norms / residuals in fp32), int8 dynamic quantisation
    probes.py       multilingual probe set and batches
    gate.py         parity metrics and thresholds
    pipeline.py     export_model(): all of it, written atomically
    runtime.py      OnnxEmbedder
    triton.py       Triton model repository
    tensorrt_ops.py TensorRT ONNX-parser op coverage
    cli.py          `mst5 export`, `mst5 embed`
"""
