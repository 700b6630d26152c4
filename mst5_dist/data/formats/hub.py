"""``hub``: a Hugging Face dataset by name (needs a network)."""

from __future__ import annotations

from mst5_dist.data.formats.base import Format, register
from mst5_dist.data.rows import ReadReport
from mst5_dist.errors import DataError


def read_hub(name: str, split: str) -> ReadReport:
    """A Hugging Face dataset with anchor/positive/negative (or SimCSE) columns; needs a network."""
    from datasets import load_dataset

    ds = load_dataset(name, split=split)
    mapping = [("anchor", "positive", "negative"), ("sent0", "sent1", "hard_neg")]
    for cols in mapping:
        if set(cols[:2]) <= set(ds.column_names):
            break
    else:
        raise DataError(f"{name}: no anchor/positive or sent0/sent1 columns (has {ds.column_names})")
    report = ReadReport()
    for i, row in enumerate(ds):
        report.rows.append(
            {"anchor": row[cols[0]], "positive": row[cols[1]], "negative": row.get(cols[2]), "source_id": f"{name}:{i}"}
        )
    return report


@register("hub")
class Hub(Format):
    local = False  # data.paths are dataset names

    def read(self, source, cfg, seed, need_negative, check):
        return read_hub(source, cfg.split).rows
