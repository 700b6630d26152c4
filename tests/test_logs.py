"""The library's log handler writes to stderr as it is when a record is emitted: a stream swapped in
for a while (pytest's capsys, an in-process ``main``) and closed afterwards is never written to."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from mst5_dist import logs

pytestmark = pytest.mark.unit


@pytest.fixture
def mst5_logger(monkeypatch):
    """The ``mst5_dist`` logger, given back as it was."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    root = logging.getLogger(logs.ROOT)
    before = (list(root.handlers), root.level, root.propagate)
    yield logging.getLogger(f"{logs.ROOT}.test")
    root.handlers[:], root.level, root.propagate = before


def test_records_follow_sys_stderr_after_a_captured_stream_is_closed(mst5_logger, monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    logs.configure("INFO")
    mst5_logger.info("first")
    assert captured.getvalue() == "first\n"
    captured.close()  # what capsys does at the end of a test that ran a command in-process
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    mst5_logger.info("second")
    # (a handler holding the first stream printed "--- Logging error --- ... I/O operation on closed file")
    assert later.getvalue() == "second\n"


def test_an_explicit_stream_is_kept(mst5_logger, monkeypatch):
    mine = io.StringIO()
    logs.configure("INFO", stream=mine)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    mst5_logger.info("to mine")
    assert mine.getvalue() == "to mine\n" and sys.stderr.getvalue() == ""
