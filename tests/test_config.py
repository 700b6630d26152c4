import ast
import dataclasses
import itertools
from pathlib import Path

import pytest

from mst5_dist import config as config_module
from mst5_dist.config import Config, ConfigError, load_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "mt5-xxl-en-nli", "mt5-xxl-xnli", "xlm-r-large-msimcse"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.train.batch_size > 0


def test_paper_recipe_values():
    en = load_config(REPO / "configs" / "mt5-xxl-en-nli.yaml")
    xnli = load_config(REPO / "configs" / "mt5-xxl-xnli.yaml")
    for cfg in (en, xnli):
        assert cfg.model.name_or_path == "google/mt5-xxl"
        assert (cfg.lora.preset, cfg.lora.r, cfg.lora.alpha) == ("all-linear", 8, 32)
        assert (cfg.train.batch_size, cfg.train.epochs) == (128, 1)
    assert en.optim.lr == 5e-4 and xnli.optim.lr == 5e-5


def test_overrides_and_types():
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["optim.lr=1e-4", "train.max_steps=3", "data.paths=[a.jsonl]"])
    assert cfg.optim.lr == 1e-4 and cfg.train.max_steps == 3 and cfg.data.paths == ["a.jsonl"]
    assert load_config(None, ["train.max_steps=null"]).train.max_steps is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'"),
        ("nosuch.key=1", "unknown key 'nosuch'"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("lora.preset=everything", "lora.preset"),
        ("loss.hard_negatives=maybe", "loss.hard_negatives"),
        ("optim.lr", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_bad_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batchsize"):
        load_config(bad)


def test_every_field_has_a_docstring():
    """torchtitan style: the string literal under each field documents it."""
    tree = ast.parse(Path(config_module.__file__).read_text())
    documented: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in itertools.pairwise(body):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                    documented.setdefault(node.name, set()).add(a.target.id)
    for cls in [Config, *(f.type for f in dataclasses.fields(Config))]:
        cls = getattr(config_module, cls) if isinstance(cls, str) else cls
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields <= documented.get(cls.__name__, set()), (
            f"{cls.__name__}: {fields - documented.get(cls.__name__, set())}"
        )
