"""Input formats by ``data.format`` name: every module of this package registers one (``base``).

jsonl  {anchor, positive, negative[, source_id]} per line, read block by block into Arrow
csv    SimCSE triplets (sent0, sent1, hard_neg)
snli   SNLI/MNLI JSON lines, triplets per premise
xnli   aligned per-language TSVs, mSimCSE sampling (depends on train.seed); its XNLI-MT 1.0
       layout (multinli.{split}.{lang}.tsv) is read by the helper module xnli_mt (no format of its own)
hub    a Hugging Face dataset by name
"""

import importlib
import pkgutil

from mst5_dist.data.formats.base import Format, chunks, get, names, read_triplets, register, take, unregister

# Import every format module so that adding one is adding a file.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Format", "chunks", "get", "names", "read_triplets", "register", "take", "unregister"]
