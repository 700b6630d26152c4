"""Merge a LoRA adapter into its base in fp32 and save a merged Hugging Face checkpoint laid out
as a sentence-transformers model (``modules.json``, ``1_Pooling``, ``2_Normalize``).

Merging in bf16 moves embeddings by ~5e-3; in fp32 it is exact to ~2e-7 (STACK-FACTS), so the
base is always loaded in fp32 here and lower precision is a later, separately gated step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mst5_dist import layout
from mst5_dist.export import serving
from mst5_dist.files import read_json_or_none, write_json
from mst5_dist.model import META_FILE, T5_FAMILY, ModelError, SentenceEncoder, pool
from mst5_dist.versions import VERSIONS_FILE, package_versions

logger = logging.getLogger(__name__)

MERGE_TOLERANCE = 1e-5  # max abs difference of L2-normalised embeddings, merged vs unmerged
T5_MAX_POSITIONS = 512  # T5 has relative positions (no hard limit); 512 is its pre-training length


def resolve_model_dir(path: str | Path) -> Path:
    """A training output (a run dir holding ``final/``) or a ``final/``-style dir itself, checked."""
    path = layout.resolve_model_dir(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder")
    if not any((path / f).is_file() for f in (META_FILE, "config.json", "adapter_config.json")):
        raise ModelError(f"{path}: neither {META_FILE} nor config.json found (not a model or training output)")
    return path


def load_encoder(path: Path) -> SentenceEncoder:
    """fp32, eager attention (exports cleanly with the legacy exporter)."""
    encoder = SentenceEncoder.from_pretrained(path, dtype="fp32", attn_implementation="eager")
    return encoder.eval()


def lora_modules(module: torch.nn.Module) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [name for name, m in module.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def encoder_outputs(encoder: SentenceEncoder, batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reference (hidden, embedding) per probe batch from ``SentenceEncoder``'s own pooling code,
    independent of the export wrapper, so a wrapper bug cannot hide in its own reference."""
    out = []
    for b in batches:
        ids, mask = torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)
        hidden = encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = pool(hidden, mask, encoder.pooling)
        if encoder.normalize:
            emb = F.normalize(emb, dim=-1)
        out.append((hidden.float().numpy(), emb.float().numpy()))
    return out


def merge_adapter(encoder: SentenceEncoder) -> dict[str, Any]:
    """Merge in place (``encoder.backbone`` becomes the plain model); return what was done."""
    if not encoder.has_adapter:
        return {"merged": False, "lora_layers": 0}
    n = len(lora_modules(encoder.backbone))
    encoder.backbone = encoder.backbone.merge_and_unload()
    left = lora_modules(encoder.backbone)
    if left:
        raise ModelError(f"LoRA layers remain after merge_and_unload: {left[:5]}")
    return {"merged": True, "lora_layers": n}


def _patch_json(path: Path, **updates: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def serving_config_fields(config) -> dict[str, int]:
    """Fields serving tools read from config.json that mT5 configs do not carry under these names."""
    hidden = getattr(config, "d_model", None) or config.hidden_size
    layers = getattr(config, "num_layers", None) or config.num_hidden_layers
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is None and config.model_type in T5_FAMILY:
        max_pos = T5_MAX_POSITIONS
    return {"hidden_size": int(hidden), "num_hidden_layers": int(layers), "max_position_embeddings": int(max_pos)}


def save_merged(encoder: SentenceEncoder, out: Path, *, source: Path) -> None:
    """Merged weights (safetensors, encoder-only architecture) + tokenizer + sentence-transformers
    modules + ``sentence_encoder.json``, so ``SentenceTransformer(out)``, ``SentenceEncoder`` and
    ``AutoModel``-style loaders all read it."""
    if encoder.has_adapter:
        raise ModelError("merge the adapter before saving a merged checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    # The backbone is an MT5EncoderModel for mT5, so config.json names that architecture and
    # sentence-transformers (MT5Config -> MT5EncoderModel) loads it encoder-only.
    encoder.backbone.save_pretrained(str(out), safe_serialization=True)
    fields = serving_config_fields(encoder.backbone.config)
    _patch_json(out / "config.json", **fields)
    encoder.tokenizer.save_pretrained(str(out))
    _patch_json(out / "tokenizer_config.json", model_max_length=encoder.max_seq_length)
    if (out / serving.TOKENIZER_JSON).is_file():
        tok = encoder.tokenizer
        serving.set_tokenizer_limits(
            out, max_seq_length=encoder.max_seq_length, pad_token=tok.pad_token, pad_id=tok.pad_token_id
        )
    else:
        logger.warning(f"{out}: no {serving.TOKENIZER_JSON} (a slow tokenizer): TEI and FastEmbed cannot load it")

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": encoder.embedding_dim,
        "pooling_mode_cls_token": encoder.pooling == "cls",
        "pooling_mode_mean_tokens": encoder.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n", encoding="utf-8")
    _patch_json(out / "sentence_bert_config.json", max_seq_length=encoder.max_seq_length, do_lower_case=False)
    meta = encoder.meta()
    meta.adapter, meta.merged_from = False, str(source)
    meta.write(out)
    # What exported it, and (when the source recorded it) what trained it.
    versions = {"exported_with": package_versions(), "trained_with": read_json_or_none(source / VERSIONS_FILE)}
    write_json(out / VERSIONS_FILE, versions)
