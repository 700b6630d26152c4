"""File helpers every layer uses: atomic writes, JSON, content digests. Standard library only.

Atomic means finished-or-absent: a file is written as ``NAME.tmp`` (or a unique temp name) and
renamed over ``NAME``; a folder is built as ``NAME.tmp`` and renamed into place, so a reader never
finds a half-written file or folder under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mst5_dist.outputs import claim, no_space, refuse_link


def _umask() -> int:
    """The process umask, read without changing it (``/proc``; else the set-and-restore dance)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a unique temp file beside ``path`` and rename it over ``path``; a link at
    ``path`` is refused, a full disk names ``path`` (``outputs``). The file gets the mode a plain
    ``open(path, "w")`` gives (0666 less the umask, 0644 usually), not the temp file's private 0600."""
    path = Path(path)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with no_space(path), os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: readers see the old content or the new, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_json(path: Path, obj: Any) -> None:
    """Plain (non-atomic) JSON write, for files inside a folder that is itself renamed into place."""
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_or_none(path: Path) -> Any:
    """The parsed file, or None when it is missing or not valid JSON."""
    try:
        return read_json(path) if Path(path).is_file() else None
    except json.JSONDecodeError:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Objects of a JSON-lines file; a line cut short by a kill (the last one) is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty ``out.tmp``; on normal exit it replaces ``out``, on any exception it is removed.

    The process holds ``out`` (``outputs.claim``) while the block runs: a second writer is refused.
    A link at ``out`` or ``out.tmp`` is refused, never followed or deleted through; a full disk
    names ``out``."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    refuse_link(out)
    refuse_link(tmp)
    with claim(out):
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with no_space(out):
                yield tmp
            refuse_link(out)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Hashing a 50 GB mt5-xxl checkpoint takes minutes, so the digest of a file this large is kept in a
# memo keyed by (absolute path, size, mtime in ns, inode): a changed file gets a new key and is hashed
# again in full. (Hashing only a file's ends, as before, missed edits in its middle.)
_MEMO_LIMIT = 64 << 20


def _digest_memo_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "mst5" / "file-digests.json"


def _file_digest(path: Path) -> str:
    st = path.stat()
    if st.st_size <= _MEMO_LIMIT:
        return file_sha256(path)
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    memo_file = _digest_memo_path()
    memo = read_json_or_none(memo_file) or {}
    if key not in memo:
        memo[key] = file_sha256(path)
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(memo_file, memo)
        except OSError:  # a read-only home: the digest is still right, only not remembered
            pass
    return memo[key]


def fingerprint(*sources: str | Path | Sequence[Path]) -> str:
    """The one content fingerprint of a model: every embedding cache key and export record uses it.

    A source is a model folder: sha256 over (relative name, content digest) of its files, paths and
    mtimes left out on purpose (a copied or moved model keeps its fingerprint, so its cached
    embeddings stay valid); a hub name (no local folder): the name only; or a list of files: their
    bytes in order (an ONNX graph and its external data: content only, so a copy under another name,
    e.g. Triton's ``1/model.onnx``, has the same fingerprint). Several sources (an adapter, its base
    and the adapters merged under it; a modular model's modules): sha256 of theirs, one a line.
    """
    if len(sources) != 1:
        return hashlib.sha256("\n".join(fingerprint(s) for s in sources).encode()).hexdigest()
    source = sources[0]
    if isinstance(source, (list, tuple)):
        return _bytes_digest(source)
    path = Path(source)
    if not path.is_dir():
        return "name:" + hashlib.sha256(str(path).encode()).hexdigest()
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(("checkpoints/", "onnx/", ".")) or "/." in rel:
            continue
        h.update(rel.encode() + b"\0" + _file_digest(file).encode() + b"\n")
    return h.hexdigest()


def _bytes_digest(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with Path(f).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, name: str) -> dict[str, Any]:
    """``folder/name``: size and sha256 of every other file in ``folder`` (recursively), written
    last, so a later reader can tell a complete, unchanged folder from a truncated or edited one."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != name
    }
    manifest = {"format_version": 1, "files": files}
    write_json(folder / name, manifest)
    return manifest


def verify_manifest(folder: Path, name: str) -> str | None:
    """None when every file of ``folder`` is the one its manifest lists (same set, sizes, sha256);
    else one line naming the first file that differs and how."""
    folder = Path(folder)
    manifest = read_json_or_none(folder / name)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{folder / name}: missing or unreadable"
    listed: dict[str, dict[str, Any]] = manifest["files"]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != name}
    for rel in sorted(set(listed) - present):
        return f"{folder / rel}: missing"
    for rel in sorted(present - set(listed)):
        return f"{folder / rel}: not in {name} (a file added after the checkpoint was written)"
    for rel, want in sorted(listed.items()):
        path = folder / rel
        if path.stat().st_size != want.get("size"):
            return f"{path}: {path.stat().st_size} bytes, {name} says {want.get('size')} (truncated or replaced)"
        if file_sha256(path) != want.get("sha256"):
            return f"{path}: content differs from its sha256 in {name} (overwritten or corrupted)"
    return None
