"""The one output-path layer: where a command may write, one writer at a time, no write through a link.

Every command that writes (train, train-modular, export, embed, eval, sweep, build-tiny,
import-adapter, data download) goes through here:

- ``check_output``: an output is never empty or the current folder (an unset shell variable in
  ``train.output_dir=$OUT`` once trained into the working folder and overwrote the ``--config``
  file), and never is, contains or lies inside one of the command's inputs (``mst5 export --model
  RUN --output RUN --overwrite`` once deleted the run it exported).
- ``refuse_link`` / ``refuse_links_inside`` / ``open_nofollow``: a symbolic link where we write,
  rename or delete is refused (exit 2 naming it), never followed.
- ``claim``: an exclusive ``flock`` held by the process while it writes an output; the kernel
  releases it when the process ends, however it ends; a second writer is refused naming the holder.
- ``no_space``: a full disk while writing is one line naming the path (exit 2), not a traceback.
- ``inside``: a path read from a folder's metadata must resolve inside that folder.

Standard library only (a foundation module).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mst5_dist.errors import BadInput

# Where a replaced output (an export, an imported adapter, a tiny model, a .npy, results.json) is
# claimed: a lock file beside it, since the output itself is renamed into place.
LOCK_SUFFIX = ".mst5.lock"
Inputs = Iterable[tuple[str, "str | Path | None"]]


class OutputError(BadInput):
    """An output that must not be written: empty, the current folder, an input, a link, a full disk."""


class OutputInUse(OutputError):
    """Another process writes into the output, or it holds a run that was not resumed."""


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(out: str | Path | None, role: str, inputs: Inputs = (), *, may_hold: Inputs = ()) -> Path:
    """``out`` as a Path, or OutputError when writing it could destroy what the command reads.

    ``role`` names the output in messages (``--output``, ``train.output_dir``). ``inputs`` are
    (name, path) pairs: the output may not be one, contain one, or lie inside one. ``may_hold`` are
    inputs the output may contain but not be (a resumed run's own config.yaml)."""
    text = "" if out is None else os.fspath(out)
    if not text.strip() or _real(text) == _real("."):
        shown = repr(text) if not text.strip() else f"{text} ({_real('.')}, the current folder)"
        raise OutputError(f"{role} {shown}: name a folder of its own (an empty or current-folder output "
                          "would write over the files around it)")  # fmt: skip
    real = _real(text)
    for name, path, may_contain in [*((n, p, False) for n, p in inputs), *((n, p, True) for n, p in may_hold)]:
        if path is None or not os.fspath(path).strip() or not Path(path).exists():
            continue
        src = _real(path)
        if real == src:
            how = "is"
        elif _within(real, src):
            how = "lies inside"
        elif _within(src, real) and not may_contain:
            how = "contains"
        else:
            continue
        raise OutputError(f"{role} {text}: {how} the input {name} {path} (an output must not be, contain or lie "
                          "inside what the command reads: choose another folder)")  # fmt: skip
    return Path(text)


def refuse_link(path: str | Path, what: str = "output") -> None:
    """OutputError when ``path`` is a symbolic link (we would write, rename or delete through it)."""
    if os.path.islink(path):
        raise OutputError(
            f"{path}: is a symbolic link (to {os.readlink(path)}) where the {what} is written: refusing to write "
            "through it; remove the link"
        )


def refuse_links_inside(folder: str | Path) -> None:
    """OutputError naming the first symbolic link found in ``folder``'s tree (links are not followed)."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            refuse_link(Path(root) / name, f"output {folder}")


def open_nofollow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (O_NOFOLLOW) with an OutputError naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(path)
        raise


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``, creating it; never through a link."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with no_space(path), os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def no_space(path: str | Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) while writing ``path`` into one OutputError naming it."""
    try:
        yield
    except OSError as e:
        if isinstance(e, BadInput) or e.errno not in NO_SPACE:
            raise
        raise OutputError(f"{path}: {os.strerror(e.errno)} while writing it (nothing was kept)") from None


def lock_path(out: str | Path) -> Path:
    """The lock file of an output that is replaced as a whole: ``.NAME.mst5.lock`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}{LOCK_SUFFIX}")


class Lock:
    """An exclusive ``flock`` on a lock file; the file keeps the holder's pid (for the message only)."""

    def __init__(self, fd: int, path: Path, remove: bool) -> None:
        self.fd, self.path, self.remove = fd, path, remove

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.remove:  # under the lock: a waiting process re-checks the inode (see ``try_lock``)
            Path(self.path).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1


def try_lock(path: Path, *, remove: bool = False) -> Lock | str:
    """A held Lock on ``path``, or the holder's pid when another process holds it.

    ``remove``: the holder deletes the file on release; a process that locked the file just as it
    was deleted sees that the path no longer names its file and tries again."""
    while True:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            return holder
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Lock(fd, path, remove)


@contextmanager
def claim(out: str | Path, role: str = "--output") -> Iterator[None]:
    """This process is the only writer of ``out`` (a folder replaced as a whole, or a file) while the
    block runs; a second writer gets OutputInUse naming the holder's pid."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = try_lock(lock_path(out), remove=True)
    if isinstance(lock, str):
        raise OutputInUse(
            f"{role} {out}: being written by another mst5 process (pid {lock}, lock {lock_path(out)}): wait for it, "
            "or choose another output"
        )
    try:
        yield
    finally:
        lock.close()


def inside(folder: str | Path, rel: str, source: str, *, base: str | Path | None = None) -> Path:
    """``base/rel`` (``base`` defaults to ``folder``) when it resolves inside ``folder``; else BadInput
    naming ``source`` and ``rel``: a path read from a folder's metadata may not lead out of it."""
    path = Path(base if base is not None else folder) / rel if isinstance(rel, str) else None
    if path is None or not rel or os.path.isabs(rel) or not _within(_real(path), _real(folder)):
        raise BadInput(f"{source}: path {rel!r} leads outside {folder} (a folder's files must stay inside it)")
    return path
