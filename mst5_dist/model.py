"""``SentenceEncoder``: a transformer encoder + masked pooling (+ L2 norm) = one vector per sentence.

For T5-family checkpoints only the encoder stack is instantiated (``MT5EncoderModel``), so a
google/mt5-xxl download never materialises its decoder. Other encoders (XLM-R, BERT) load through
``AutoModel``. The directory written by ``save_pretrained`` holds ``sentence_encoder.json``
(pooling, normalisation, base model), the tokenizer, and either a PEFT adapter (LoRA runs, with the
base referenced by name/path) or the full weights (full fine-tuning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mst5_dist.errors import ModelError
from mst5_dist.families import T5_FAMILY, family
from mst5_dist.files import read_json
from mst5_dist.layout import META_FILE

__all__ = ["META_FILE", "T5_FAMILY", "ModelError", "SentenceEncoder", "encoder_class", "load_backbone"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding token states. An all-padding row gives a zero vector, not NaN."""
    m = mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.float() * m).sum(dim=1)
    return summed / m.sum(dim=1).clamp(min=1.0)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "cls":
        return hidden[:, 0].float()
    raise ModelError(f"unknown pooling '{mode}' (use mean or cls)")


def packed_mean_pool(hidden: torch.Tensor, segments: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of each sequence's token states in packed rows: ``segments`` holds 1 + the sequence's
    index on its tokens and 0 on padding; returns (n, dim) in sequence-index order. index_add, not
    boolean indexing: no host sync on a GPU."""
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    idx = segments.reshape(-1) - 1
    idx = torch.where(idx < 0, torch.full_like(idx, n), idx)  # padding goes to a discarded bucket n
    sums = flat.new_zeros(n + 1, flat.shape[1]).index_add_(0, idx, flat)[:n]
    counts = flat.new_zeros(n + 1).index_add_(0, idx, torch.ones_like(idx, dtype=flat.dtype))[:n]
    return sums / counts.clamp(min=1.0).unsqueeze(-1)


def segment_mask(segments: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """(rows, 1, width, width) mask: a token attends only to tokens of its own segment (the padding
    of a row only to padding: finite scores, and nothing real sees it). ``dtype`` None: boolean
    (True = attend; what transformers builds for SDPA), else additive (0 / dtype's min; eager)."""
    same = (segments.unsqueeze(2) == segments.unsqueeze(1)).unsqueeze(1)
    if dtype is None:
        return same
    return torch.zeros(same.shape, dtype=dtype, device=segments.device).masked_fill(~same, torch.finfo(dtype).min)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path)


def encoder_class(model_type: str):
    """The transformers class that builds the encoder stack of ``model_type`` (families table)."""
    import transformers

    return getattr(transformers, family(model_type).encoder_class)


def _sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers folder, if it is one."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    out: dict[str, Any] = {"normalize": False}
    for module in _read_json(modules_file):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg = _read_json(folder / module["path"] / "config.json")
            if cfg.get("pooling_mode_mean_tokens"):
                out["pooling"] = "mean"
            elif cfg.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            else:
                raise ModelError(f"{folder}: unsupported sentence-transformers pooling {cfg}")
        elif kind.endswith("Normalize"):
            out["normalize"] = True
        elif not kind.endswith("Transformer"):
            raise ModelError(f"{modules_file}: unsupported module {kind}")
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        out["max_seq_length"] = _read_json(st_cfg).get("max_seq_length")
    return out


def load_backbone(
    name_or_path: str,
    *,
    dtype: str = "fp32",
    attn_implementation: str | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """The encoder stack only: ``*EncoderModel`` for T5-family configs, ``AutoModel`` otherwise."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelError(f"{name_or_path}: not a model folder nor a reachable model name ({_first_line(e)})") from None
    if config.model_type in T5_FAMILY and dtype == "fp16":
        raise ModelError(
            f"{name_or_path}: fp16 is refused for {config.model_type} models (their activations "
            "overflow fp16 and give inf/NaN); use bf16 on GPU or fp32"
        )
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dropout is not None:
        names = (
            ["dropout_rate"]
            if config.model_type in T5_FAMILY
            else ["hidden_dropout_prob", "attention_probs_dropout_prob"]
        )
        kwargs.update({n: dropout for n in names if hasattr(config, n)})
    cls = encoder_class(config.model_type)
    if cls is AutoModel and getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{name_or_path}: encoder-decoder type {config.model_type} is not supported")
    # An mT5 checkpoint holds the decoder too; skipping it is the point, so hide the load report.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except Exception as e:  # a truncated or foreign weights file: name it, not a traceback from safetensors
        raise ModelError(f"{_weights_file(name_or_path)}: cannot load the model weights ({_first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _weights_file(name_or_path: str) -> str:
    folder = Path(name_or_path)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (folder / name).is_file():
            return str(folder / name)
    return str(name_or_path)


# Plain English: every real tokenizer of the models we train (mT5, XLM-R, BERT, MiniLM) covers it.
_TOKENIZER_PROBE = ["The weather is nice today.", "A man is playing a guitar on the street.", "Where is the station?"]
MAX_UNK_FRACTION = 0.2


def check_tokenizer(tokenizer: Any, folder: str, vocab_rows: int | None = None) -> None:
    """Refuse a tokenizer that does not round-trip real text (e.g. the 104-token T5 tokenizer
    transformers builds for a folder without ``spiece.model``: every word becomes ``<unk>``), or
    whose ids would index past the model's embedding table."""
    ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    flat = [i for row in ids for i in row]
    unk = tokenizer.unk_token_id
    n_unk = sum(i == unk for i in flat) if unk is not None else 0
    if not flat or n_unk > MAX_UNK_FRACTION * len(flat):
        raise ModelError(
            f"{folder}: its tokenizer maps {n_unk} of {len(flat)} tokens of plain English text to "
            f"{tokenizer.unk_token!r}: the tokenizer files (spiece.model / tokenizer.json / vocab.txt) are "
            "missing or wrong"
        )
    if vocab_rows is not None and len(tokenizer) > vocab_rows:
        raise ModelError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table only "
            f"{vocab_rows} rows: tokenizer and weights do not belong together"
        )


def same_model(a: str, b: str) -> bool:
    """Two references to one model: equal hub names, or local paths to the same folder."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def stack_entry(adapter_dir: str, folder: Path | None) -> dict[str, Any]:
    """How a saved model names an adapter merged under it: relative to the saved folder (a run
    folder moved as a whole still works), absolute (the folder alone copied elsewhere still works),
    and the sha256 of the adapter weights (whichever path is found must hold the same adapter)."""
    from mst5_dist.files import file_sha256

    adapter = Path(adapter_dir).resolve()
    entry: dict[str, Any] = {"absolute": str(adapter)}
    if folder is not None:
        entry["path"] = os.path.relpath(adapter, Path(folder).resolve())
    weights = adapter / ADAPTER_WEIGHTS
    if weights.is_file():
        entry["sha256"] = file_sha256(weights)
    return entry


def resolve_stack(meta: dict[str, Any], folder: Path) -> list[str]:
    """The adapter folders recorded under ``meta["merged_adapters"]``, found from wherever the
    model is loaded (relative to ``folder`` first, then the absolute path) and checked by sha256."""
    from mst5_dist.files import file_sha256

    out = []
    for entry in meta.get("merged_adapters", []):
        if isinstance(entry, str):  # format 1: relative to the folder only
            entry = {"path": entry}
        tried = []
        for candidate in (Path(folder) / entry["path"] if "path" in entry else None, entry.get("absolute")):
            if candidate is None:
                continue
            candidate = Path(candidate).resolve()
            tried.append(str(candidate))
            weights = candidate / ADAPTER_WEIGHTS
            if weights.is_file() and entry.get("sha256") in (None, file_sha256(weights)):
                out.append(str(candidate))
                break
        else:
            raise ModelError(
                f"{folder}: the adapter it was trained on top of is not found with the same weights "
                f"(looked in {', '.join(tried)}); it is needed to rebuild the model"
            )
    return out


def merge_adapter_stack(backbone: nn.Module, adapters: list[str], base: str) -> nn.Module:
    """Merge each LoRA adapter folder into the weights, in order (W + B1 A1 + B2 A2 + ...)."""
    if not adapters:
        return backbone
    from peft import PeftModel

    for folder in adapters:
        meta_file = Path(folder) / META_FILE
        other = _read_json(meta_file) if meta_file.is_file() else {}
        if not other.get("adapter"):
            raise ModelError(f"{folder}: not a LoRA adapter folder written by mst5 (merge_adapters takes those)")
        if other.get("merged_adapters"):
            raise ModelError(
                f"{folder}: is itself trained on merged adapters; stacks deeper than one are not supported"
            )
        if not same_model(str(other.get("base_model")), str(base)):
            raise ModelError(
                f"{folder}: adapter of base {other.get('base_model')!r}, but this model's base is {base!r}"
            )
        backbone = PeftModel.from_pretrained(backbone, folder).merge_and_unload()
    return backbone


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
        if pooling not in ("mean", "cls"):
            raise ModelError(f"unknown pooling '{pooling}' (use mean or cls)")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
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
        from transformers import AutoTokenizer

        path = Path(name_or_path)
        meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
        settings = {"pooling": "mean", "normalize": True, "max_seq_length": 128}
        settings.update({k: v for k, v in _sentence_transformers_settings(path).items() if v})
        settings.update({k: meta[k] for k in ("pooling", "normalize", "max_seq_length") if k in meta})
        if pooling != "auto":
            settings["pooling"] = pooling
        if normalize is not None:
            settings["normalize"] = normalize
        if max_seq_length is not None:
            settings["max_seq_length"] = max_seq_length
        use_fast = meta.get("tokenizer_use_fast", True) if tokenizer_use_fast is None else tokenizer_use_fast

        new = [str(Path(p).resolve()) for p in merge_adapters or []]
        if meta.get("adapter"):
            from peft import PeftModel

            # The adapter sits on its base with the recorded stack merged in: rebuild exactly that.
            under = resolve_stack(meta, path)
            stack = under + new
            base = meta["base_model"]
            backbone = load_backbone(base, dtype=dtype, attn_implementation=attn_implementation, dropout=dropout)
            backbone = merge_adapter_stack(backbone, stack, base)
            backbone = PeftModel.from_pretrained(backbone, str(path), is_trainable=is_trainable)
        else:
            # Full weights already hold whatever was merged into them (recorded as provenance only):
            # merging it again would add each update twice.
            base = meta.get("base_model") or str(name_or_path)
            backbone = load_backbone(
                str(name_or_path), dtype=dtype, attn_implementation=attn_implementation, dropout=dropout
            )
            backbone = merge_adapter_stack(backbone, new, base)
            stack = [e["absolute"] if isinstance(e, dict) else e for e in meta.get("merged_into_weights", [])] + new
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), use_fast=use_fast)
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"{name_or_path}: cannot load its tokenizer ({_first_line(e)})") from None
        check_tokenizer(tokenizer, str(name_or_path), backbone.get_input_embeddings().num_embeddings)
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
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        n_sequences: int | None = None,
    ) -> torch.Tensor:
        """(rows, dim) embeddings; with ``position_ids``, packed rows (``mst5_dist.encoding``):
        ``attention_mask`` holds segment ids and the result has one row per sequence."""
        if position_ids is None:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            emb = pool(out.last_hidden_state, attention_mask, self.pooling)
        else:
            kind = self.packing
            if kind is None:
                raise ModelError(f"sequence packing is not supported for {self.model_type} with {self.pooling} pooling")
            # A ready 4-D mask passes through transformers' mask creation as it is.
            eager = self.backbone.config._attn_implementation == "eager"
            mask = segment_mask(attention_mask, self.backbone.dtype if eager else None)
            extra: dict[str, torch.Tensor] = {}
            if kind != "relative":
                offset = self.backbone.config.pad_token_id + 1 if kind == "after_padding" else 0
                extra["position_ids"] = position_ids + offset
            out = self.backbone(input_ids=input_ids, attention_mask=mask, **extra)
            emb = packed_mean_pool(out.last_hidden_state, attention_mask, int(n_sequences))
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @property
    def packing(self) -> str | None:
        """How packed rows get their positions (``families.PACKED_POSITIONS``); None: not packable
        (an unlisted model type, CLS pooling, or an attention kernel without arbitrary masks)."""
        from mst5_dist.families import PACKED_POSITIONS

        if self.pooling != "mean" or self.backbone.config._attn_implementation not in ("sdpa", "eager"):
            return None
        return PACKED_POSITIONS.get(self.model_type)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embed ``texts`` in length-sorted batches (less padding); rows come back in input order."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out: list[torch.Tensor | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in idx])
            emb = self(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
            for j, i in enumerate(idx):
                out[i] = emb[j]
        self.train(was_training)
        if not texts:
            return torch.empty(0, self.embedding_dim)
        return torch.stack(out)  # type: ignore[arg-type]

    @property
    def embedding_dim(self) -> int:
        cfg = self.backbone.config
        return getattr(cfg, "d_model", None) or cfg.hidden_size

    @property
    def model_type(self) -> str:
        return self.backbone.config.model_type

    # ---------------------------------------------------------------- saving
    def meta(self, folder: Path | None = None) -> dict[str, Any]:
        out = {
            "format_version": 1,
            "base_model": self.base_model,
            "model_type": self.model_type,
            "adapter": self.has_adapter,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
            "tokenizer_use_fast": self.tokenizer_use_fast,
            "embedding_dim": self.embedding_dim,
        }
        if self.merged_adapters:
            entries = [stack_entry(p, folder) for p in self.merged_adapters]
            # An adapter is reloaded on top of this stack; full weights already contain it.
            out["merged_adapters" if self.has_adapter else "merged_into_weights"] = entries
        return out

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
        (path / META_FILE).write_text(json.dumps(self.meta(path), indent=2) + "\n", encoding="utf-8")
