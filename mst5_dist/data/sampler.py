"""``GlobalBatchSampler``: GLOBAL batches (all ranks together) in which no two rows share a source
id (translations of one example would be false negatives of each other), optionally grouped by
length, each rank handed an equal contiguous slice. It works on numpy arrays (O(N log N) per
epoch), never on per-row Python objects."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from mst5_dist.data.arrays import arrow_column, encode_source_ids


def _as_codes(source_ids) -> np.ndarray:
    """Source ids as integer codes: an integer array as is; strings (list, Arrow, ``datasets``
    Column) through Arrow's dictionary encoding, never item by item."""
    if isinstance(source_ids, np.ndarray) and source_ids.dtype.kind in "iu":
        if len(source_ids) and (source_ids.min() < 0 or source_ids.max() >= len(source_ids)):
            source_ids = np.unique(source_ids, return_inverse=True)[1]  # compact: keys stay small
        return source_ids
    import pyarrow as pa

    source = getattr(source_ids, "source", None)  # a datasets Column: read its Arrow column once
    if source is not None and hasattr(source, "with_format"):
        return encode_source_ids(arrow_column(source, source_ids.column_name))
    if not isinstance(source_ids, (pa.Array, pa.ChunkedArray)):
        source_ids = pa.array([str(s) for s in source_ids], type=pa.string())
    return encode_source_ids(source_ids)


def repeated_in_rows(codes: np.ndarray) -> np.ndarray:
    """Per row of a 2-D array: does some value occur twice in it? (The sampler's final check.)"""
    s = np.sort(codes, axis=1)
    return (s[:, 1:] == s[:, :-1]).any(axis=1)


class GlobalBatchSampler:
    """Deterministic, resumable global batches with unique source ids; yields this rank's slice.

    For epoch ``e`` the order depends only on (seed, e): resume by ``set_epoch(e, start)``.
    The ragged tail (fewer rows than a global batch) is dropped so every rank always gets exactly
    ``global_batch / world_size`` rows and collectives can never hang on a short rank.

    The algorithm (docs/training.md, "The batch sampler"), on numpy arrays: shuffle the rows (a
    numpy Generator seeded with (seed, epoch)), cut the order into even buckets of about
    ``bucket_batches`` global batches, sort each bucket by length and cut it into consecutive
    batches. Then, in rounds, every repeated source id in a batch (each occurrence after the
    first) moves to the end of the next batch, whose first rows move up to fill the gap: the
    vectorised form of "put each row in the first batch that lacks its source id". Rows pushed
    past the last batch leave the bucket. The rounds stop when no id repeats or the repeats stop
    going down; a batch that still repeats an id is broken up, and its rows, with the rows that
    left, are carried into the next bucket. After the last bucket the carried rows are cut again
    while full batches come out; the rest is dropped (``dropped``). Every kept batch is checked
    (``repeated_in_rows``): the rule holds by construction, not by luck. Finally the batches are
    shuffled.
    """

    _STALL_ROUNDS = 12  # rounds without fewer repeats before a bucket gives up on the rest

    def __init__(
        self,
        source_ids,
        global_batch: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        lengths=None,
        bucket_batches: int = 32,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not divide by world size {world_size}")
        if global_batch < 1 or bucket_batches < 1:
            raise ValueError(f"global batch {global_batch} and bucket_batches {bucket_batches} must be >= 1")
        self.codes = _as_codes(source_ids)
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is not None and self.lengths.shape != self.codes.shape:
            raise ValueError(f"{len(self.lengths)} lengths for {len(self.codes)} rows")
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.bucket_batches = bucket_batches
        self.epoch, self.start = 0, 0
        self.dropped = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def global_batches(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s global batches as an (n_batches, global_batch) array of row indices."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed & 0xFFFF_FFFF_FFFF_FFFF, epoch])
        n = len(self.codes)
        order = rng.permutation(n)
        n_buckets = max(1, round(n / (self.global_batch * self.bucket_batches)))  # even: no tiny last one
        bounds = [n * k // n_buckets for k in range(n_buckets + 1)]
        out: list[np.ndarray] = []
        carry = np.empty(0, dtype=np.int64)
        for lo, hi in itertools.pairwise(bounds):
            full, carry = self._fill(np.concatenate([carry, order[lo:hi]]))
            out.append(full)
        while len(carry) >= self.global_batch:  # leftovers: keep cutting while full batches come out
            full, carry = self._fill(carry)
            if not len(full):
                break
            out.append(full)
        batches = np.concatenate(out)
        batches = batches[rng.permutation(len(batches))]
        self.dropped = len(carry)
        self._cached = (epoch, batches)
        return batches

    def _fill(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut ``items`` (length-sorted if grouping) into full batches without repeated source ids:
        (batches, rows carried on)."""
        g = self.global_batch
        if self.lengths is not None:
            items = items[np.argsort(self.lengths[items], kind="stable")]
        if len(items) < g:
            return np.empty((0, g), dtype=np.int64), items
        items, codes, n_out = self._push_repeats(items.astype(np.int64), self.codes[items].astype(np.int64))
        n_full = (len(items) - n_out) // g
        batches = items[: n_full * g].reshape(n_full, g)
        bad = repeated_in_rows(codes[: n_full * g].reshape(n_full, g))
        return batches[~bad], np.concatenate([batches[bad].ravel(), items[n_full * g :]])

    def _push_repeats(self, items: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Reorder (items, codes) so that batches (consecutive runs of ``global_batch``) repeat as
        few source ids as the rounds manage; also return how many rows left at the end."""
        g, m = self.global_batch, len(items)
        out = np.zeros(m, dtype=bool)  # pushed past the last batch: kept at the end, never back in
        k = int(codes.max()) + 1
        best, stall = None, 0
        for _ in range(4 * (m // g) + 16):
            n_full = (m - int(out.sum())) // g
            if n_full == 0:
                break
            batch = np.arange(n_full * g) // g
            keys = batch * k + codes[: n_full * g]  # (batch, source id) as one integer
            order = np.argsort(keys, kind="stable")
            repeat = keys[order][1:] == keys[order][:-1]
            count = int(repeat.sum())
            if count == 0:
                break
            if best is not None and count >= best:  # no progress (rows cycling): give up
                stall += 1
                if stall >= self._STALL_ROUNDS:
                    break
            else:
                best, stall = count, 0
            rows = order[1:][repeat]  # each occurrence of an id in a batch after its first
            position = np.arange(m, dtype=np.float64)
            position[rows] = (batch[rows] + 2) * g - 0.5  # just before the batch after next
            out[rows[batch[rows] == n_full - 1]] = True
            position[out] = 2.0 * m + np.flatnonzero(out)
            move = np.argsort(position, kind="stable")
            items, codes, out = items[move], codes[move], out[move]
        return items, codes, int(out.sum())

    def __len__(self) -> int:
        return len(self.global_batches(self.epoch)) - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` batches (resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for batch in self.global_batches(self.epoch)[self.start :]:
            yield batch[lo:hi].tolist()
