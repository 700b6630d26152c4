"""Interop with other people's models and tools.

    adapter.py  ``import_adapter``: a published PEFT LoRA (the m-ST5 adapter) as one of our folders
    mteb.py     ``as_mteb_model``: any of our embedders for mteb 2
    cli.py      ``mst5 import-adapter``

The model card writer is ``mst5_dist.modelcard`` (the trainer writes cards too).
"""

from mst5_dist.interop.adapter import InteropError, import_adapter
from mst5_dist.interop.mteb import MtebEncoder, as_mteb_model
from mst5_dist.modelcard import write_model_card

__all__ = ["InteropError", "MtebEncoder", "as_mteb_model", "import_adapter", "write_model_card"]
