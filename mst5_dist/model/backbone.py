"""Loading the pieces of an encoder by family: the encoder stack alone (``*EncoderModel`` for
T5-family configs, so an mt5-xxl download never materialises its decoder; ``AutoModel`` for XLM-R,
BERT), its tokenizer (checked against real text), and a sentence-transformers folder's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mst5_dist.errors import ModelError
from mst5_dist.families import T5_FAMILY, family
from mst5_dist.files import read_json
from mst5_dist.model.loading import (
    check_encoder,
    first_line,
    load_config,
    load_pretrained_tokenizer,
    load_pretrained_weights,
)
from mst5_dist.outputs import inside

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Config fields that set dropout, per family (names a config lacks are skipped).
T5_DROPOUT = ("dropout_rate",)
BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def dropout_names(model_type: str) -> tuple[str, ...]:
    return T5_DROPOUT if model_type in T5_FAMILY else BERT_DROPOUT


def encoder_class(model_type: str):
    """The transformers class that builds the encoder stack of ``model_type`` (families table)."""
    import transformers

    return getattr(transformers, family(model_type).encoder_class)


def weights_file(name_or_path: str) -> str:
    """The weights file of a local model folder (for error messages), else the name as given."""
    folder = Path(name_or_path)
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return str(folder / name)
    return str(name_or_path)


def _backbone_kwargs(
    config: Any, name_or_path: str, dtype: str, attn_implementation: str | None, dropout: float | None
):
    if config.model_type in T5_FAMILY and dtype == "fp16":
        raise ModelError(
            f"{name_or_path}: fp16 is refused for {config.model_type} models (their activations "
            "overflow fp16 and give inf/NaN); use bf16 on GPU or fp32"
        )
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dropout is not None:
        kwargs.update({n: dropout for n in dropout_names(config.model_type) if hasattr(config, n)})
    return kwargs


def load_backbone(
    name_or_path: str,
    *,
    dtype: str = "fp32",
    attn_implementation: str | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """The encoder stack only: ``*EncoderModel`` for T5-family configs, ``AutoModel`` otherwise
    (through ``model.loading``: no custom code, safetensors only, encoders only)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    config = load_config(name_or_path)
    check_encoder(config, name_or_path)
    kwargs = _backbone_kwargs(config, name_or_path, dtype, attn_implementation, dropout)
    cls = encoder_class(config.model_type)
    if cls is AutoModel and getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{name_or_path}: encoder-decoder type {config.model_type} is not supported")
    # An mT5 checkpoint holds the decoder too; skipping it is the point, so hide the load report.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load_pretrained_weights(cls, name_or_path, **kwargs)
    except ModelError:
        raise
    except Exception as e:  # a truncated or foreign weights file: name it, not a traceback from safetensors
        raise ModelError(f"{weights_file(name_or_path)}: cannot load the model weights ({first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(level)


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


def load_tokenizer(folder: str, use_fast: bool, vocab_rows: int | None) -> Any:
    """The folder's tokenizer, checked against real text and the embedding table."""
    tokenizer = load_pretrained_tokenizer(folder, use_fast)
    check_tokenizer(tokenizer, folder, vocab_rows)
    return tokenizer


def sentence_transformers_settings(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers folder, if it is one."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    out: dict[str, Any] = {"normalize": False}
    for module in read_json(modules_file):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            where = inside(folder, module.get("path"), f"{modules_file}: {kind} path")
            cfg = read_json(where / "config.json")
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
        out["max_seq_length"] = read_json(st_cfg).get("max_seq_length")
    return out
