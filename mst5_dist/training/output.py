"""The output folder of a run: one writer at a time, no fresh run over an old one, and a log that
holds each step exactly once."""

from __future__ import annotations

from pathlib import Path

from mst5_dist.files import atomic_write_text
from mst5_dist.layout import FINAL_DIR, LOCK_FILE, checkpoint_dirs
from mst5_dist.outputs import OutputError, OutputInUse, refuse_links_inside, try_lock

__all__ = ["OutputInUse", "existing_run", "output_lock", "truncate_log"]


def existing_run(output_dir: Path) -> str | None:
    """Why a fresh (not resumed) run must not write into ``output_dir``, or None if it may."""
    ckpts = checkpoint_dirs(output_dir)
    found = [str(c.relative_to(output_dir)) for c in ckpts[-1:]]
    if (output_dir / FINAL_DIR).is_dir():
        found.append(FINAL_DIR + "/")
    if not found:
        return None
    return (
        f"{output_dir} holds a run ({', '.join(found)}): continue it with --resume latest, or choose another "
        "train.output_dir (a fresh run would mix its log and checkpoints with the old ones)"
    )


def output_lock(output_dir: Path):
    """(open lock file, None) when this process now holds ``output_dir``; (None, why) when another does.

    ``flock`` is released by the kernel when the holder exits, however it exits, so a SIGKILLed run
    leaves no stale lock; the file keeps the holder's pid for the message only. A symbolic link
    anywhere inside the folder (the lock file, config.yaml, checkpoints/) is refused (``OutputError``):
    the run writes, renames and deletes there and must not do it through a link."""
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        refuse_links_inside(output_dir)
        lock = try_lock(output_dir / LOCK_FILE)
    except OutputError as e:  # returned, not raised: every rank leaves the same way (claim_output)
        return None, str(e)
    if isinstance(lock, str):
        return None, (
            f"{output_dir} is being written by another mst5 process (pid {lock}): wait for it, or choose "
            "another train.output_dir"
        )
    return lock, None


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to ``step`` (the checkpoint resumed from), atomically."""
    if not path.is_file():
        return
    kept = [line for line, rec in _lines_with_records(path) if rec is not None and int(rec.get("step", 0)) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _lines_with_records(path: Path):
    import json

    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None  # a line cut by a kill
        yield line, rec if isinstance(rec, dict) else None
