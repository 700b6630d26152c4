import ast
import dataclasses
import itertools
import logging
from pathlib import Path

import pytest
import yaml

from mst5_dist import config as config_module
from mst5_dist.config import Config, ConfigError, config_keys, kinds, load_config, to_dict, undeclared_keys
from mst5_dist.modular import config as modular_config
from mst5_dist.modular.config import ModularRunConfig, load_modular_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "mt5-xxl-en-nli", "mt5-xxl-xnli", "xlm-r-large-msimcse"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = (load_modular_config if path.stem.startswith("modular") else load_config)(path)
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


@pytest.mark.parametrize("module", [config_module, modular_config], ids=lambda m: m.__name__)
def test_every_field_has_a_docstring(module):
    """torchtitan style: the string literal under each field documents it."""
    tree = ast.parse(Path(module.__file__).read_text())
    documented: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in itertools.pairwise(body):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                    documented.setdefault(node.name, set()).add(a.target.id)
    classes = [c for c in vars(module).values() if dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
    assert len(classes) >= 2
    for cls in classes:
        own = vars(cls).get("__annotations__", {})  # fields declared in this class body, not inherited
        fields = {f.name for f in dataclasses.fields(cls) if f.name in own}
        assert fields <= documented.get(cls.__name__, set()), (
            f"{cls.__name__}: {fields - documented.get(cls.__name__, set())}"
        )


# ---------------------------------------------------------------- what each field enters: resume, cache

RESUME = [  # the hand list checkpoint.RESUME_KEYS held, plus loss.pivot_model (it changes the CLA targets)
    "model.name_or_path", "model.max_seq_length", "model.merge_adapters", "model.pooling", "model.dtype",
    "model.tokenizer_use_fast", "lora.preset", "lora.r", "lora.alpha", "lora.target_modules", "data.format",
    "data.paths", "data.languages", "data.split", "data.cross_lingual", "data.max_rows", "data.length_grouping",
    "data.bucket_batches", "data.skip_bad_rows", "loss.objective", "loss.hard_negatives", "train.batch_size",
    "train.seed", "train.grad_accum_steps", "loss.pivot_model", "loss.symmetric", "loss.matryoshka_dims",
    "loss.matryoshka_weights",
]  # fmt: skip
# What data.cache._cache_key hashes from the config (train.seed enters it only for XNLI, elsewhere).
CACHE = ["data.format", "data.paths", "data.languages", "data.split", "data.cross_lingual", "data.skip_bad_rows",
         "data.max_rows"]  # fmt: skip


def test_every_field_declares_what_it_enters():
    assert undeclared_keys(Config) == [] and undeclared_keys(ModularRunConfig) == []
    assert sorted(config_keys("resume")) == sorted(RESUME)
    assert config_keys("cache") == CACHE  # in the order _cache_key hashes them
    assert config_keys("resume", ModularRunConfig) == config_keys("resume")  # modular.* reaches no fingerprint
    from mst5_dist.training.checkpoint import RESUME_KEYS

    assert [".".join(k) for k in RESUME_KEYS] == config_keys("resume")


def test_a_field_that_declares_nothing_is_found():
    """Negative control: a section with one plain field beside declared ones."""

    @dataclasses.dataclass
    class Section:
        declared: int = dataclasses.field(default=1, metadata=kinds(resume=True, cache=False))
        plain: int = 2

    @dataclasses.dataclass
    class Synthetic(Config):
        extra: Section = dataclasses.field(default_factory=Section, metadata=config_module.SECTION)

    assert undeclared_keys(Synthetic) == ["extra.plain"]
    with pytest.raises(TypeError, match=r"Synthetic: fields that declare neither resume nor cache: extra\.plain"):
        config_keys("resume", Synthetic)


# ---------------------------------------------------------------- retired keys and sections


def _older_run_config(tmp_path: Path, **sections) -> Path:
    """config.yaml as a run before this layout saved it: every section, data.streaming, modular:."""
    raw = to_dict(Config())
    raw["data"]["streaming"] = False
    raw["modular"] = {"languages": [], "pivot_language": "en", "stsb_dir": "../shared/data/stsb-multi-mt",
                      "min_score": 4.0, "parallel_max_rows": None, "language_overrides": [], "cla_overrides": []}  # fmt: skip
    for name, values in sections.items():
        raw[name].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_a_config_saved_by_an_older_run_still_loads(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mst5_dist.config"):
        cfg = load_config(_older_run_config(tmp_path))
    assert cfg == Config() and type(cfg) is Config
    assert "data.streaming=false has no effect and is ignored" in caplog.text
    assert "modular: the section an older run saved (default values only) is ignored" in caplog.text


def test_data_streaming_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "mine.yaml"
    path.write_text("data:\n  streaming: true\n  max_rows: 5\n")
    with caplog.at_level(logging.WARNING, logger="mst5_dist.config"):
        cfg = load_config(path)
        by_override = load_config(None, ["data.streaming=true"])
    assert cfg.data.max_rows == 5 and not hasattr(cfg.data, "streaming") and by_override == Config()
    assert caplog.text.count("data.streaming=true has no effect and is ignored") == 2


def test_a_modular_section_is_refused_by_train_naming_the_key(tmp_path):
    path = _older_run_config(tmp_path, modular={"languages": ["en", "de"]})
    with pytest.raises(ConfigError, match=r"config\.yaml: modular\.languages: .*mst5 train-modular"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'modular\.min_score=3': modular\.min_score: .*train-modular"):
        load_config(None, ["modular.min_score=3"])
    with pytest.raises(ConfigError, match=r"modular\.nosuch: .*train-modular"):
        load_config(None, ["modular.nosuch=1"])


def test_train_modular_reads_its_own_config(tmp_path):
    cfg = load_modular_config(REPO / "configs" / "modular-tiny.yaml", ["modular.languages=[en,de]", "optim.lr=1e-4"])
    assert isinstance(cfg, ModularRunConfig) and cfg.modular.languages == ["en", "de"] and cfg.optim.lr == 1e-4
    run = cfg.run_config()
    assert type(run) is Config and "modular" not in to_dict(run) and run.optim == cfg.optim
    with pytest.raises(ConfigError, match=r"command line: override 'modular\.parallel_max_rows=0': .*must be >= 1"):
        load_modular_config(None, ["modular.parallel_max_rows=0"])
    with pytest.raises(ConfigError, match=r"unknown key 'modular\.nosuch'"):
        load_modular_config(None, ["modular.nosuch=1"])
