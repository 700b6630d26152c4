"""``mst5 data download en-nli xnli`` against a server on 127.0.0.1 that serves small archives laid
out as the real ones (SNLI 1.0, MultiNLI 1.0, XNLI-MT 1.0 zips at their real URL paths), built here
from a few rows of ../shared/data: download and conversion, a checksum mismatch, a truncated
transfer resumed with a Range request, the offline message, unpinned files."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import random
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from mst5_dist.config import DataConfig
from mst5_dist.data import read_triplets, read_xnli
from mst5_dist.evaluate import download as dl
from mst5_dist.evaluate.trainsets import XNLI_LANGUAGES

pytestmark = pytest.mark.unit
N_XNLI = 60  # rows of each language's dev file: 20 premises x 3 labels
ROOT = Path(__file__).resolve().parent.parent


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _xnli_mt(shared: Path) -> tuple[bytes, list[tuple[str, str, str]]]:
    """XNLI-MT-1.0.zip: header, labels spelled ``contradictory``, rows shuffled (the same order in
    every language, as MultiNLI train is), from the XTREME dev files; and the English rows."""
    order = list(range(N_XNLI))
    random.Random(7).shuffle(order)
    members, english = {}, []
    for lang in XNLI_LANGUAGES:
        rows = (shared / "xnli" / f"dev-{lang}.tsv").read_text(encoding="utf-8").splitlines()[:N_XNLI]
        rows = [rows[i].replace("\tcontradiction", "\tcontradictory") for i in order]
        members[f"XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv"] = (
            "premise\thypo\tlabel\n" + "\n".join(rows) + "\n"
        ).encode()
        if lang == "en":
            english = [tuple(r.split("\t")) for r in rows]
    members["XNLI-MT-1.0/xnli/xnli.dev.en.tsv"] = b"unused\n"
    return _zip(members), english


@pytest.fixture(scope="module")
def files(shared_data) -> dict[str, bytes]:
    """URL path -> bytes of the three archives, and the expected counts under ``"expect"``."""
    snli = (shared_data / "nli" / "snli_1.0_dev.jsonl").read_bytes().splitlines(keepends=True)[:90]
    mnli = (shared_data / "nli" / "snli_1.0_test.jsonl").read_bytes().splitlines(keepends=True)[:60]
    xnli, english = _xnli_mt(shared_data)
    return {
        "/projects/snli/snli_1.0.zip": _zip({"snli_1.0/snli_1.0_train.jsonl": b"".join(snli), "__MACOSX/x": b""}),
        "/~sbowman/multinli/multinli_1.0.zip": _zip({"multinli_1.0/multinli_1.0_train.jsonl": b"".join(mnli)}),
        "/XNLI/XNLI-MT-1.0.zip": xnli,
        "expect": {"snli": _nli_triplets(snli), "mnli": _nli_triplets(mnli), "xnli": _both_labels(english)},
    }


def _nli_triplets(raw: list[bytes]) -> int:
    """Entailment hypotheses of premises that also have a contradiction (the paper's triplets)."""
    by_premise: dict[str, list[str]] = {}
    for line in raw:
        obj = json.loads(line)
        by_premise.setdefault(obj["sentence1"].strip(), []).append(obj["gold_label"])
    return sum(labels.count("entailment") for labels in by_premise.values() if "contradiction" in labels)


def _both_labels(rows: list[tuple[str, str, str]]) -> int:
    labels: dict[str, set[str]] = {}
    for premise, _, label in rows:
        labels.setdefault(premise, set()).add(label)
    return sum({"entailment", "contradictory"} <= s for s in labels.values())


class Server:
    """Serves ``files`` by URL path with Range support; counts bytes and records Range headers.
    ``truncate[path] = n``: the next response for path announces the full length, sends n bytes
    and closes. ``ranges=False``: Range is ignored (a 200 with the whole file)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.served, self.range_headers = files, 0, []
        self.truncate: dict[str, int] = {}
        self.ranges = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h) -> None:
        data = self.files.get(h.path)
        if not isinstance(data, bytes):
            h.send_error(404)
            return
        start = 0
        rng = h.headers.get("Range")
        self.range_headers.append(rng)
        if rng and self.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut = self.truncate.pop(h.path, None)
        body = body if cut is None else body[:cut]
        h.wfile.write(body)
        self.served += len(body)
        h.close_connection = True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(files):
    s = Server(files)
    yield s
    s.close()


def pinned(files: dict[str, bytes], **wrong: str) -> list[dict]:
    """The real training manifest with each archive's pin set to the test file's (``wrong``: a
    different sha256 for the archive of that file name)."""
    out = []
    for e in dl.manifest():
        if e["kind"] != "train":
            continue
        data = files[dl.urllib.parse.urlsplit(e["url"]).path]
        name = Path(e["dest"]).name
        out.append({**e, "sha256": wrong.get(name, hashlib.sha256(data).hexdigest()), "bytes": len(data)})
    return out


def test_download_converts_both_training_sets(files, server, tmp_path, capsys):
    dest = tmp_path / "data"
    assert dl.download(["en-nli", "xnli"], dest, base_url=server.url, entries=pinned(files)) == 0
    out = capsys.readouterr().out
    expect = files["expect"]
    jsonl = [json.loads(x) for x in (dest / "en-nli" / "train.jsonl").read_text().splitlines()]
    assert len(jsonl) == expect["snli"] + expect["mnli"] > 0
    assert {r["source_id"].split(":")[0] for r in jsonl} == {"snli", "mnli"}
    assert all(r["anchor"] and r["positive"] and r["negative"] for r in jsonl)
    assert sorted(p.name for p in (dest / "xnli").glob("*.tsv")) == sorted(
        f"multinli.train.{lang}.tsv" for lang in XNLI_LANGUAGES
    )
    triplets = expect["xnli"] * len(XNLI_LANGUAGES)
    assert f"xnli: {triplets} cross-lingual triplets ({expect['xnli']} premises" in out
    # The shipped reader gives that many mSimCSE triplets from the downloaded folder.
    cfg = DataConfig(format="xnli", paths=[str(dest / "xnli")], split="train", cross_lingual=True)
    rows = read_triplets(cfg, seed=0).rows
    assert len(rows) == triplets
    assert len({r["positive"] for r in rows}) > expect["xnli"] * 2  # hypotheses drawn in many languages
    # A second run downloads nothing and converts nothing.
    served = server.served
    assert dl.download(["en-nli", "xnli"], dest, base_url=server.url, entries=pinned(files)) == 0
    assert server.served == served and "already there" in capsys.readouterr().out


def test_xnli_mt_groups_by_premise_not_by_neighbour(files, tmp_path):
    """Negative control for the count: MultiNLI train is shuffled, so grouping consecutive lines
    (the XTREME dev layout's rule) finds far fewer examples than grouping by premise."""
    folder = tmp_path / "xtreme"
    folder.mkdir()
    with zipfile.ZipFile(io.BytesIO(files["/XNLI/XNLI-MT-1.0.zip"])) as z:
        for lang in XNLI_LANGUAGES:
            lines = z.read(f"XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv").decode().splitlines()[1:]
            (folder / f"train-{lang}.tsv").write_text("\n".join(lines).replace("contradictory", "contradiction"))
    consecutive = len(read_xnli(folder, split="train").rows) // len(XNLI_LANGUAGES)
    assert consecutive < files["expect"]["xnli"] // 2


def test_checksum_mismatch_exits_2_and_leaves_nothing(files, server, tmp_path, capsys):
    dest = tmp_path / "data"
    entries = pinned(files, **{"XNLI-MT-1.0.zip": "0" * 64})
    assert dl.download(["xnli"], dest, base_url=server.url, entries=entries) == 2
    err = capsys.readouterr().err
    assert str(dest / "downloads" / "XNLI-MT-1.0.zip") in err and "deleted" in err
    assert not list((dest / "downloads").iterdir()) and not (dest / "xnli").exists()
    # Control: the right pin over the same server succeeds.
    assert dl.download(["xnli"], dest, base_url=server.url, entries=pinned(files)) == 0
    assert (dest / "xnli" / "multinli.train.en.tsv").is_file()


@pytest.mark.parametrize("ranges", [True, False])
def test_truncated_transfer_is_resumed_with_range(files, server, tmp_path, capsys, ranges):
    dest, path = tmp_path / "data", "/XNLI/XNLI-MT-1.0.zip"
    size = len(files[path])
    server.truncate[path], server.ranges = size // 3, ranges
    assert dl.download(["xnli"], dest, base_url=server.url, entries=pinned(files)) == 1
    part = dest / "downloads" / "XNLI-MT-1.0.zip.part"
    assert f"got {size // 3} of {size} bytes" in capsys.readouterr().err
    assert part.stat().st_size == size // 3 and not (dest / "downloads" / "XNLI-MT-1.0.zip").exists()
    before = server.served
    assert dl.download(["xnli"], dest, base_url=server.url, entries=pinned(files)) == 0
    assert server.range_headers[-1] == f"bytes={size // 3}-"
    # With Range honoured only the rest travels; a server that ignores it sends it all (control).
    assert server.served - before == (size - size // 3 if ranges else size)
    assert not part.exists() and (dest / "xnli" / "SOURCE.json").is_file()


def test_offline_message_names_each_file(files, server, tmp_path, capsys):
    from conftest import free_port

    dest, closed = tmp_path / "data", f"http://127.0.0.1:{free_port()}"
    assert dl.download(["xnli"], dest, base_url=closed, entries=pinned(files)) == 1
    err = capsys.readouterr().err
    assert "Offline?" in err and f"{dest / 'downloads' / 'XNLI-MT-1.0.zip'}  <-  {closed}/XNLI/XNLI-MT-1.0.zip" in err
    assert "rerun this command" in err and not (dest / "downloads" / "XNLI-MT-1.0.zip.part").exists()
    # Control: once the files are there, no network is needed.
    assert dl.download(["xnli"], dest, base_url=server.url, entries=pinned(files)) == 0
    assert dl.download(["xnli"], dest, base_url=closed, entries=pinned(files)) == 0


def test_cli_offline_with_the_real_manifest(tmp_path, capsys, monkeypatch):
    from conftest import free_port

    from mst5_dist.cli import main

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(dl.BASE_URL_ENV, closed)
    assert main(["data", "download", "en-nli", "--dest", str(tmp_path), "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'downloads' / 'snli_1.0.zip'}  <-  {closed}/projects/snli/snli_1.0.zip" in err
    assert f"{closed}/~sbowman/multinli/multinli_1.0.zip" in err
    assert main(["data", "download", "nope", "--dest", str(tmp_path)]) == 2  # control: unknown name


def test_unpinned_file_needs_trust_and_is_then_recorded(files, server, tmp_path, capsys):
    dest = tmp_path / "data"
    entries = [{**e, "sha256": None} if e["name"] == "xnli" else e for e in pinned(files)]
    assert dl.download(["xnli"], dest, base_url=server.url, entries=entries) == 2
    assert "--trust-unpinned" in capsys.readouterr().err and not (dest / "downloads").exists()
    assert dl.download(["xnli"], dest, base_url=server.url, entries=entries, trust_unpinned=True) == 0
    recorded = (dest / "downloads" / "XNLI-MT-1.0.zip.sha256").read_text().strip()
    assert recorded == hashlib.sha256(files["/XNLI/XNLI-MT-1.0.zip"]).hexdigest()


def test_shipped_configs_read_what_the_download_writes():
    for path in sorted((ROOT / "configs").glob("mt5-*-*.yaml")):
        data = yaml.safe_load(path.read_text())["data"]
        if path.stem.endswith("-xnli"):
            assert (data["format"], data["paths"], data["split"]) == (
                "xnli",
                [f"{dl.DEFAULT_TRAIN_DEST}/xnli"],
                "train",
            )
        elif path.stem.endswith("-en-nli"):
            assert (data["format"], data["paths"]) == ("jsonl", [f"{dl.DEFAULT_TRAIN_DEST}/en-nli/train.jsonl"])
        else:
            pytest.fail(f"{path}: neither an xnli nor an en-nli config")
