"""``SentenceEncoder``: a transformer encoder + masked pooling (+ L2 norm) = one vector per sentence.

The directory written by ``save_pretrained`` holds ``sentence_encoder.json`` (``EncoderMeta``), the
tokenizer, and either a PEFT adapter (LoRA runs, with the base referenced by name/path) or the full
weights (full fine-tuning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mst5_dist.errors import ModelError
from mst5_dist.model.adapters import (
    check_stack_folder,
    merge_adapter_stack,
    resolve_stack,
    stack_entry,
    weights_provenance,
)
from mst5_dist.model.backbone import load_backbone, load_tokenizer, sentence_transformers_settings
from mst5_dist.model.batching import encode_batched, tokenize_truncated
from mst5_dist.model.loading import check_adapter_folder, check_positions, load_adapter, load_config, refuse_custom_code
from mst5_dist.model.meta import EncoderMeta
from mst5_dist.model.pooling import check_pooling, packed_mean_pool, pool, segment_mask

DEFAULTS = {"pooling": "mean", "normalize": True, "max_seq_length": 128}


def _settings(path: Path, meta: EncoderMeta, overrides: dict[str, Any]) -> dict[str, Any]:
    """Pooling, normalisation, max length: defaults < sentence-transformers config < what the folder
    records < explicit arguments (None / "auto": not given)."""
    settings = dict(DEFAULTS)
    settings.update({k: v for k, v in sentence_transformers_settings(path).items() if v})
    settings.update({k: getattr(meta, k) for k in DEFAULTS if getattr(meta, k) is not None})
    settings.update({k: v for k, v in overrides.items() if v is not None and v != "auto"})
    return settings


def _load_weights(path: Path, meta: EncoderMeta, new: list[str], is_trainable: bool, **load: Any):
    """(backbone, base, adapter stack) for a folder: an adapter sits on its base with the recorded
    stack merged in (rebuilt exactly); full weights already hold what was merged into them
    (provenance only: merging again would add each update twice)."""
    if meta.adapter:
        stack = resolve_stack(meta, path) + new
        base = meta.base_model
        backbone = merge_adapter_stack(load_backbone(base, **load), stack, base)
        return load_adapter(backbone, path, is_trainable=is_trainable), base, stack
    base = meta.base_model or str(path)
    backbone = merge_adapter_stack(load_backbone(str(path), **load), new, base)
    return backbone, base, weights_provenance(meta) + new


def _check_before_weights(path: Path, meta: EncoderMeta, new: list[str], max_seq_length: int) -> None:
    """What can be refused from the folders' small files alone, before any weights load: custom
    code in the folder, its base or an adapter to merge; pickle adapters; too long a max_seq_length."""
    refuse_custom_code(path)
    if meta.adapter and not meta.base_model:
        raise ModelError(f"{path}: sentence_encoder.json records an adapter but no 'base_model'")
    weights = meta.base_model if meta.adapter else str(path)
    check_positions(load_config(weights), max_seq_length, weights)
    for folder in new:
        check_stack_folder(folder, meta.base_model or str(path))
    if meta.adapter:
        check_adapter_folder(path)


class SentenceEncoder(nn.Module):
    """Encoder + pooling. ``forward(input_ids, attention_mask)`` returns (batch, dim) float32."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 128,
        base_model: str | None = None,
        tokenizer_use_fast: bool = True,
        merged_adapters: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = check_pooling(pooling)
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.base_model = base_model
        self.tokenizer_use_fast = tokenizer_use_fast
        self.merged_adapters = [str(Path(p).resolve()) for p in merged_adapters or []]

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        pooling: str = "auto",
        normalize: bool | None = None,
        max_seq_length: int | None = None,
        dtype: str = "fp32",
        tokenizer_use_fast: bool | None = None,
        attn_implementation: str | None = None,
        dropout: float | None = None,
        is_trainable: bool = False,
        merge_adapters: list[str] | None = None,
    ) -> SentenceEncoder:
        """Load one of our saved encoders, a sentence-transformers folder, or any HF encoder.

        Explicit arguments override what the folder records; ``pooling="auto"`` keeps it.
        ``merge_adapters`` (our LoRA ``final/`` folders of the same base) are merged into the base
        weights first, in order; a saved model that was trained on such a stack reloads it.
        """
        path = Path(name_or_path)
        meta = EncoderMeta.read_or_none(path) or EncoderMeta()
        overrides = {"pooling": pooling, "normalize": normalize, "max_seq_length": max_seq_length}
        settings = _settings(path, meta, overrides)
        use_fast = tokenizer_use_fast if tokenizer_use_fast is not None else meta.tokenizer_use_fast is not False
        new = [str(Path(p).resolve()) for p in merge_adapters or []]
        _check_before_weights(path, meta, new, int(settings["max_seq_length"]))
        load = {"dtype": dtype, "attn_implementation": attn_implementation, "dropout": dropout}
        backbone, base, stack = _load_weights(path, meta, new, is_trainable, **load)
        rows = backbone.get_input_embeddings().num_embeddings
        tokenizer = load_tokenizer(str(name_or_path), use_fast, rows)
        return cls(
            backbone,
            tokenizer,
            pooling=settings["pooling"],
            normalize=settings["normalize"],
            max_seq_length=int(settings["max_seq_length"]),
            base_model=base,
            tokenizer_use_fast=use_fast,
            merged_adapters=stack,
        )

    # ---------------------------------------------------------------- compute
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        n_sequences: int | None = None,
    ) -> torch.Tensor:
        """(rows, dim) embeddings of padded rows (``attention_mask``: 1 real, 0 padding); or, with
        ``segment_ids``, of packed rows (``mst5_dist.encoding``): ``segment_ids`` holds 0 on padding
        and 1 + the sequence's index on its tokens, ``position_ids`` each token's position in its own
        sequence, and the result has one row per sequence (``n_sequences``)."""
        if segment_ids is None:
            if attention_mask is None:
                raise ModelError("forward needs attention_mask (padded rows) or segment_ids (packed rows)")
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            emb = pool(out.last_hidden_state, attention_mask, self.pooling)
        else:
            emb = self._packed(input_ids, segment_ids, position_ids, n_sequences)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def _packed(self, input_ids, segment_ids, position_ids, n_sequences) -> torch.Tensor:
        kind = self.packing
        if kind is None:
            raise ModelError(f"sequence packing is not supported for {self.model_type} with {self.pooling} pooling")
        if position_ids is None or n_sequences is None:
            raise ModelError("packed rows need position_ids and n_sequences beside segment_ids")
        # A ready 4-D mask passes through transformers' mask creation as it is.
        eager = self.backbone.config._attn_implementation == "eager"
        mask = segment_mask(segment_ids, self.backbone.dtype if eager else None)
        extra: dict[str, torch.Tensor] = {}
        if kind != "relative":
            offset = self.backbone.config.pad_token_id + 1 if kind == "after_padding" else 0
            extra["position_ids"] = position_ids + offset
        out = self.backbone(input_ids=input_ids, attention_mask=mask, **extra)
        return packed_mean_pool(out.last_hidden_state, segment_ids, int(n_sequences))

    @property
    def packing(self) -> str | None:
        """How packed rows get their positions (``families.PACKED_POSITIONS``); None: not packable
        (an unlisted model type, CLS pooling, or an attention kernel without arbitrary masks)."""
        from mst5_dist.families import PACKED_POSITIONS

        if self.pooling != "mean" or self.backbone.config._attn_implementation not in ("sdpa", "eager"):
            return None
        return PACKED_POSITIONS.get(self.model_type)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize_truncated(self.tokenizer, texts, self.max_seq_length, padding=True, return_tensors="pt")

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, max_tokens: int | None = None) -> torch.Tensor:
        """Embed ``texts`` in token-length-sorted batches (``model.batching``); input order kept."""
        was_training = self.training
        self.eval()
        try:
            rows, _ = encode_batched(
                self.tokenizer,
                texts,
                self.embed_padded,
                dim=self.embedding_dim,
                max_length=self.max_seq_length,
                batch_size=batch_size,
                max_tokens=max_tokens,
            )
        finally:
            self.train(was_training)
        return torch.from_numpy(rows)

    def embed_padded(self, input_ids, attention_mask):
        """float32 numpy embeddings of one padded numpy batch, on the model's device."""
        device = next(self.parameters()).device
        ids, mask = torch.as_tensor(input_ids, device=device), torch.as_tensor(attention_mask, device=device)
        return self(ids, mask).float().cpu().numpy()

    @property
    def embedding_dim(self) -> int:
        cfg = self.backbone.config
        return getattr(cfg, "d_model", None) or cfg.hidden_size

    @property
    def model_type(self) -> str:
        return self.backbone.config.model_type

    # ---------------------------------------------------------------- saving
    def meta(self, folder: Path | None = None) -> EncoderMeta:
        """What ``sentence_encoder.json`` records for this encoder saved in ``folder``."""
        entries = [stack_entry(p, folder) for p in self.merged_adapters]
        return EncoderMeta(
            base_model=self.base_model,
            model_type=self.model_type,
            adapter=self.has_adapter,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_length=self.max_seq_length,
            tokenizer_use_fast=self.tokenizer_use_fast,
            embedding_dim=self.embedding_dim,
            # An adapter is reloaded on top of this stack; full weights already contain it.
            merged_adapters=entries if self.has_adapter else [],
            merged_into_weights=[] if self.has_adapter else entries,
        )

    @property
    def has_adapter(self) -> bool:
        from peft import PeftModel

        return isinstance(self.backbone, PeftModel)

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write adapter-or-weights, tokenizer and ``sentence_encoder.json`` into ``path``.

        ``state_dict`` lets a caller pass tensors it gathered itself (ZeRO-3 shards parameters).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(path), state_dict=state_dict)
        self.tokenizer.save_pretrained(str(path))
        self.meta(path).write(path)
