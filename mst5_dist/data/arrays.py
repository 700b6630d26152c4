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
