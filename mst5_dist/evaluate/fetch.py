"""One file over HTTP(S) into ``FILE.part``, resumable: what an interrupted or truncated transfer left
is continued with an HTTP ``Range`` request on the next run (a server that ignores ``Range`` sends
the whole file again, which replaces the part)."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

from mst5_dist.outputs import no_space, refuse_link

log = logging.getLogger(__name__)


class Offline(OSError):
    """Nothing could be fetched: no connection to the server at all."""


class ServerError(OSError):
    """The server answered with an HTTP error (404, 403, ...)."""


class Incomplete(OSError):
    """The transfer stopped early; the part is kept for the next run to resume."""


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": "mst5-dist", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


def _start(response, part: Path, offset: int) -> int:
    """Where this response's bytes go in the part: ``offset`` for a matching 206, 0 otherwise."""
    if offset and response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if content_range.startswith(f"bytes {offset}-"):
            return offset
        log.warning("%s: the server answered a range from %r, not %d: starting over", part, content_range, offset)
        raise Incomplete(f"unexpected Content-Range {content_range!r} for a resume at byte {offset}")
    if offset:
        log.info("%s: the server ignored the range request: fetching the whole file again", part)
    return 0


def fetch(url: str, part: Path, size: int | None, timeout: float) -> int:
    """Fill ``part`` with the ``size`` bytes at ``url`` (``size`` None: as many as the server
    announces), resuming what is there; return the bytes received now. ``Offline`` when no
    connection opens; ``Incomplete`` when the transfer stops short (the part is kept)."""
    refuse_link(part)  # a link planted at the part would be written through
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return 0
    try:
        response = urllib.request.urlopen(_request(url, offset), timeout=timeout)
    except urllib.error.HTTPError as err:
        raise ServerError(f"HTTP {err.code} {err.reason}") from err
    except OSError as err:
        raise Offline(str(getattr(err, "reason", err))) from err
    received = 0
    with response:
        try:
            start = _start(response, part, offset)
        except Incomplete:
            part.unlink()
            raise
        length = response.headers.get("Content-Length")
        expected = size if size is not None else (start + int(length) if length is not None else None)
        try:
            with no_space(part), part.open("r+b" if start else "wb") as f:
                f.seek(start)
                f.truncate()
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    received += len(chunk)
        except OSError as err:
            raise Incomplete(f"interrupted after {start + received} bytes ({err})") from err
    have = part.stat().st_size
    if expected is not None and have < expected:
        raise Incomplete(f"got {have} of {expected} bytes")
    return received
