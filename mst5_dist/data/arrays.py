"""Integer arrays cached beside the Arrow data (source codes, token lengths), and Arrow columns
read once, never item by item through ``datasets``."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mst5_dist.files import atomic_write_bytes

logger = logging.getLogger(__name__)


def arrow_column(dataset, name: str):
    """A column as one Arrow ChunkedArray, taken once (never item by item through ``datasets``)."""
    return dataset.with_format("arrow")[:].column(name)


def save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def cached_array(path: Path | None, n: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` cached in ``path`` (a .npy written atomically); a file of the wrong shape
    (or unreadable) is recomputed, never trusted."""
    if path is not None and path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("unreadable cache %s (%s): recomputing", path, e)
        else:
            if array.shape == (n,) and array.dtype.kind in "iu":
                return array
            logger.warning(
                "cache %s holds %s %s, expected (%d,) integers: recomputing", path, array.shape, array.dtype, n
            )
    array = compute()
    if path is not None:
        save_array(path, array)
    return array


def encode_source_ids(column) -> np.ndarray:
    """Integer codes (equal ids, equal codes) of a string column, by Arrow's hash table."""
    import pyarrow.compute as pc

    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    return pc.dictionary_encode(column).indices.to_numpy(zero_copy_only=False).astype(np.int32)


def merge_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Codes of the groups joined by either key: rows equal in ``a`` or in ``b`` (integer codes)
    end up in one group, transitively (connected components, by label propagation)."""
    n = len(a)
    label = np.arange(n, dtype=np.int64)
    while True:
        new = label
        for key in (a, b):
            low = np.full(int(key.max()) + 1 if n else 0, n, dtype=np.int64)
            np.minimum.at(low, key, new)
            new = low[key]
        if np.array_equal(new, label):
            return np.unique(label, return_inverse=True)[1].astype(np.int32)
        label = new
