"""Per-row token lengths for length grouping: the fast tokenizer in large batches, each distinct
text once, cached beside the dataset under a key of the tokenizer's content."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mst5_dist.data.arrays import cached_array
from mst5_dist.errors import DataError
from mst5_dist.model.batching import bounded_texts, tokenize_truncated

logger = logging.getLogger(__name__)
_LENGTHS_VERSION = 1  # bump when the meaning of a cached length changes
_LENGTH_CHUNK = 65536  # rows tokenised per call: the fast tokenizer's batch


def _backend_copy(tokenizer):
    """A private copy of a fast tokenizer's Rust backend without truncation or padding (the
    ``transformers`` wrapper leaves the settings of its last call on its own backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's output: its class, the full serialised backend (vocab,
    normaliser, pre-tokeniser, post-processor, added tokens) or, for a slow tokenizer, its vocab
    files and vocab, and its special tokens. Not its path: a moved copy keeps its fingerprint."""
    h = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = _backend_copy(tokenizer)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        from mst5_dist.files import file_sha256

        for attr in sorted(getattr(tokenizer, "vocab_files_names", {})):
            f = getattr(tokenizer, attr, None)
            if isinstance(f, str) and os.path.isfile(f):
                h.update(f"{attr}:{file_sha256(f)}".encode())
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(sorted(str(t) for t in tokenizer.all_special_tokens)).encode())
    return h.hexdigest()


def _count_tokens(tokenizer, backend, texts: list[str], max_len: int) -> np.ndarray:
    """Token counts as ``tokenizer(texts, truncation=True, max_length=max_len)`` gives them; a long
    text is cut first (``bounded_texts``), so its count costs what ``max_len`` tokens cost."""
    if backend is None:
        enc = tokenize_truncated(tokenizer, texts, max_len, return_attention_mask=False, return_length=True)
        return np.asarray(enc["length"], dtype=np.int32)
    texts = bounded_texts(tokenizer, texts, max_len)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: faster
    counts = np.fromiter(map(len, encode(texts)), dtype=np.int32, count=len(texts))
    return np.minimum(counts, max_len)  # truncation keeps max_len tokens, special ones included


@contextlib.contextmanager
def _tokenizer_threads() -> Iterator[None]:
    """Let the Rust tokenizer use every core for one pass. The entry points turn its parallelism
    off (TOKENIZERS_PARALLELISM=false, for forked DataLoader workers); ``tokenizers`` reads the
    variable at every call, and in a process forked after parallel use it turns parallelism off
    by itself, so switching it on around this pass is safe."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _compute_lengths(dataset, tokenizer, max_len: int, columns: tuple[str, ...]) -> np.ndarray:
    with _tokenizer_threads():
        return _lengths_of(dataset, tokenizer, max_len, columns)


def _lengths_of(dataset, tokenizer, max_len: int, columns: tuple[str, ...]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    n = table.num_rows
    backend = _backend_copy(tokenizer)
    if backend is not None:  # the Rust backend must count what the wrapper's call does; else use the call
        probe = table.column(columns[0]).slice(0, 64).to_pylist()
        slow = [len(ids) for ids in tokenize_truncated(tokenizer, probe, max_len)["input_ids"]]
        if _count_tokens(tokenizer, backend, probe, max_len).tolist() != slow:
            logger.warning("%s: backend token counts differ from the tokenizer's; using the tokenizer", type(tokenizer))
            backend = None
    lengths = np.zeros(n, dtype=np.int32)
    for start in range(0, n, _LENGTH_CHUNK):
        parts = [table.column(c).slice(start, _LENGTH_CHUNK) for c in columns]
        m = len(parts[0])
        texts = pa.chunked_array([chunk for p in parts for chunk in p.chunks], type=pa.string()).combine_chunks()
        if texts.null_count:
            raise DataError(f"token lengths: a row has no text in one of the columns {list(columns)}")
        # Each distinct text once: the translations of one example often share a hypothesis.
        encoded = pc.dictionary_encode(texts)
        counts = _count_tokens(tokenizer, backend, encoded.dictionary.to_pylist(), max_len)
        per_column = counts[encoded.indices.to_numpy()].reshape(len(columns), m)
        lengths[start : start + m] = per_column.max(axis=0)
    return lengths


def token_lengths(dataset, tokenizer, max_len: int, columns: tuple[str, ...], cache_dir: Path | None = None):
    """Per-row length used for grouping: the longest of the row's sentences (``columns``), in
    tokens after truncation to ``max_len``, as an int32 array.

    Computed once with the fast tokenizer in large batches, and cached in ``cache_dir`` (the
    dataset's cache folder, see ``dataset_cache_dir``) under a key of the tokenizer's fingerprint,
    ``max_len``, the columns and the row count.
    """
    columns = tuple(columns)
    path = None if cache_dir is None else lengths_cache_path(cache_dir, len(dataset), tokenizer, max_len, columns)
    if path is not None and not path.is_file():
        logger.info("token lengths of %d rows (computed once, cached in %s)", len(dataset), path)
    return cached_array(path, len(dataset), lambda: _compute_lengths(dataset, tokenizer, max_len, columns))


def lengths_cache_path(cache_dir: Path, n_rows: int, tokenizer, max_len: int, columns: tuple[str, ...]) -> Path:
    """Where ``token_lengths`` caches the lengths for this key in a dataset's cache folder."""
    key = json.dumps([_LENGTHS_VERSION, tokenizer_fingerprint(tokenizer), max_len, list(columns), n_rows])
    return Path(cache_dir) / f"lengths-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
