"""``python -m mst5_dist.modular``: see ``mst5_dist.modular.cli``."""

import os
import sys

from mst5_dist.modular.cli import main

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.exit(main())
