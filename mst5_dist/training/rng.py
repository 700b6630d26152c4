"""Random-number-generator state in a checkpoint, stored without pickle (safetensors + JSON
metadata), one file per rank, restored strictly: a resumed run draws the same dropout masks as an
uninterrupted one, or it fails saying why (Accelerate's own loader logs "Could not load random
states" and carries on, which resumed a truncated checkpoint into a different adapter)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from mst5_dist.errors import BadInput


def rng_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rng_state_{rank}.safetensors"


def save_rng(folder: Path, rank: int) -> Path:
    from safetensors.torch import save_file

    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    meta = {
        "python": json.dumps([version, list(mt_state), gauss]),
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
    }
    path = rng_file(folder, rank)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_rng(folder: Path, rank: int) -> None:
    """Restore this rank's generators from ``folder``; raise ``BadInput`` naming the file if unusable."""
    from safetensors import safe_open

    path = rng_file(folder, rank)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        version, mt_state, gauss = json.loads(meta["python"])
        kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    except Exception as e:  # missing, truncated, or not ours: never resume with other random streams
        raise BadInput(f"{path}: cannot restore the random state ({type(e).__name__}: {e})") from None
    random.setstate((version, tuple(mt_state), gauss))
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((t for t in tensors if t.startswith("torch_cuda_")), key=lambda t: int(t[11:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
