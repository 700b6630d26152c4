"""The one output-path layer (``mst5_dist.outputs``), issue 22 sections 2, 3 and 6 (``--output .``,
disk full): no output that is empty, the current folder or one of the command's inputs; no write
through a link; paths read from a folder's metadata stay inside it; one writer of an export, an
embedding file or an evaluation report; a full disk named in one line. Every refused command leaves
the files around its output byte-identical; each refusal stands beside a control that writes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CONFIG, mst5_cmd, tree_bytes

from mst5_dist import outputs
from mst5_dist.cli import main
from mst5_dist.errors import BadInput, exit_code
from mst5_dist.files import atomic_dir, atomic_write_bytes, fingerprint

FAST = ("train.progress_bar=false", "train.report_to=[]")


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


# ------------------------------------------------------------------ check_output: what an output may be


@pytest.mark.unit
@pytest.mark.parametrize(
    "out, inputs, may_hold, problem",
    [
        ("", [], [], "name a folder of its own"),
        (".", [], [], "the current folder"),
        ("./", [], [], "the current folder"),
        ("sub/..", [], [], "the current folder"),
        ("run", [("--model", "run")], [], "is the input --model run"),
        ("run", [("--model", "run/final")], [], "contains the input --model run/final"),
        ("run/final/x", [("--model", "run/final")], [], "lies inside the input --model run/final"),
        ("run", [], [("--config", "run/config.yaml")], None),  # a resumed run keeps its config inside
        ("run/config.yaml", [], [("--config", "run/config.yaml")], "is the input --config"),
        ("export", [("--model", "run/final"), ("data", "data.jsonl")], [], None),  # a folder of its own
        ("run/results.json", [("--model", "run/final")], [], None),  # beside the model, not in it
        ("new", [("--model", "hub-org/not-a-folder")], [], None),  # a hub name is no folder
    ],
)
def test_check_output(tmp_path, monkeypatch, out, inputs, may_hold, problem):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("x")
    (tmp_path / "data.jsonl").write_text("{}\n")
    if problem is None:
        assert outputs.check_output(out, "--output", inputs, may_hold=may_hold) == Path(out)
        return
    with pytest.raises(outputs.OutputError) as e:
        outputs.check_output(out, "--output", inputs, may_hold=may_hold)
    assert problem in str(e.value) and exit_code(e.value) == 2 and "\n" not in str(e.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    "rel, ok",
    [("onnx/model.onnx", True), ("model.onnx_data", True), ("../outside.onnx", False), ("/etc/passwd", False),
     ("onnx/../../x", False), ("", False), (None, False)],
)  # fmt: skip
def test_metadata_paths_stay_inside_their_folder(tmp_path, rel, ok):
    folder = tmp_path / "export"
    folder.mkdir()
    if ok:
        assert outputs.inside(folder, rel, "report") == folder / rel
    else:
        with pytest.raises(BadInput, match="leads outside"):
            outputs.inside(folder, rel, "report")


def test_a_link_inside_the_folder_is_refused(tmp_path):
    """A link that leads outside through a folder link is caught too (``onnx`` -> elsewhere)."""
    folder, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    (folder / "onnx").symlink_to(elsewhere)
    with pytest.raises(BadInput, match="leads outside"):
        outputs.inside(folder, "onnx/model.onnx", "report")


# ------------------------------------------------------------------ links where we write


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    return victim


WRITERS = {  # how each writer leaves a file: (write it, the bytes it then holds)
    "atomic write": (lambda path: atomic_write_bytes(path, b"new"), lambda: b"new"),
    "lock file": (lambda path: outputs.try_lock(path).close(), lambda: f"{os.getpid()}\n".encode()),
}


@pytest.mark.unit
@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("planted", ["link", "file"])
def test_no_writer_writes_through_a_link(tmp_path, writer, planted):
    """A link where we write (the atomic writers' target, a lock file) is refused naming it; the
    file it points to is unchanged. Control: a plain file there is written."""
    write, written = WRITERS[writer]
    victim, target = _outside(tmp_path), tmp_path / "out.json"
    target.symlink_to(victim) if planted == "link" else target.write_text("old")
    if planted == "link":
        with pytest.raises(outputs.OutputError, match=f"{target}: is a symbolic link"):
            write(target)
        assert target.is_symlink()
    else:
        write(target)
        assert target.read_bytes() == written()
    assert victim.read_text() == "the user's file\n"


@pytest.mark.unit
@pytest.mark.parametrize("where", ["out", "out.tmp", None])
def test_atomic_dir_refuses_a_link_at_the_output_or_its_temp(tmp_path, where):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    if where:
        (tmp_path / where).symlink_to(elsewhere)
    before = tree_bytes(elsewhere)

    def write():
        with atomic_dir(out) as tmp:
            tmp.mkdir()
            (tmp / "model.bin").write_bytes(b"m")

    if where:
        with pytest.raises(outputs.OutputError, match=f"{tmp_path / where}: is a symbolic link"):
            write()
    else:
        write()
        assert (out / "model.bin").read_bytes() == b"m"
    assert tree_bytes(elsewhere) == before


@pytest.mark.parametrize("planted", ["config.yaml", ".mst5.lock", "train_log.jsonl", None])
def test_train_does_not_write_through_a_link_in_its_output(tiny_base, tmp_path, planted):
    """Training into a folder holding a link (config.yaml, the lock, the log) leading outside: exit 2
    naming the link, the file outside unchanged. Control: no link, the run writes its config.yaml."""
    victim, out = _outside(tmp_path), tmp_path / "run"
    out.mkdir()
    if planted:
        (out / planted).symlink_to(victim)
    proc = run(mst5_cmd("train", "--config", TINY_CONFIG, f"model.name_or_path={tiny_base}",
                        f"train.output_dir={out}", *FAST, "train.max_steps=1"))  # fmt: skip
    if planted:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{out / planted}: is a symbolic link" in proc.stderr.strip().splitlines()[-1]
        assert not (out / "final").exists()
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (out / "config.yaml").is_file() and (out / "final").is_dir()
    assert victim.read_text() == "the user's file\n"


# ------------------------------------------------------------------ outputs that are inputs


def test_an_empty_output_dir_does_not_train_into_the_current_folder(tiny_base, tmp_path):
    """``train.output_dir=`` (an unset shell variable) from a folder holding the user's config."""
    config = tmp_path / "config.yaml"
    shutil.copy(TINY_CONFIG, config)
    before = tree_bytes(tmp_path)
    for value in ("", "."):
        proc = run(mst5_cmd("train", "--config", "config.yaml", f"model.name_or_path={tiny_base}",
                            f"train.output_dir={value}", *FAST), cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "train.output_dir" in proc.stderr.strip().splitlines()[-1]
        assert tree_bytes(tmp_path) == before


def _fake_run(tmp_path: Path, tiny_base: Path) -> Path:
    """A training output: final/ (the tiny base), a checkpoint, the log."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_base, run_dir / "final")
    (run_dir / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000001" / "trainer_state.json").write_text("{}")
    (run_dir / "train_log.jsonl").write_text('{"step": 1}\n')
    return run_dir


@pytest.mark.parametrize("output", ["run", "run/final", "run/final/onnx", "."])
def test_export_does_not_replace_the_run_it_reads(tiny_base, tmp_path, output):
    run_dir = _fake_run(tmp_path, tiny_base)
    before = tree_bytes(tmp_path)
    proc = run(mst5_cmd("export", "--model", "run", "--output", output, "--overwrite"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert f"--output {output}" in line and ("current folder" in line or "the input --model run" in line), line
    assert tree_bytes(tmp_path) == before and (run_dir / "final" / "config.json").is_file()


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv",
    [
        ["build-tiny", "--output", "."],
        ["embed", "--model", "{onnx}", "--input", "texts.txt", "--output", "."],
        ["embed", "--model", "{onnx}", "--input", "texts.txt", "--output", "{onnx}/emb.npy"],
        ["embed", "--model", "{onnx}", "--input", "texts.npy", "--output", "texts.npy"],
        ["eval", "--model", "{onnx}", "--data-dir", "data", "--output", "."],
        ["eval", "--model", "{onnx}", "--data-dir", "data", "--output", "{onnx}/results.json"],
        ["eval", "--model", "{onnx}", "--data-dir", "data", "--output", "data/results.json"],
        ["sweep", "{onnx}", "--metric", "stsb.en.spearman", "--output", "."],
        ["sweep", "{onnx}", "--metric", "stsb.en.spearman", "--output", "{onnx}/sweep"],
        ["import-adapter", "src", "--base", "{onnx}", "--output", "."],
        ["data", "download", "sts17", "--dest", "."],
        ["train-modular", "--config", "config.yaml", "train.output_dir="],
    ],
)
def test_every_command_refuses_the_current_folder_and_its_inputs(tiny_onnx, tmp_path, monkeypatch, capsys, argv):
    """In-process, from a folder holding the user's files: exit 2, one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    onnx = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, onnx)
    (tmp_path / "texts.txt").write_text("hello\n")
    (tmp_path / "texts.npy").write_text("hello\n")
    (tmp_path / "data").mkdir()
    shutil.copy(TINY_CONFIG, tmp_path / "config.yaml")
    before = tree_bytes(tmp_path)
    assert main([a.format(onnx=onnx) for a in argv]) == 2
    line = last_line(capsys)
    assert "--output" in line or "--dest" in line or "train.output_dir" in line, line
    assert "current folder" in line or "the input" in line or "name a folder of its own" in line, line
    assert tree_bytes(tmp_path) == before


# ------------------------------------------------------------------ paths read from an export's metadata


def _export_copy(tiny_onnx: Path, tmp_path: Path) -> Path:
    export = tmp_path / "export"
    shutil.copytree(tiny_onnx, export)
    (tmp_path / "texts.txt").write_text("hello\nworld\n")
    return export


def _set_report(export: Path, **fp32) -> None:
    report = json.loads((export / "export_report.json").read_text())
    report["variants"]["fp32"].update(fp32)
    (export / "export_report.json").write_text(json.dumps(report))


@pytest.mark.parametrize("where", ["absolute", "parent", None])
def test_embed_runs_no_graph_from_outside_the_export(tiny_onnx, tmp_path, where):
    """The report's graph path leads out of the export (to a copy of the same graph, so its sha256
    matches): exit 2 naming the report and the path. Control: the export as written embeds."""
    export = _export_copy(tiny_onnx, tmp_path)
    outside = tmp_path / "elsewhere" / "model.onnx"
    outside.parent.mkdir()
    shutil.copy(export / "onnx" / "model.onnx", outside)
    rel = {"absolute": str(outside), "parent": "../elsewhere/model.onnx", None: "onnx/model.onnx"}[where]
    _set_report(export, file=rel)
    proc = run(mst5_cmd("embed", "--model", str(export), "--input", str(tmp_path / "texts.txt"),
                        "--output", str(tmp_path / "emb.npy")))  # fmt: skip
    if where:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"mst5 embed: error: {export / 'export_report.json'}: fp32 file: path {rel!r} leads outside {export} "
            "(a folder's files must stay inside it)"
        ]
        assert not (tmp_path / "emb.npy").exists()
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / "emb.npy").is_file()


@pytest.mark.parametrize("location", ["../outside.bin", "../../outside.bin", "/tmp/outside.bin", "model.onnx_data"])
def test_external_data_outside_the_export_is_refused_by_us(tiny_onnx, tmp_path, location):
    """An initializer's external-data location outside the folder: exit 2 naming the graph and the
    location, not ONNX Runtime's traceback. Control: the same graph with its data beside it embeds."""
    import onnx

    export = _export_copy(tiny_onnx, tmp_path)
    graph = export / "onnx" / "model.onnx"
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, location="model.onnx_data", size_threshold=0)
    model = onnx.load(str(graph), load_external_data=False)
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                item.value = location
    onnx.save_model(model, str(graph))
    _set_report(export, fingerprint=fingerprint([graph, graph.with_name("model.onnx_data")]))
    proc = run(mst5_cmd("embed", "--model", str(export), "--input", str(tmp_path / "texts.txt"),
                        "--output", str(tmp_path / "emb.npy")))  # fmt: skip
    if location == "model.onnx_data":
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        lines[0].startswith(f"mst5 embed: error: {graph}: tensor '") and f"path {location!r} leads outside" in lines[0]
    )


# ------------------------------------------------------------------ one writer of an export, embedding, report

HOLD = """
import sys, time
from mst5_dist.outputs import claim
with claim(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(path: Path) -> subprocess.Popen:
    """A second real process holding ``path`` the way every writer does (``outputs.claim``)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_two_writers_of_one_export(tiny_base, tiny_onnx, tmp_path):
    """While another process writes OUT (export, embed, eval), a second writer is refused with exit 2
    naming the holder, and OUT is untouched. Control: once the holder is gone, the same embed writes."""
    out = tmp_path / "out"
    shutil.copytree(tiny_onnx, out)  # an export already there, which the first writer is replacing
    (tmp_path / "texts.txt").write_text("hello\n")
    (tmp_path / "data").mkdir()
    npy = tmp_path / "emb.npy"
    before = tree_bytes(tmp_path)
    commands = {
        out: mst5_cmd("export", "--model", str(tiny_base), "--output", str(out), "--overwrite"),
        npy: mst5_cmd("embed", "--model", str(tiny_onnx), "--input", str(tmp_path / "texts.txt"),
                      "--output", str(npy)),
        tmp_path / "results.json": mst5_cmd("eval", "--model", str(tiny_onnx), "--output",
                                            str(tmp_path / "results.json"), "--tasks", "stsb",
                                            "--data-dir", str(tmp_path / "data")),
    }  # fmt: skip
    for target, cmd in commands.items():
        holder = _hold(target)
        try:
            proc = run(cmd)
            assert proc.returncode == 2, proc.stderr[-2000:]
            line = proc.stderr.strip().splitlines()[-1]
            assert f"{target}: being written by another mst5 process (pid {holder.pid}" in line, line
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(30)
        snapshot = tree_bytes(tmp_path)
        assert {k: v for k, v in snapshot.items() if not k.endswith(".mst5.lock")} == before
    proc = run(commands[npy])  # the kernel released the killed holder's lock
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert npy.is_file()


# ------------------------------------------------------------------ disk full


def _disk_full(monkeypatch, module) -> None:
    """Every file the atomic writers open reports ENOSPC on write."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(module.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))


@pytest.mark.unit
def test_disk_full_while_writing_embeddings(tiny_onnx, tmp_path, monkeypatch, capsys):
    """Exit 2, one line naming the .npy; the old file is kept, no temp file is left. Control: with
    room on the disk the same command writes."""
    import mst5_dist.files

    (tmp_path / "texts.txt").write_text("hello\n")
    npy = tmp_path / "emb.npy"
    npy.write_bytes(b"old embeddings")
    argv = ["embed", "--model", str(tiny_onnx), "--input", str(tmp_path / "texts.txt"), "--output", str(npy)]
    with monkeypatch.context() as m:
        _disk_full(m, mst5_dist.files)
        assert main(argv) == 2
    assert last_line(capsys) == f"mst5 embed: error: {npy}: No space left on device while writing it (nothing was kept)"
    assert npy.read_bytes() == b"old embeddings" and sorted(p.name for p in tmp_path.iterdir()) == [
        "emb.npy",
        "texts.txt",
    ]
    assert main(argv) == 0 and npy.read_bytes() != b"old embeddings"


@pytest.mark.unit
def test_disk_full_while_writing_an_export(tiny_base, tiny_onnx, tmp_path, monkeypatch, capsys):
    """The export's folder fills the disk: exit 2 naming OUT, the old export unchanged, no OUT.tmp."""
    import mst5_dist.export.pipeline as pipeline

    out = tmp_path / "out"
    shutil.copytree(tiny_onnx, out)
    before = tree_bytes(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline.merge_mod, "save_merged", full)
    assert main(["export", "--model", str(tiny_base), "--output", str(out), "--overwrite"]) == 2
    assert (
        last_line(capsys) == f"mst5 export: error: {out}: No space left on device while writing it (nothing was kept)"
    )
    assert tree_bytes(tmp_path) == before
