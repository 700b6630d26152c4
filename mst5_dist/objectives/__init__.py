"""Training objectives behind one protocol (``base.Objective``), chosen by ``loss.objective``.

triplet  InfoNCE over anchor / positive (/ hard negative) rows, negatives gathered across ranks
cla      a modular CLA stage: each sentence against a frozen pivot-language embedding
"""

from mst5_dist.objectives import cla, triplet
from mst5_dist.objectives.base import Collated, Objective, SetupContext, build, names, register, unregister

__all__ = ["Collated", "Objective", "SetupContext", "build", "cla", "names", "register", "triplet", "unregister"]
