"""Training triplets (anchor, positive, hard negative, source id) and the global batch sampler.

formats/  readers by ``data.format`` name, one module each; every field validated, a bad row
          raising ``DataError("FILE:LINE: field 'F': ...")`` unless ``data.skip_bad_rows``
rows      the row layout, shared validation and the reference JSON-lines parser
blocks    JSONL block by block into Arrow, the Python reader as the reference for any block
cache     the rows saved as Arrow under a key of the inputs, memory-mapped later; source codes
arrays    integer arrays (source codes, lengths) cached beside the rows, written atomically
lengths   per-row token lengths, cached per tokenizer
sampler   ``GlobalBatchSampler``: global batches with unique source ids, sliced per rank
"""

from mst5_dist.data import formats
from mst5_dist.data.cache import SOURCE_CODES, dataset_cache_dir, load_cached, load_dataset, source_codes
from mst5_dist.data.formats import read_triplets
from mst5_dist.data.formats.csv import read_csv
from mst5_dist.data.formats.hub import read_hub
from mst5_dist.data.formats.jsonl import read_jsonl
from mst5_dist.data.formats.snli import read_snli
from mst5_dist.data.formats.xnli import read_xnli
from mst5_dist.data.lengths import lengths_cache_path, token_lengths, tokenizer_fingerprint
from mst5_dist.data.rows import COLUMNS, NLI_LABELS, ReadReport, RowChecker, iter_jsonl
from mst5_dist.data.sampler import GlobalBatchSampler, repeated_in_rows
from mst5_dist.errors import DataError

__all__ = [
    "COLUMNS",
    "NLI_LABELS",
    "SOURCE_CODES",
    "DataError",
    "GlobalBatchSampler",
    "ReadReport",
    "RowChecker",
    "dataset_cache_dir",
    "formats",
    "iter_jsonl",
    "lengths_cache_path",
    "load_cached",
    "load_dataset",
    "read_csv",
    "read_hub",
    "read_jsonl",
    "read_snli",
    "read_triplets",
    "read_xnli",
    "repeated_in_rows",
    "source_codes",
    "token_lengths",
    "tokenizer_fingerprint",
]
