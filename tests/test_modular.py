"""Modular sentence encoders: language modules, CLA adapters, routing, export, evaluation.

The end-to-end tests (marked slow) train en + de + ru (Cyrillic) + zh (Han) on real STS-B train
data from ../shared/data with the tiny mT5, through the `mst5 train-modular` CLI.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, launch, mst5_cmd, read_log

from mst5_dist import modular
from mst5_dist.config import Config, ConfigError, load_config
from mst5_dist.model import ModelError, SentenceEncoder
from mst5_dist.modular.config import load_modular_config
from mst5_dist.objectives import cla

LANGS = ["en", "de", "ru", "zh"]
TEXTS = {
    "en": ["A man is playing a guitar.", "A woman is slicing an onion.", "The cat sleeps."],
    "de": ["Ein Mann spielt Gitarre.", "Eine Frau schneidet eine Zwiebel.", "Die Katze schläft."],
    "ru": ["Мужчина играет на гитаре.", "Женщина режет лук.", "Кошка спит."],
    "zh": ["一个男人在弹吉他。", "一个女人在切洋葱。", "猫在睡觉。"],
}


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(mst5_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=900)


def _overrides(tiny_base: Path, shared_data: Path, out: Path) -> list[str]:
    return [
        f"model.name_or_path={tiny_base}",
        f"train.output_dir={out}",
        f"modular.stsb_dir={shared_data / 'stsb-multi-mt'}",
        "modular.parallel_max_rows=96",
        "train.batch_size=16",
        "train.max_steps=3",
        "train.save_every=0",
        f"data.cache_dir={out / 'arrow'}",
    ]


def _sha(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ units


@pytest.mark.unit
def test_cla_pairs_put_the_trained_side_where_the_coin_says():
    emb = torch.arange(6, dtype=torch.float32).reshape(3, 2).requires_grad_(True)
    pivot = -torch.ones(3, 2)
    flip = torch.tensor([True, False, True])
    anchors, positives = cla.cla_pairs(emb, pivot, flip)
    assert torch.equal(anchors[0], pivot[0]) and torch.equal(positives[0], emb[0].detach())
    assert torch.equal(anchors[1], emb[1].detach()) and torch.equal(positives[1], pivot[1])
    (anchors.sum() + 2 * positives.sum()).backward()
    # row 0 and 2 are positives (weight 2), row 1 the anchor (weight 1); pivot rows get nothing
    assert emb.grad[:, 0].tolist() == [2.0, 1.0, 2.0]


@pytest.mark.unit
def test_anchor_coin_is_fixed_per_row_and_balanced():
    coins = [cla.anchor_is_pivot(7, f"row{i}") for i in range(2000)]
    assert coins == [cla.anchor_is_pivot(7, f"row{i}") for i in range(2000)]
    assert 900 < sum(coins) < 1100
    assert coins != [cla.anchor_is_pivot(8, f"row{i}") for i in range(2000)]


@pytest.mark.unit
def test_language_and_parallel_rows_from_real_stsb(shared_data):
    stsb = shared_data / "stsb-multi-mt"
    rows = modular.language_rows(stsb, "ru", 4.0)
    from mst5_dist.evaluate.sts import read_stsb_csv

    gold = read_stsb_csv(stsb / "stsb-ru-train.csv")
    assert len(rows) == sum(s >= 4.0 for s in gold.scores)
    par = modular.parallel_rows(stsb, "zh", "en", None)
    en = read_stsb_csv(stsb / "stsb-en-train.csv")
    zh = read_stsb_csv(stsb / "stsb-zh-train.csv")
    assert len({r["positive"] for r in par}) == len(par)  # one row per distinct English sentence
    first = par[0]
    assert (first["anchor"], first["positive"]) == (zh.first[0], en.first[0])


@pytest.mark.unit
def test_parallel_rows_refuse_unaligned_translations(tmp_path):
    (tmp_path / "stsb-en-train.csv").write_text("a,b,4.0\nc,d,1.0\n", encoding="utf-8")
    (tmp_path / "stsb-de-train.csv").write_text("A,B,4.0\nC,D,2.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"stsb-de-train.csv:2: score 2.0 differs"):
        modular.parallel_rows(tmp_path, "de", "en", None)


@pytest.mark.unit
def test_plan_and_config_errors(tmp_path):
    cfg = load_modular_config(None, ["modular.languages=[en,de,ru]"])
    assert modular.plan(cfg) == [
        ("language", "en"),
        ("language", "de"),
        ("language", "ru"),
        ("cla", "de"),
        ("cla", "ru"),
    ]
    with pytest.raises(ConfigError, match="pivot_language 'en' must be one of"):
        modular.plan(load_modular_config(None, ["modular.languages=[de,ru]"]))
    with pytest.raises(ConfigError, match=r"modular\.languages is empty"):
        modular.plan(load_modular_config(None, []))
    with pytest.raises(ConfigError, match=r"needs loss\.pivot_model"):
        cla.check_config(load_config(None, ["loss.objective=cla"]))
    stage = modular.stage_config(cfg, tmp_path, "cla", "de")
    assert stage.model.merge_adapters == [str(tmp_path / "language" / "de" / "final")]
    assert stage.loss.pivot_model == str(tmp_path / "language" / "en" / "final")
    assert stage.loss.hard_negatives is False and stage.train.output_dir == str(tmp_path / "cla" / "de")
    assert type(stage) is Config  # a stage is a plain run: its saved config.yaml reruns as `mst5 train`


@pytest.mark.unit
def test_embedding_cache_keys_routed_rows_by_language_and_routing(tmp_path):
    from mst5_dist.evaluate.embedder import CachedEmbedder, EmbeddingCache, encode_routed

    class Routed:  # a language-routed embedder whose output shows which route served the rows
        routes_by_language, fingerprint, calls = True, "routed", 0

        def encode(self, texts, batch_size=64, *, lang=None, cross_lingual=False):
            self.calls += 1
            value = {"de": 1.0, "ru": 2.0}[lang] + (10.0 if cross_lingual else 0.0)
            return np.full((len(texts), 2), value, dtype=np.float32)

    inner = Routed()
    cached = CachedEmbedder(inner, EmbeddingCache(tmp_path))
    got = [
        encode_routed(cached, ["x"], 8, lang, cross)[0, 0]
        for lang, cross in [("de", False), ("de", True), ("ru", False)]
    ]
    assert got == [1.0, 11.0, 2.0] and inner.calls == 3
    assert encode_routed(cached, ["x"], 8, "de", True)[0, 0] == 11.0 and inner.calls == 3  # served from the cache


@pytest.mark.unit
def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"no modular\.json"):
        modular.ModularEncoder.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def modular_run(tiny_base, shared_data, tmp_path_factory):
    """Stage 1 (4 languages), a snapshot, then stage 2 (3 CLA adapters), as two CLI calls."""
    out = tmp_path_factory.mktemp("modular") / "run"
    args = ["--config", "configs/modular-tiny.yaml", *_overrides(tiny_base, shared_data, out)]
    first = _run("train-modular", *args, "--stages", "language")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((out / "modular.json").read_text())
    assert all(set(manifest["languages"][lang]) == {"language"} for lang in LANGS)
    before = {
        lang: SentenceEncoder.from_pretrained(out / "language" / lang / "final").encode(TEXTS[lang]) for lang in LANGS
    }
    hashes = {lang: _sha(out / "language" / lang / "final") for lang in LANGS}
    second = _run("train-modular", *args)  # both stages: stage 1 is found done and skipped
    assert second.returncode == 0, second.stderr[-3000:]
    return {"out": out, "before": before, "hashes": hashes, "log": second.stdout + second.stderr}


@pytest.mark.slow
def test_train_modular_end_to_end(modular_run):
    out = modular_run["out"]
    assert modular_run["log"].count("done already") == len(LANGS)
    manifest = json.loads((out / "modular.json").read_text())
    assert manifest["pivot_language"] == "en"
    assert manifest["languages"]["en"] == {"language": "language/en/final"}
    for lang in ["de", "ru", "zh"]:
        assert manifest["languages"][lang] == {"language": f"language/{lang}/final", "cla": f"cla/{lang}/final"}
        log = read_log(out / "cla" / lang)
        assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
        saved = load_config(out / "cla" / lang / "config.yaml")  # the stage reruns as a plain `mst5 train`
        assert saved.loss.objective == "cla" and saved.model.merge_adapters == [str(out / "language" / lang / "final")]
    # Stage 2 never touched a language module.
    assert {lang: _sha(out / "language" / lang / "final") for lang in LANGS} == modular_run["hashes"]


@pytest.mark.slow
def test_cla_changes_only_cross_lingual_embeddings(modular_run):
    model = modular.ModularEncoder.from_pretrained(modular_run["out"])
    for lang in LANGS:
        mono = model.encode(TEXTS[lang], lang, cross_lingual=False)
        assert torch.equal(mono, modular_run["before"][lang]), lang  # bit-identical after stage 2
        cross = model.encode(TEXTS[lang], lang, cross_lingual=True)
        if lang == "en":
            assert torch.equal(cross, mono)  # the pivot has no CLA adapter
        else:
            assert (cross - mono).abs().max() > 1e-3, lang
            # The routed sum of adapters equals the CLA run's own (merged-stack) model.
            alone = SentenceEncoder.from_pretrained(modular_run["out"] / "cla" / lang / "final").encode(TEXTS[lang])
            torch.testing.assert_close(cross, alone, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_mixed_language_batch_equals_per_language_encoding(modular_run):
    model = modular.ModularEncoder.from_pretrained(modular_run["out"])
    texts, langs = [], []
    for i in range(3):  # interleaved: en de ru zh en de ru zh ...
        for lang in LANGS:
            texts.append(TEXTS[lang][i])
            langs.append(lang)
    mixed = model.encode(texts, langs, batch_size=4)
    for lang in LANGS:
        alone = model.encode(TEXTS[lang], lang, batch_size=4)
        rows = [i for i, c in enumerate(langs) if c == lang]
        assert torch.equal(mixed[rows], alone), lang
    with pytest.raises(ModelError, match=r"unknown language 'fr' \(this modular model has: de, en, ru, zh\)"):
        model.encode(["Bonjour"], "fr")


@pytest.mark.slow
def test_modular_export_embed_and_eval_match_pytorch(modular_run, shared_data, tmp_path):
    out = modular_run["out"]
    onnx = tmp_path / "onnx"
    done = _run("export", "--model", str(out), "--output", str(onnx), "--monolingual")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((onnx / "manifest.json").read_text())
    assert manifest["languages"]["de"] == {"cross": "de", "mono": "mono/de"}
    assert manifest["languages"]["en"] == {"cross": "en", "mono": "en"}
    model = modular.ModularEncoder.from_pretrained(out)
    texts = tmp_path / "ru.txt"
    texts.write_text("\n".join(TEXTS["ru"]) + "\n", encoding="utf-8")
    embedded = _run(
        "embed", "--model", str(onnx), "--input", str(texts), "--output", str(tmp_path / "ru.npy"), "--lang", "ru"
    )
    assert embedded.returncode == 0, embedded.stderr
    ours = model.encode(TEXTS["ru"], "ru", cross_lingual=True).numpy()
    cos = (np.load(tmp_path / "ru.npy") * ours).sum(1)
    assert cos.min() >= 0.99999
    refused = _run("embed", "--model", str(onnx), "--input", str(texts), "--output", str(tmp_path / "x.npy"))
    assert refused.returncode == 2 and "pass --lang" in refused.stderr

    common = ["--data-dir", str(shared_data), "--tasks", "stsb,xstsb,tatoeba,langbias,rsim", "--limit", "120",
              "--stsb-langs", "en,de,ru,zh", "--tatoeba-langs", "de,ru,zh", "--rsim-langs", "de,ru,zh", "--no-progress"]  # fmt: skip
    res = {}
    for name, path in (("torch", out), ("onnx", onnx)):
        done = _run("eval", "--model", str(path), "--output", str(tmp_path / f"{name}.json"), *common)
        assert done.returncode == 0, done.stderr[-3000:]
        res[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"]
    t, o = res["torch"], res["onnx"]
    assert set(t["langbias"]["own_spearman"]) == {"en-de", "en-ru", "en-zh"}
    # RSIM recomputed here from the routed model's own embeddings (Pearson of the two cosine matrices)
    from mst5_dist.evaluate.tatoeba import read_tatoeba

    src, eng = (side[:120] for side in read_tatoeba(shared_data / "tatoeba", "de"))
    x = model.encode(src, "de", cross_lingual=True).numpy()
    y = model.encode(eng, "en", cross_lingual=True).numpy()
    x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    iu = np.triu_indices(len(x), k=1)
    assert abs(t["rsim"]["languages"]["de"] - np.corrcoef((x @ x.T)[iu], (y @ y.T)[iu])[0, 1]) < 1e-4
    # Spearman on a tiny random-init model: near-tied cosines may swap under 1e-7 float noise.
    for task in ("stsb", "xstsb"):
        for key in t[task]:
            assert abs(t[task][key]["spearman"] - o[task][key]["spearman"]) < 0.1, (task, key)
    for lang in ("de", "ru", "zh"):
        assert abs(t["tatoeba"]["languages"][lang]["mean"] - o["tatoeba"]["languages"][lang]["mean"]) < 1.0
    assert abs(t["langbias"]["bias"] - o["langbias"]["bias"]) < 0.1
    assert abs(t["rsim"]["mean"] - o["rsim"]["mean"]) < 1e-3


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_under_zero2_train_every_stage_like_one_process(tiny_base, shared_data, tmp_path):
    """`accelerate launch -m mst5_dist.modular`: three stage runs (en, de modules; de CLA) in one
    process per rank, each with its own Accelerator/DeepSpeed engine; losses equal one process's."""
    import sys

    args = ["--config", str(REPO / "configs" / "modular-tiny.yaml"), "modular.languages=[en,de]", "model.dropout=0.0"]
    single, double = tmp_path / "single", tmp_path / "zero2"
    one = subprocess.run(
        [sys.executable, "-m", "mst5_dist.modular", *args, *_overrides(tiny_base, shared_data, single)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("zero2", tmp_path, "-m", "mst5_dist.modular", *args, *_overrides(tiny_base, shared_data, double))
    assert two.returncode == 0, two.stderr[-3000:]
    for stage in ("language/en", "language/de", "cla/de"):
        ref, got = read_log(single / stage), read_log(double / stage)
        assert [r["world_size"] for r in got] == [2, 2, 2]
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-4), stage
    assert json.loads((double / "modular.json").read_text())["languages"]["de"]["cla"] == "cla/de/final"
