"""Reproducible installs: constraints.txt (the lock of tested versions) satisfies pyproject.toml, the
installed set is the locked one and consistent (`pip check`), the benchmark scripts import, the
transformers / peft pair works where sentence-transformers uses it, and (slow) a fresh virtualenv
installed the README's way resolves to exactly the lock."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from lockfile import LOCK, closure, lock_problems, project_requirements, range_problems, read_lock
from packaging.requirements import Requirement

BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def readme_pip_steps() -> list[list[str]]:
    """The `pip install` commands of the README's set-up line (its first bash block), as argv."""
    block = re.search(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    return [shlex.split(step) for step in block.split("&&") if step.strip().startswith("pip install")]


@pytest.mark.unit
def test_readme_and_ci_install_with_the_lock():
    steps = readme_pip_steps()
    assert steps == [["pip", "install", "torch==2.13.0"], ["pip", "install", "-c", LOCK.name, "-e", ".[dev]"]]
    ci = [shlex.split(line, comments=True) for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    ci_steps = [argv[2:] for argv in ci if argv[:4] == ["python", "-m", "pip", "install"]]
    assert ci_steps == steps


@pytest.mark.unit
def test_lock_satisfies_pyproject_ranges():
    pins = read_lock()
    assert range_problems(pins, project_requirements()) == []
    assert pins["torch"] == "2.13.0" and "transformers" in pins and "peft" in pins


@pytest.mark.unit
def test_lock_checker_bites():
    """Negative controls: the pair the registry serves today (transformers 5.24.0) falls outside
    the range, a range violation names the group, and an unpinned or drifted package is reported."""
    reqs = {"": [Requirement("transformers>=5.0,<5.24")], "dev": [Requirement("pytest>=8")]}
    assert range_problems({"transformers": "5.23.0", "pytest": "9.0.3"}, reqs) == []
    assert range_problems({"transformers": "5.24.0", "pytest": "7.4.0"}, reqs) == [
        "transformers==5.24.0 is outside pyproject.toml's transformers<5.24,>=5.0 (dependencies)",
        "pytest==7.4.0 is outside pyproject.toml's pytest>=8 (dev)",
    ]
    assert lock_problems({"peft": "0.21.2"}, {"peft": "0.21.2", "torch": "2.13.0+cpu"}) == [
        "torch (2.13.0+cpu) is needed but not pinned"
    ]
    assert lock_problems({"peft": "0.21.2", "torch": "2.13.0"}, {"peft": "0.22.0", "torch": "2.13.0+cpu"}) == [
        "peft 0.22.0 is installed, the lock pins 0.21.2"
    ]


@pytest.mark.unit
def test_installed_set_is_the_lock():
    """Everything the project and its dev + mlflow extras pull in is pinned, at the installed version."""
    assert lock_problems(read_lock(), closure()) == []


def test_pip_check_passes():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a script imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def unresolved_imports(path: Path) -> list[str]:
    """Imported modules that are neither installed nor a sibling script (benchmarks import each
    other from their own folder, which they put on ``sys.path``)."""
    return sorted(
        m
        for m in imported_modules(path)
        if not (path.parent / f"{m.split('.')[0]}.py").is_file() and importlib.util.find_spec(m) is None
    )


@pytest.mark.unit
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_script_imports(script, tmp_path):
    """The script loads as a module (its main does not run) and every module it imports anywhere,
    including the sentence-transformers worker's function-level imports, is installed."""
    assert unresolved_imports(script) == []
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


@pytest.mark.unit
def test_import_check_bites(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import json\n\ndef f():\n    from no_such_module_xyz import thing\n")
    assert unresolved_imports(script) == ["no_such_module_xyz"]


@pytest.mark.unit
def test_transformers_peft_integration_accepts_installed_peft(minilm_path, monkeypatch):
    """What benchmarks/train_throughput.py's sentence-transformers worker does: `add_adapter` on a
    SentenceTransformer. transformers 5.24 + peft 0.21.2 raised here; the control raises the
    same error by giving the installed transformers 5.24's minimum."""
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer
    from transformers.integrations import peft as hf_peft

    def lora():
        return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], bias="none")

    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.add_adapter(lora())
    assert any("lora_A" in n for n, _ in model.named_parameters())
    monkeypatch.setattr(hf_peft, "MIN_PEFT_VERSION", "0.22.0")
    with pytest.raises(ValueError, match="not compatible"):
        SentenceTransformer(str(minilm_path), device="cpu").add_adapter(lora())


@pytest.mark.slow
def test_fresh_virtualenv_installs_exactly_the_lock(tmp_path):
    """The README's set-up in a new virtualenv (torch first, then the project with the lock), from
    a copy of the source: `pip check` passes, the installed set is the lock, and this file's fast
    tests pass inside it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", LOCK.name):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mst5_dist", src / "mst5_dist", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args, **kw):
        proc = subprocess.run([py, *args], capture_output=True, text=True, env=env, **kw)
        assert proc.returncode == 0, " ".join(args) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    for step in readme_pip_steps():  # exactly the README's set-up, through the fresh interpreter
        run("-m", *step, "-q", cwd=src)
    run("-m", "pip", "check")
    # This file's lock and import tests, run by the fresh interpreter against the fresh install.
    run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_lock.py"), "-m", "not slow",
        "-k", "installed_set or pip_check or benchmark or peft_integration", cwd=src)  # fmt: skip
