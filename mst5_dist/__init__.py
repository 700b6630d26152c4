"""mst5-dist: multilingual Sentence-T5 (m-ST5) training, distributed, exported."""

__version__ = "0.1.0"

__all__ = ["__version__"]
