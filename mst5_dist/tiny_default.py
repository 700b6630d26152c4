"""The embedded default: a SentencePiece tokenizer trained on the project's own triplets and a
tiny randomly initialised mT5 encoder, saved to disk exactly like a real checkpoint.

``mst5 build-tiny --output runs/tiny-mt5`` writes it; the tiny config trains on it. Loading it goes
through the same ``from_pretrained`` code a GPU user takes with ``google/mt5-xxl``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from mst5_dist.files import atomic_dir
from mst5_dist.layout import builtin_path, resolve_path
from mst5_dist.outputs import check_output

__all__ = ["build_tiny_mt5", "builtin_path", "resolve_path", "train_tokenizer"]


def corpus_sentences(path: Path) -> list[str]:
    sentences = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            sentences += [row["anchor"], row["positive"], row["negative"]]
    return sentences


def train_tokenizer(sentences: list[str], output_dir: Path, vocab_size: int = 2000) -> Path:
    """Train a unigram SentencePiece model with T5's special ids (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(Path(tmp) / "spiece"),
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,  # keep every CJK / Arabic character seen
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,  # a small corpus may not support the full vocabulary
            num_threads=2,
            minloglevel=2,
        )
        shutil.copy(Path(tmp) / "spiece.model", output_dir / "spiece.model")
    return output_dir / "spiece.model"


def build_tiny_mt5(
    output_dir: str | Path,
    *,
    data: str = "builtin:tiny_nli",
    vocab_size: int = 2000,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 128,
    seed: int = 0,
) -> Path:
    """Write tokenizer + tiny random mT5 (full encoder-decoder checkpoint, like google/mt5-*) into
    ``output_dir`` (built as ``OUTPUT.tmp``, renamed when complete; ``files.atomic_dir``)."""
    output_dir = check_output(output_dir, "--output", [("data", resolve_path(data))])
    with atomic_dir(output_dir) as tmp:
        train_tokenizer(corpus_sentences(resolve_path(data)), tmp, vocab_size)
        _save_tiny(tmp, d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_ff=d_ff, seed=seed)
    return output_dir


def _save_tiny(tmp: Path, *, d_model: int, num_layers: int, num_heads: int, d_ff: int, seed: int) -> None:
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

    # The tokenizer must be loaded FROM A FOLDER holding spiece.model: building it from
    # vocab_file= directly silently maps every word to <unk> (see STACK-FACTS.md).
    tokenizer = T5Tokenizer.from_pretrained(str(tmp), extra_ids=0)
    tokenizer.save_pretrained(str(tmp))
    config = MT5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=1,
        num_heads=num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    MT5ForConditionalGeneration(config).save_pretrained(str(tmp))
