"""``mst5 data download NAME... [--dest DIR]``: fetch the public evaluation sets in the layout
``mst5 eval --data-dir`` reads, each file checked against its sha256.

The manifest ``mst5_dist/resources/eval_data.jsonl`` pins every file to a commit of its public
GitHub source (the same bytes as ``../shared/data``, see its SOURCES.md): url, destination, size,
sha256. A file already present with the right checksum is skipped; a download is written to
``FILE.part`` and renamed only once its checksum matches. Without a network the command says which
files to put where instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from mst5_dist.commands import positive_float
from mst5_dist.errors import run_command
from mst5_dist.files import file_sha256
from mst5_dist.outputs import OutputError, check_output, no_space, refuse_link

DEFAULT_DEST = Path(os.environ.get("MST5_EVAL_DATA", Path.home() / ".cache" / "mst5" / "eval-data"))


def manifest() -> list[dict[str, Any]]:
    text = (resources.files("mst5_dist") / "resources" / "eval_data.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def download(names: list[str], dest: Path, timeout: float = 30.0) -> int:
    entries = manifest()
    known = sorted({e["name"] for e in entries})
    wanted = known if names == ["all"] else names
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(
            f"mst5 data download: unknown data set(s) {', '.join(unknown)} (known: {', '.join(known)}, all)",
            file=sys.stderr,
        )
        return 2
    todo = [e for e in entries if e["name"] in wanted]
    fetched = skipped = 0
    for i, e in enumerate(todo):
        target = dest / e["dest"]
        if target.is_file() and file_sha256(target) == e["sha256"]:
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        refuse_link(target)
        refuse_link(part)
        try:
            with urllib.request.urlopen(e["url"], timeout=timeout) as r, no_space(part), part.open("wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except OutputError:  # a full disk: nothing half-written kept
            part.unlink(missing_ok=True)
            raise
        except OSError as err:  # URLError, timeouts, DNS failure: no usable network
            part.unlink(missing_ok=True)
            missing = [x for x in todo[i:] if not (dest / x["dest"]).is_file()]
            print(
                f"mst5 data download: cannot fetch {e['url']} ({err}).\n"
                f"Offline? Put the files into {dest} in this layout (sha256 of each in "
                f"mst5_dist/resources/eval_data.jsonl), then run `mst5 eval --data-dir {dest}`:\n"
                + "\n".join(f"  {dest / x['dest']}  <-  {x['url']}" for x in missing[:10])
                + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""),
                file=sys.stderr,
            )
            return 1
        digest = file_sha256(part)
        if digest != e["sha256"]:
            part.unlink()
            print(f"mst5 data download: {e['url']}: sha256 {digest} != expected {e['sha256']}", file=sys.stderr)
            return 1
        os.replace(part, target)
        fetched += 1
    print(f"{len(todo)} files in {dest} ({fetched} downloaded, {skipped} already there)")
    return 0


def _run(args: argparse.Namespace) -> int:
    return run_command(
        "mst5 data download", lambda: download(args.names, check_output(args.dest, "--dest"), args.timeout)
    )


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``mst5 data download NAME...``."""
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="fetch evaluation sets (tatoeba, sts17, stsb-multi-mt, ...) with checksums")
    d.add_argument("names", nargs="+", help="data set names, or 'all'")
    d.add_argument("--dest", default=str(DEFAULT_DEST), help="folder to fill (default: $MST5_EVAL_DATA or ~/.cache)")
    d.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per request")
    d.set_defaults(func=_run)
