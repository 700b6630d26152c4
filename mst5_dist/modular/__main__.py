"""``python -m mst5_dist.modular``: see ``mst5_dist.modular.cli``."""

import os

from mst5_dist.commands import exit_now
from mst5_dist.modular.cli import main

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
exit_now(main())
