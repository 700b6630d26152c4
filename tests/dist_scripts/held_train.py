"""``mst5 train`` with one objective more, ``held``: the triplet loss, whose third call holds the run
so that a test can signal it at a known point (a signal's timing against a real step is a race).

    MST5_HELD_MARKER=FILE python held_train.py train --config ... loss.objective=held

At its third call the loss writes ``waiting`` to FILE and waits until a stop signal has been noted
(``STOP.requested``), then writes ``stop noted`` and keeps waiting (up to 120 s in all): the run is
still going, so a second Ctrl-C now must abort it (exit 130).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mst5_dist import objectives
from mst5_dist.objectives.triplet import TripletObjective
from mst5_dist.training.signals import STOP


class HeldObjective(TripletObjective):
    calls = 0

    def loss(self, embeddings, batch, gather):
        HeldObjective.calls += 1
        if HeldObjective.calls == 3:
            marker, deadline = Path(os.environ["MST5_HELD_MARKER"]), time.monotonic() + 120
            marker.write_text("waiting")
            while not STOP.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            marker.write_text("stop noted")
            while time.monotonic() < deadline:
                time.sleep(0.01)
        return super().loss(embeddings, batch, gather)


if __name__ == "__main__":
    objectives.register("held")(HeldObjective)
    from mst5_dist.cli import console

    sys.exit(console())
