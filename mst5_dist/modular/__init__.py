"""Modular sentence encoders (Huang, Wang, Glavaš, Gurevych 2024), as LoRA modules on one base.

stage 1  language modules:  for each language L, a LoRA trained with the contrastive loss on L's
         own paraphrase pairs only (STS-B train pairs scoring >= ``min_score``), from the base.
stage 2  CLA adapters:      for each L != pivot, a second LoRA on top of L's module (merged into
         the frozen weights), trained on (L sentence, pivot translation) pairs so that L lands in
         the pivot's space: the ``cla`` objective (``mst5_dist.objectives.cla``).

config.py    ModularConfig, train-modular's config
data.py      the rows of each stage          manifest.py  OUT/modular.json
encoder.py   ModularEncoder + routing         onnx.py      per-language ONNX export + runtime
pipeline.py  train_modular (the stages)       cli.py       mst5 train-modular
"""

from mst5_dist.modular.config import ModularConfig, ModularRunConfig, load_modular_config
from mst5_dist.modular.data import language_rows, parallel_rows, read_stsb_train, write_jsonl
from mst5_dist.modular.encoder import ModularEmbedder, ModularEncoder, group_by_language
from mst5_dist.modular.manifest import MANIFEST, STAGES, module_dir, read_manifest, write_manifest
from mst5_dist.modular.onnx import ONNX_MANIFEST, OnnxModularEmbedder, export_modular, is_modular_export
from mst5_dist.modular.pipeline import plan, prepare_data, stage_config, stage_data_path, train_modular

__all__ = [
    "MANIFEST", "ONNX_MANIFEST", "STAGES", "ModularConfig", "ModularEmbedder", "ModularEncoder", "ModularRunConfig",
    "OnnxModularEmbedder", "export_modular", "group_by_language", "is_modular_export", "language_rows",
    "load_modular_config", "module_dir", "parallel_rows",
    "plan", "prepare_data", "read_manifest", "read_stsb_train", "stage_config", "stage_data_path",
    "train_modular", "write_jsonl", "write_manifest",
]  # fmt: skip
