"""``mst5 data download NAME... [--dest DIR] [--base-url URL] [--trust-unpinned]``: fetch the public
evaluation sets in the layout ``mst5 eval --data-dir`` reads, and the training sets (``en-nli``,
``xnli``) in the layout the shipped configs read, each file checked against its sha256.

Two manifests list the files: ``mst5_dist/resources/eval_data.jsonl`` pins every evaluation file to
a commit of its public GitHub source (the same bytes as ``../shared/data``, see its SOURCES.md);
``train_data.jsonl`` pins the training archives (SNLI 1.0, MultiNLI 1.0, XNLI-MT 1.0) to the size
and sha256 published with the Hugging Face ``datasets`` scripts that fetched the same URLs. Each
entry: name, url, dest, bytes, sha256 (null: unpinned, refused unless ``--trust-unpinned``, and
then recorded in ``FILE.sha256`` and checked on later runs).

A file already present with the right checksum is skipped. A download is written to ``FILE.part``
and renamed only once its size and checksum match; an interrupted or truncated transfer keeps the
part and the next run resumes it with an HTTP ``Range`` request; a checksum mismatch deletes the part
and exits 2 naming the file. The training archives are then converted (``trainsets``). Without a
network the command says which files to put where instead. ``--base-url`` (or
``$MST5_DATA_BASE_URL``) fetches every URL's path from another server: a mirror of the same paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any

from mst5_dist.commands import positive_float
from mst5_dist.errors import run_command
from mst5_dist.evaluate.fetch import Incomplete, Offline, ServerError, fetch
from mst5_dist.evaluate.trainsets import PREPARE, prepare
from mst5_dist.files import file_sha256
from mst5_dist.outputs import check_output, refuse_link

DEFAULT_DEST = Path(os.environ.get("MST5_EVAL_DATA", Path.home() / ".cache" / "mst5" / "eval-data"))
DEFAULT_TRAIN_DEST = Path(os.environ.get("MST5_TRAIN_DATA", "data"))  # where configs/mt5-*.yaml look
BASE_URL_ENV = "MST5_DATA_BASE_URL"
MANIFESTS = {"eval": "eval_data.jsonl", "train": "train_data.jsonl"}


class Stop(Exception):
    """Stop the command with ``code`` after printing ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def manifest() -> list[dict[str, Any]]:
    """Every entry of both manifests, each with its ``kind`` (``eval`` or ``train``)."""
    out = []
    for kind, name in MANIFESTS.items():
        text = (resources.files("mst5_dist") / "resources" / name).read_text(encoding="utf-8")
        out += [{**json.loads(line), "kind": kind} for line in text.splitlines() if line.strip()]
    return out


def mirrored(url: str, base_url: str | None) -> str:
    """``url`` with its scheme and host replaced by ``base_url`` (the path kept)."""
    if not base_url:
        return url
    parts = urllib.parse.urlsplit(url)
    return base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _pin(e: dict[str, Any], target: Path) -> str | None:
    """The sha256 to check: the manifest's, or the one recorded when an unpinned file was trusted."""
    if e.get("sha256"):
        return e["sha256"]
    recorded = target.with_name(target.name + ".sha256")
    return recorded.read_text().strip() if recorded.is_file() else None


def _fetch_entry(e: dict[str, Any], target: Path, url: str, timeout: float, trust_unpinned: bool) -> bool:
    """Make ``target`` hold the entry's verified bytes; True when something was downloaded."""
    pin = _pin(e, target)
    if target.is_file() and pin and file_sha256(target) == pin:
        return False
    if not pin and not trust_unpinned:
        raise Stop(2, f"{target}: no sha256 pin for {url} in the manifest: rerun with --trust-unpinned to accept it")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    refuse_link(target)  # the rename below would replace a planted link, never write through it; say so
    fetch(url, part, e.get("bytes"), timeout)
    digest, size = file_sha256(part), part.stat().st_size
    if (pin and digest != pin) or (e.get("bytes") is not None and size != e["bytes"]):
        part.unlink()
        raise Stop(
            2,
            f"{target}: the download from {url} does not match the manifest (sha256 {digest}, {size} bytes;"
            f" expected {pin}, {e.get('bytes')} bytes): deleted it",
        )
    if not pin:
        target.with_name(target.name + ".sha256").write_text(digest + "\n")
        print(f"{target}: unpinned, trusted as downloaded: sha256 {digest}, {size} bytes (recorded)")
    os.replace(part, target)
    return True


def _offline_message(err: Exception, url: str, todo: list[tuple[dict, Path, str]]) -> str:
    missing = todo[:1] + [(e, t, u) for e, t, u in todo[1:] if not t.is_file()]  # todo[0] failed
    lines = [f"  {t}  <-  {u}" for _, t, u in missing[:10]]
    more = [f"  ... and {len(missing) - 10} more"] if len(missing) > 10 else []
    after = {e["kind"] for e, _, _ in missing}
    then = "rerun this command (it checks and converts them)" if "train" in after else "run `mst5 eval --data-dir DIR`"
    return "\n".join(
        [
            f"mst5 data download: cannot fetch {url} ({err}).",
            "Offline? Put the files into this layout (sha256 of each in mst5_dist/resources/"
            f"{' and '.join(MANIFESTS[k] for k in sorted(after))}), then {then}:",
            *lines,
            *more,
        ]
    )


def _wanted(names: list[str], entries: list[dict[str, Any]]) -> list[str]:
    known = sorted({e["name"] for e in entries})
    wanted = known if names == ["all"] else names
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise Stop(2, f"mst5 data download: unknown data set(s) {', '.join(unknown)} (known: {', '.join(known)}, all)")
    return wanted


def _fetch_all(todo: list[tuple[dict, Path, str]], timeout: float, trust_unpinned: bool) -> int:
    fetched = 0
    for i, (e, target, url) in enumerate(todo):
        try:
            fetched += _fetch_entry(e, target, url, timeout, trust_unpinned)
        except Offline as err:
            raise Stop(1, _offline_message(err, url, todo[i:])) from None
        except ServerError as err:
            raise Stop(1, f"mst5 data download: {url}: {err}") from None
        except Incomplete as err:
            part = target.with_name(target.name + ".part")
            kept = f"{part} is kept: rerun the same command to resume" if part.is_file() else "nothing kept"
            raise Stop(1, f"mst5 data download: {url}: transfer incomplete ({err}); {kept}") from None
    return fetched


def download(
    names: list[str],
    dest: Path | None = None,
    timeout: float = 30.0,
    base_url: str | None = None,
    trust_unpinned: bool = False,
    entries: list[dict[str, Any]] | None = None,
) -> int:
    """Fetch (and, for training sets, convert) the named sets; the exit code."""
    entries = manifest() if entries is None else entries
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    try:
        wanted = _wanted(names, entries)
        roots = {e["name"]: dest or (DEFAULT_TRAIN_DEST if e["kind"] == "train" else DEFAULT_DEST) for e in entries}
        todo = [(e, roots[e["name"]] / e["dest"], mirrored(e["url"], base_url)) for e in entries if e["name"] in wanted]
        fetched = _fetch_all(todo, timeout, trust_unpinned)
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.code
    print(f"{len(todo)} files ({fetched} downloaded, {len(todo) - fetched} already there)")
    for name in [n for n in wanted if n in PREPARE]:
        archives = {t.name: t for e, t, _ in todo if e["name"] == name}
        digests = {str(t): _pin(e, t) for e, t, _ in todo if e["name"] == name}
        print(prepare(name, roots[name], archives, digests))
    return 0


def _run(args: argparse.Namespace) -> int:
    def run() -> int:
        dest = check_output(args.dest, "--dest") if args.dest else None
        return download(args.names, dest, args.timeout, args.base_url, args.trust_unpinned)

    return run_command("mst5 data download", run)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``mst5 data download NAME...``."""
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser(
        "download", help="fetch evaluation sets (tatoeba, sts17, ...) and training sets (en-nli, xnli) with checksums"
    )
    d.add_argument("names", nargs="+", help="data set names, or 'all'")
    d.add_argument(
        "--dest",
        default=None,
        help="folder to fill (default: evaluation sets $MST5_EVAL_DATA or ~/.cache/mst5/eval-data;"
        " training sets $MST5_TRAIN_DATA or ./data, where configs/mt5-*.yaml look)",
    )
    d.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per request")
    d.add_argument(
        "--base-url", default=None, help=f"fetch every file's path from this server (a mirror; ${BASE_URL_ENV})"
    )
    d.add_argument(
        "--trust-unpinned",
        action="store_true",
        help="accept a file the manifest has no sha256 for (recorded on first fetch)",
    )
    d.set_defaults(func=_run)
