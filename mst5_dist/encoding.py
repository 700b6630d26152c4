"""A step's sequences as the encoder gets them: ``Chunker`` cuts the tokenised texts into
length-sorted chunks, each padded only to its own longest sequence, or packs them into rows whose
sequences attend only to themselves (``loss.pack_sequences``); ``encode`` runs one forward per chunk
(under activation checkpointing for GradCache) and hands back the embeddings in input order, so the
step still has ONE backward and DDP / ZeRO see one gradient per parameter. Why, and how GradCache
fits in: docs/training.md, "Length-aware encoding" and "Batches larger than memory"."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

AUTO_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 8192}
"""``loss.chunk_overhead_tokens=auto`` by device type (other devices: the CUDA figure)."""


@dataclass(frozen=True)
class Counts:
    """What the encoder runs for a batch, counted on the host from the chunks' shapes (no device
    sync); summed over micro-batches, steps and ranks for ``train_log.jsonl`` (whole numbers, held
    as floats once reduced)."""

    real_tokens: float = 0
    """Tokens of the sequences themselves."""
    padded_tokens: float = 0
    """Tokens the encoder runs: rows x width, summed over the chunks."""
    sentences: float = 0
    """Sequences encoded."""
    chunks: float = 0
    """Encoder calls."""
    real_attended: float = 0
    """Sum over the sequences of length^2: the keys their tokens attend over."""
    padded_attended: float = 0
    """Sum over the chunks of rows x width^2: the keys the encoder's tokens attend over."""

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass
class ChunkedBatch:
    """A micro-batch's sequences as the encoder gets them: length-sorted chunks, each cut to its width."""

    input_ids: list[torch.Tensor]
    """Per chunk: rows x width token ids (rows in length order, padded on the right)."""
    attention_mask: list[torch.Tensor]
    """Per chunk: 1 on real tokens, 0 on padding."""
    lengths: list[int]
    """Real tokens of every row, in the chunks' (sorted) order; host side, so no device sync is needed."""
    bounds: list[tuple[int, int]]
    """Each chunk's row range [start, end) in the sorted order."""
    restore: torch.Tensor | None
    """For each input row, its position in the sorted order (None: rows are already in input order)."""
    fixed_count: bool
    """The number of chunks depends only on the number of rows (equal on every rank by construction)."""
    position_ids: list[torch.Tensor] | None = None
    """Packed chunks only (``loss.pack_sequences``): per chunk, each token's position in its own
    sequence; ``attention_mask`` then holds segment ids (0 on padding, 1 + the sequence's index in
    the chunk on its tokens) instead of 0/1."""
    source: list[list[int]] | None = None
    """Packed batches only: the token ids of every input row (host side), to re-pack on a split."""
    members: list[list[int]] | None = None
    """Packed batches only: per chunk, its sequences' input rows, in the chunk's output order (kept
    rather than derived from ``restore``, which a split must not depend on)."""
    pad_id: int = 0
    """Packed batches only: the token id of padding (for a re-pack)."""

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded_tokens(self) -> int:
        """Tokens the encoder actually runs: rows x width, summed over the chunks."""
        return sum(int(ids.numel()) for ids in self.input_ids)

    def counts(self) -> Counts:
        """What the encoder runs for this batch (the step's metrics sum it)."""
        return Counts(
            real_tokens=self.real_tokens,
            padded_tokens=self.padded_tokens,
            sentences=len(self.lengths),
            chunks=len(self.input_ids),
            real_attended=sum(n * n for n in self.lengths),
            padded_attended=sum(int(ids.shape[0]) * int(ids.shape[1]) ** 2 for ids in self.input_ids),
        )

    def to(self, device) -> ChunkedBatch:
        return replace(
            self,
            input_ids=[move(t, device) for t in self.input_ids],
            attention_mask=[move(t, device) for t in self.attention_mask],
            position_ids=None if self.position_ids is None else [move(t, device) for t in self.position_ids],
            restore=None if self.restore is None else move(self.restore, device),
        )

    def chunk_inputs(self, k: int) -> dict[str, torch.Tensor | int]:
        """The model's keyword arguments for chunk ``k``: ids and mask or, packed, ids, segment
        ids, positions and the number of sequences."""
        if self.position_ids is None:
            return {"input_ids": self.input_ids[k], "attention_mask": self.attention_mask[k]}
        s, e = self.bounds[k]
        return {
            "input_ids": self.input_ids[k],
            "segment_ids": self.attention_mask[k],
            "position_ids": self.position_ids[k],
            "n_sequences": e - s,
        }


def move(value, device):
    """A tensor on ``device`` (other values as they are); to a GPU through pinned memory without
    blocking: a plain copy from pageable memory waits for the queued GPU work, a sync per step."""
    if not isinstance(value, torch.Tensor):
        return value
    if torch.device(device).type != "cuda":
        return value.to(device)
    return value.pin_memory().to(device, non_blocking=True)


def plan_chunks(sorted_lengths: Sequence[int], budget: int, overhead: int, max_rows: int | None = None) -> list[int]:
    """Row counts of the cheapest cut of ``sorted_lengths`` (descending) into chunks.

    cost = sum over chunks of (rows x width + overhead), width = the chunk's first (longest) row,
    each chunk within ``budget`` tokens (a single row always fits) and ``max_rows`` rows."""
    n = len(sorted_lengths)
    L = np.maximum(np.asarray(sorted_lengths, dtype=np.int64), 1)
    cap = n if max_rows is None else max_rows
    best = np.zeros(n + 1, dtype=np.int64)  # best[i]: cheapest cost of the first i rows
    start = np.zeros(n + 1, dtype=np.int64)  # start[i]: first row of the last chunk in that cut
    lo = 0
    for i in range(1, n + 1):
        # feasible starts j form [lo, i - 1]: (i - j) x L[j] grows as j moves left (L descends)
        while lo < i - 1 and ((i - lo) * L[lo] > budget or i - lo > cap):
            lo += 1
        js = np.arange(lo, i)
        costs = best[js] + (i - js) * L[js]
        k = int(np.argmin(costs))  # first minimum: the longest chunk among equals
        best[i], start[i] = costs[k] + overhead, js[k]
    rows, i = [], n
    while i > 0:
        rows.append(i - int(start[i]))
        i = int(start[i])
    return rows[::-1]


@dataclass
class Chunker:
    """Token id lists -> ``ChunkedBatch``. ``budget=None`` and ``max_rows=None``: one chunk at one
    width in input order (the reference path); ``budget=None`` with ``max_rows``: GradCache's fixed
    row chunks of the sorted batch."""

    pad_id: int
    budget: int | None = None
    overhead: int = 0
    max_rows: int | None = None
    packed: bool = False
    """Pack sequences into rows (``pack_sequences``) instead of padding each row; needs ``budget``."""
    attention_ratio: float | None = None
    """Packed rows: attention FLOPs per token and key over linear FLOPs per token (prices wider rows)."""

    def __call__(self, ids: Sequence[Sequence[int]]) -> ChunkedBatch:
        n = len(ids)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        if self.packed and self.budget is not None:
            return pack_sequences(ids, lengths, self.budget, self.pad_id, self.attention_ratio)
        if self.budget is None and self.max_rows is None:
            return pack(ids, lengths, np.arange(n), [n], self.pad_id, restore=False, fixed_count=True)
        order = np.argsort(-lengths, kind="stable")
        if self.budget is None:
            rows = [min(self.max_rows, n - s) for s in range(0, n, self.max_rows)]
        else:
            rows = plan_chunks(lengths[order], self.budget, self.overhead, self.max_rows)
        return pack(ids, lengths, order, rows, self.pad_id, restore=True, fixed_count=self.budget is None)


def pack(
    ids, lengths: np.ndarray, order: np.ndarray, rows: list[int], pad_id: int, *, restore: bool, fixed_count: bool
):
    """Chunk tensors of ``rows[k]`` consecutive rows of ``order``, each padded to its longest row."""
    input_ids, masks, bounds, start = [], [], [], 0
    for count in rows:
        idx = order[start : start + count]
        width = max(int(lengths[idx].max()), 1)
        chunk = np.full((count, width), pad_id, dtype=np.int64)
        mask = np.zeros((count, width), dtype=np.int64)
        for r, i in enumerate(idx):
            chunk[r, : lengths[i]] = ids[i]
            mask[r, : lengths[i]] = 1
        input_ids.append(torch.from_numpy(chunk))
        masks.append(torch.from_numpy(mask))
        bounds.append((start, start + count))
        start += count
    back = torch.from_numpy(np.argsort(order, kind="stable")) if restore else None
    return ChunkedBatch(input_ids, masks, [int(lengths[i]) for i in order], bounds, back, fixed_count)


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Best-fit decreasing: sequence indices per row of ``width`` tokens, longest first, each into
    the fullest row it still fits (rooms kept sorted: O(n log n) searches)."""
    rows: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (free tokens, row), ascending
    for i in sorted(range(len(lengths)), key=lambda i: -max(int(lengths[i]), 1)):
        need = max(int(lengths[i]), 1)
        k = bisect.bisect_left(rooms, (need, -1))
        if k == len(rooms):
            rows.append([])
            free, r = width, len(rows) - 1
        else:
            free, r = rooms.pop(k)
        rows[r].append(i)
        if free - need > 0:
            bisect.insort(rooms, (free - need, r))
    return rows


# Row widths tried, as multiples of the longest sequence: wider rows pack with less padding, but
# every token then attends over the whole row (``attention_ratio`` prices that).
WIDTH_FACTORS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)


def pack_width(lengths: np.ndarray, budget: int, attention_ratio: float | None) -> tuple[int, list[list[int]]]:
    """The row width (and rows) of least work: rows x width x (1 + attention_ratio x width), the
    linear layers' tokens plus attention over the row (``attention_ratio``: attention FLOPs per
    token and key over linear FLOPs per token). None: rows as wide as the longest sequence."""
    longest = max(int(lengths.max()), 1) if len(lengths) else 1
    factors = WIDTH_FACTORS if attention_ratio is not None else (1.0,)
    best = None
    for f in factors:
        width = min(int(longest * f), budget) if f > 1 else longest
        if f > 1 and width <= longest:
            break
        rows = pack_rows(lengths, width)
        cost = len(rows) * width * (1.0 + (attention_ratio or 0.0) * width)
        if best is None or cost < best[0]:
            best = (cost, width, rows)
    return best[1], best[2]


def pack_sequences(
    ids, lengths: np.ndarray, budget: int, pad_id: int, attention_ratio: float | None = None
) -> ChunkedBatch:
    """Sequences packed into rows (``pack_width``), each attending only to itself (segment ids; the
    model builds the block-diagonal mask), in balanced chunks of at most ``budget // width`` rows."""
    width, rows = pack_width(lengths, budget, attention_ratio)
    per_chunk = max(1, budget // width)
    n_chunks = -(-len(rows) // per_chunk)
    cuts = np.linspace(0, len(rows), n_chunks + 1).round().astype(int)  # balanced chunks of whole rows
    return build_packed([list(x) for x in ids], [rows[a:b] for a, b in itertools.pairwise(cuts)], width, pad_id)


def repack(source: list[list[int]], members: list[int], width: int) -> list[list[int]]:
    """``members`` (input rows) packed into rows of ``width`` (``pack_rows``), as input rows."""
    return [[members[j] for j in row] for row in pack_rows([len(source[i]) for i in members], width)]


def build_packed(source: list[list[int]], chunks: list[list[list[int]]], width: int, pad_id: int) -> ChunkedBatch:
    """The packed ``ChunkedBatch`` of ``chunks``: per chunk, its rows, each a list of input rows."""
    input_ids, segs, positions, bounds, order, start = [], [], [], [], [], 0
    for rows in chunks:
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        seg = np.zeros((len(rows), width), dtype=np.int64)
        pos = np.zeros((len(rows), width), dtype=np.int64)
        k = 0
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                seq = source[i]
                n = max(len(seq), 1)
                ids[r, at : at + len(seq)] = seq
                seg[r, at : at + n] = k + 1  # an empty sequence still gets one (padding) token
                pos[r, at : at + n] = np.arange(n)
                order.append(i)
                at, k = at + n, k + 1
        input_ids.append(torch.from_numpy(ids))
        segs.append(torch.from_numpy(seg))
        positions.append(torch.from_numpy(pos))
        bounds.append((start, start + k))
        start += k
    members = [order[a:b] for a, b in bounds]
    back = torch.from_numpy(np.argsort(np.asarray(order, dtype=np.int64), kind="stable"))
    lengths = [len(source[i]) for i in order]
    return ChunkedBatch(input_ids, segs, lengths, bounds, back, False, positions, source, members, pad_id)


def chunker(
    loss_cfg, pad_id: int, device_type: str, packable: bool = False, attention_ratio: float | None = None
) -> Chunker:
    """The run's chunker from its ``loss`` config section (``auto`` overhead read for ``device_type``)."""
    overhead = loss_cfg.chunk_overhead_tokens
    if overhead == "auto":
        overhead = AUTO_OVERHEAD_TOKENS.get(device_type, AUTO_OVERHEAD_TOKENS["cuda"])
    # GradCache's chunks stay unpacked: their row cap counts sequences.
    packed = loss_cfg.pack_sequences and packable and not loss_cfg.cache_chunk_size
    return Chunker(pad_id, loss_cfg.chunk_tokens, int(overhead), loss_cfg.cache_chunk_size, packed, attention_ratio)


def split_to(chunked: ChunkedBatch, count: int) -> ChunkedBatch:
    """The same rows in ``count`` chunks: the chunk with the most rows is halved until there are
    enough (the second half is cut to its own width, so no padding is added). Packed chunks: the
    sequences of the one with the most are halved and each half re-packed."""
    if chunked.members is not None:
        members = list(chunked.members)
        while len(members) < count:
            k = max(range(len(members)), key=lambda c: len(members[c]))
            if len(members[k]) < 2:
                raise ValueError(f"cannot split {len(chunked.lengths)} rows into {count} chunks")
            m = len(members[k]) // 2
            members[k : k + 1] = [members[k][:m], members[k][m:]]
        width, device = int(chunked.input_ids[0].shape[1]), chunked.input_ids[0].device
        chunks = [repack(chunked.source, m, width) for m in members]
        return build_packed(chunked.source, chunks, width, chunked.pad_id).to(device)  # the step moved it
    ids, masks, bounds = list(chunked.input_ids), list(chunked.attention_mask), list(chunked.bounds)
    while len(ids) < count:
        k = max(range(len(bounds)), key=lambda c: bounds[c][1] - bounds[c][0])
        s, e = bounds[k]
        if e - s < 2:
            raise ValueError(f"cannot split {len(chunked.lengths)} rows into {count} chunks")
        m = (s + e) // 2
        width = max(chunked.lengths[m], 1)
        ids[k : k + 1] = [ids[k][: m - s], ids[k][m - s :, :width]]
        masks[k : k + 1] = [masks[k][: m - s], masks[k][m - s :, :width]]
        bounds[k : k + 1] = [(s, m), (m, e)]
    return replace(chunked, input_ids=ids, attention_mask=masks, bounds=bounds)


def encode(model, chunked: ChunkedBatch, checkpointed: bool = False) -> torch.Tensor:
    """Embeddings of every row, in input order: one forward per chunk (under activation
    checkpointing with ``checkpointed``: GradCache), concatenated, then restored to input order."""
    pieces = []
    for k in range(len(chunked.input_ids)):
        kwargs = chunked.chunk_inputs(k)
        pieces.append(checkpoint(model, use_reentrant=False, **kwargs) if checkpointed else model(**kwargs))
    emb = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    return emb if chunked.restore is None else emb[chunked.restore]
