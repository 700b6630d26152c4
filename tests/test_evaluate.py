"""Evaluation suite: hand-computed metrics, real-data readers, agreement with mteb / scipy /
sentence-transformers, malformed files, and `mst5 eval` end to end."""

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import mst5_cmd
from scipy.stats import pearsonr, spearmanr

from mst5_dist.evaluate import alignment, bucc, sts, tatoeba
from mst5_dist.evaluate.embedder import CachedEmbedder, Embedder, EmbeddingCache, TorchEmbedder
from mst5_dist.evaluate.loader import load_embedder
from mst5_dist.evaluate.sts import EvalDataError
from mst5_dist.files import fingerprint as folder_fingerprint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Several test files share 2 cores: one torch thread is 4x faster here than two fighting threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TableEmbedder:
    """Embeds from a fixed text -> vector table; counts calls (cache tests)."""

    def __init__(self, table, fingerprint="table"):
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}
        self.fingerprint = fingerprint
        self.calls = 0

    def encode(self, texts, batch_size=64):
        self.calls += 1
        return np.stack([self.table[t] for t in texts])


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_embedder(minilm_path, device="cpu", progress=False)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def angle(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# ---------------------------------------------------------------- metrics by hand


@pytest.mark.unit
def test_top1_accuracy_by_hand():
    x = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    y = np.array([[1, 0.1], [0.2, 1], [0, 1]], dtype=np.float32)
    # x0 -> y0 (right); x1 -> y2 (cos 1 beats 0.98: wrong); x2 -> y1 (0.832 > 0.774 > 0.707: wrong)
    assert tatoeba.top1_accuracy(x, y) == pytest.approx(1 / 3)


@pytest.mark.unit
def test_ratio_margin_fixes_a_hub_by_hand():
    # y0 at 5 deg is the nearest neighbour of both x0 (0 deg) and x1 (20 deg); y1 sits at 40 deg.
    x, y = np.array([angle(0), angle(20)]), np.array([angle(5), angle(40)])
    assert tatoeba.top1_accuracy(x, y) == 0.5  # cosine: x1 -> y0 (cos 15 deg > cos 20 deg)
    # k=2 means: x0 .881, x1 .953, y0 .981, y1 .853; x1: y0 .966/.967 = .999 < y1 .940/.903 = 1.041
    ind, scores, fwd_mean, bwd_mean = tatoeba.ratio_margin_scores(x, y, k=2)
    assert fwd_mean == pytest.approx([0.8810, 0.9528], abs=1e-3)
    assert bwd_mean == pytest.approx([0.9811, 0.8529], abs=1e-3)
    assert scores[1][list(ind[1]).index(1)] == pytest.approx(0.9397 / ((0.9528 + 0.8529) / 2), abs=1e-3)
    assert tatoeba.margin_error_rate(x, y, k=2) == 0.0
    # k=1 leaves one candidate per query, so the margin cannot change the answer (LASER's candidates).
    assert tatoeba.margin_error_rate(x, y, k=1) == 50.0


@pytest.mark.unit
def test_margin_matches_brute_force_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(25, 8))
    k = 4
    xn, yn = unit(x), unit(y)
    cos = xn @ yn.T
    mx = np.sort(cos, axis=1)[:, -k:].mean(axis=1)
    my = np.sort(cos.T, axis=1)[:, -k:].mean(axis=1)
    ind, scores, _, _ = tatoeba.ratio_margin_scores(x, y, k)
    for i in range(len(x)):
        for c, j in enumerate(ind[i]):
            assert scores[i, c] == pytest.approx(cos[i, j] / ((mx[i] + my[j]) / 2), rel=1e-5)
        assert set(ind[i]) == set(np.argsort(-cos[i])[:k])


@pytest.mark.unit
def test_bucc_threshold_and_prf_by_hand():
    gold = {("a", "1"), ("c", "3"), ("d", "4")}
    cands = {("a", "1"): 0.9, ("b", "2"): 0.8, ("c", "3"): 0.7, ("e", "5"): 0.6}
    # cuts: 1 -> P 1, R 1/3, F1 .5; 2 -> .5, 1/3, .4; 3 -> 2/3, 2/3, .667 (best); 4 -> .5, 2/3, .571
    assert bucc.best_threshold(cands, gold) == pytest.approx(0.65)  # halfway between .7 and .6
    res = bucc.prf(cands, gold, 0.65)
    assert (res["precision"], res["recall"], res["f1"]) == pytest.approx((200 / 3, 200 / 3, 200 / 3))
    del cands[("e", "5")]  # the best cut is now the last candidate: its own score
    assert bucc.best_threshold(cands, gold) == pytest.approx(0.7)


@pytest.mark.unit
def test_bucc_mining_recovers_a_permutation_one_to_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 16))
    perm = rng.permutation(12)
    y = x[perm] + 0.05 * rng.normal(size=(12, 16))
    mined = bucc.mine(x, y, k=4)
    assert {(s, t) for s, t, _ in mined} == {(int(perm[t]), t) for t in range(12)}
    assert len({s for s, _, _ in mined}) == len(mined)  # one-to-one
    assert [m[2] for m in mined] == sorted((m[2] for m in mined), reverse=True)


@pytest.mark.unit
def test_sts_scores_by_hand():
    table = {"a": [1, 0], "b": [1, 1], "c": [0, 1], "d": [1, 0.2], "z": [1, 0]}
    pairs = sts.StsPairs(["a", "b", "c", "d"], ["z", "z", "z", "z"], [5.0, 3.0, 0.0, 4.0])
    res = sts.sts_scores(TableEmbedder(table), pairs)
    assert res["spearman"] == pytest.approx(100.0)  # cosines 1, .707, 0, .981 rank like the gold
    assert res["pearson"] == pytest.approx(100 * pearsonr([1, 0.70711, 0, 0.98058], [5, 3, 0, 4]).statistic, abs=1e-3)


@pytest.mark.unit
def test_language_bias_by_hand():
    d1 = (np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]))
    d2 = (np.array([0.6, 0.7, 0.8]), np.array([1.0, 2.0, 3.0]))
    res = alignment.language_bias({"en-de": d1, "en-fr": d2})
    # Each ranks perfectly (100); pooled: ranks 1..6 vs gold ranks 1.5 3.5 5.5 1.5 3.5 5.5 ->
    # r = 8 / sqrt(17.5 * 16) = 0.47809
    assert res["own_spearman"] == {"en-de": pytest.approx(100), "en-fr": pytest.approx(100)}
    assert res["pooled_spearman"] == pytest.approx(100 * 8 / math.sqrt(17.5 * 16))
    assert res["bias"] == pytest.approx(100 - 100 * 8 / math.sqrt(17.5 * 16))


@pytest.mark.unit
def test_rsim_by_hand_and_against_scipy_loops():
    x = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)  # pair cosines (01, 02, 12) = 0, .707, .707
    y = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # pair cosines = 1, 0, 0
    assert alignment.rsim(x, y) == pytest.approx(-1.0)
    rot = np.array([[0.6, -0.8], [0.8, 0.6]], dtype=np.float32)
    assert alignment.rsim(x, x @ rot) == pytest.approx(1.0)  # a rotation keeps every cosine
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    an, bn = unit(a), unit(b)
    ca = [an[i] @ an[j] for i in range(20) for j in range(i + 1, 20)]
    cb = [bn[i] @ bn[j] for i in range(20) for j in range(i + 1, 20)]
    assert alignment.rsim(a, b) == pytest.approx(pearsonr(ca, cb).statistic, abs=1e-5)


# ---------------------------------------------------------------- embedder and cache


@pytest.mark.unit
def test_embedding_cache_hits_and_is_keyed_by_model_and_texts(tmp_path):
    inner = TableEmbedder({"a": [1, 0], "b": [0, 1]})
    cached = CachedEmbedder(inner, EmbeddingCache(tmp_path))
    assert isinstance(cached, Embedder)
    first = cached.encode(["a", "b"])
    again = cached.encode(["a", "b"])
    assert inner.calls == 1 and np.array_equal(first, again) and again.dtype == np.float32
    cached.encode(["b", "a"])  # other texts (order matters) -> embedded again
    assert inner.calls == 2
    CachedEmbedder(TableEmbedder(inner.table, fingerprint="other"), cached.cache).encode(["a", "b"])
    assert cached.cache.misses == 3 and cached.cache.hits == 1
    files = list(tmp_path.rglob("*"))
    assert not [f for f in files if f.suffix == ".tmp"], "atomic write leaves no temp file"
    assert len([f for f in files if f.suffix == ".npy"]) == 3


@pytest.mark.unit
def test_torch_embedder_sorted_batches_keep_order_and_final_dir(tiny_base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_base, run / "final")
    emb = load_embedder(run, device="cpu", progress=False)  # a training output -> its final/
    assert isinstance(emb, TorchEmbedder)
    texts = ["short", "a much longer sentence with many more words in it", "mid length one", "x"] * 5
    out = emb.encode(texts, batch_size=3)
    ref = emb.encoder.encode(texts, batch_size=64).numpy()
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5)
    naive = TorchEmbedder(emb.encoder, "x", sort_by_length=False, progress=False)
    np.testing.assert_allclose(naive.encode(texts, batch_size=3), out, atol=1e-5)
    assert emb.last_stats["padded_tokens"] < naive.last_stats["padded_tokens"]
    # The fingerprint depends on the bytes, not on where the folder lives.
    assert folder_fingerprint(run / "final") == folder_fingerprint(tiny_base)
    assert emb.fingerprint == load_embedder(tiny_base, device="cpu", progress=False).fingerprint


# ---------------------------------------------------------------- real data readers


@pytest.mark.unit
def test_tatoeba_real_files_and_language_codes(shared_data):
    d = shared_data / "tatoeba"
    expected = {"sw": 390, "th": 548, "jv": 205, "ka": 746, "kk": 575, "ml": 687, "ta": 307, "te": 234, "am": 168}
    langs = tatoeba.expand_languages("all")
    assert len(langs) == 38 and set(tatoeba.TATOEBA_14) <= set(tatoeba.TATOEBA_36)
    for lang in langs:
        src, eng = tatoeba.read_tatoeba(d, lang)
        assert len(src) == len(eng) == expected.get(lang, 1000), lang
    assert tatoeba.laser_code("zh") == "cmn" and tatoeba.laser_code("fa") == "pes" and tatoeba.iso_code("swh") == "sw"
    assert tatoeba.expand_languages("deu,de,table2")[:3] == ["de", "hi", "fr"]


@pytest.mark.unit
def test_sts17_real_tracks_and_column_order(shared_data):
    d = shared_data / "sts17"
    for short in sts.STS17_NAMES:
        pairs = sts.read_sts17(d, short)
        assert len(pairs) == 250 and all(0 <= s <= 5 for s in pairs.scores)

    def arabic(s):
        return any("\u0600" <= ch <= "\u06ff" for ch in s)

    ar_en = sts.read_sts17(d, "ar-en")  # the file has English first; we put Arabic first
    assert (ar_en.lang1, ar_en.lang2) == ("ar", "en")
    assert all(arabic(a) and not arabic(b) for a, b in zip(ar_en.first[:20], ar_en.second[:20]))
    tr_en = sts.read_sts17(d, "tr-en")  # 500 input lines, 250 gold: the first 250 pairs
    assert tr_en.first[0].startswith("Çamurda") and tr_en.second[0].startswith("A silhouette")


@pytest.mark.unit
def test_other_sts_readers_on_real_data(shared_data):
    assert len(sts.read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-en-test.csv")) == 1379
    assert len(sts.read_jsts(shared_data / "jsts" / "valid-v1.3.json")) == 1457
    kor = sts.read_korsts(shared_data / "korean" / "sts-test.tsv")
    assert len(kor) == 1379 and kor.lang1 == "ko"
    sick = sts.read_sick(shared_data / "sick" / "SICK_test_annotated.txt")
    assert len(sick) == 4927 and all(1 <= s <= 5 for s in sick.scores)
    x = sts.crosslingual_stsb(shared_data / "stsb-multi-mt", "en", "de", "dev")
    en = sts.read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-en-dev.csv")
    de = sts.read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-de-dev.csv")
    assert x.first == en.first and x.second == de.second and x.scores == en.scores


@pytest.mark.unit
def test_bucc_real_sample(shared_data):
    data = bucc.read_bucc(shared_data / "bucc2018", "zh", "dev")
    assert (len(data.src_ids), len(data.trg_ids), len(data.gold)) == (8624, 13589, 257)
    small = bucc.subsample(data, 300)
    assert data.gold == small.gold and len(small.src_ids) <= 300 + 257


# ---------------------------------------------------------------- independent implementations


@pytest.mark.unit
def test_minilm_stsb_matches_sentence_transformers(minilm, minilm_path, shared_data):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    # The first 600 of the 1,379 test pairs keep this test near 30 s on 2 shared cores; the full test
    # set gives the same agreement (see the closing report's command).
    pairs = sts.read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-en-test.csv").head(600)
    ours = sts.sts_scores(minilm, pairs, batch_size=64)["spearman"]
    st = SentenceTransformer(str(minilm_path), device="cpu")
    evaluator = EmbeddingSimilarityEvaluator(
        pairs.first, pairs.second, pairs.scores, batch_size=64, name="stsb", write_csv=False
    )
    theirs = evaluator(st)["stsb_spearman_cosine"] * 100
    assert ours == pytest.approx(theirs, abs=0.01)
    assert ours > 75  # all-MiniLM-L6-v2 is a real STS model (published STS-B test ~82)


@pytest.mark.unit
def test_agrees_with_mteb_on_the_same_embeddings(minilm, shared_data):
    from mteb._evaluators.text.bitext_mining_evaluator import BitextMiningEvaluator
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining
    from sklearn.metrics.pairwise import paired_cosine_distances, paired_euclidean_distances, paired_manhattan_distances

    # STS: mteb's scorer (cosine Spearman) on our embeddings of 300 STS17 es-es pairs.
    pairs = sts.read_sts17(shared_data / "sts17", "es-es").head(300)
    a, b = (e.astype(np.float64) for e in sts.embed_pairs(minilm, pairs))  # both sides compute in float64
    mteb_scores = {
        "cosine_scores": (1 - paired_cosine_distances(a, b)).tolist(),
        "manhattan_distances": (-paired_manhattan_distances(a, b)).tolist(),
        "euclidean_distances": (-paired_euclidean_distances(a, b)).tolist(),
        "similarity_scores": None,
    }
    mteb_metrics = AbsTaskSTS._calculate_scores(None, mteb_scores, pairs.scores)
    np.testing.assert_allclose(sts.paired_cosine(a, b), mteb_scores["cosine_scores"], atol=1e-12)
    # Not closer than 0.01: pairs of identical sentences have cosine 1 up to the last bit, and the two
    # formulas (dot / norms vs 1 - ||a/|a| - b/|b|||^2 / 2) round those ties differently for the ranking.
    assert sts.spearman_x100(a, b, pairs.scores) == pytest.approx(mteb_metrics["cosine_spearman"] * 100, abs=0.01)

    # Bitext mining accuracy xx->en: mteb's nearest-neighbour search + metric on the same vectors.
    src, eng = tatoeba.read_tatoeba(shared_data / "tatoeba", "de")
    x, y = minilm.encode(src[:300]), minilm.encode(eng[:300])

    class Cos:
        @staticmethod
        def similarity(q, c):
            return unit(q) @ unit(c).T

    nn = BitextMiningEvaluator._similarity_search(None, x, y, Cos())
    mteb_acc = AbsTaskBitextMining._compute_metrics(None, nn, [(i, i) for i in range(300)])["accuracy"]
    ours = tatoeba.top1_accuracy(x, y)
    assert 0.05 < ours < 1.0 and ours == pytest.approx(mteb_acc, abs=1e-9)  # English-only model: ~12% on de

    # scipy for the correlations on real vectors: RSIM and language bias.
    xn, yn = unit(x[:60]), unit(y[:60])
    iu = np.triu_indices(60, k=1)
    assert alignment.rsim(x[:60], y[:60]) == pytest.approx(
        pearsonr((xn @ xn.T)[iu], (yn @ yn.T)[iu]).statistic, abs=1e-5
    )
    cos = sts.paired_cosine(a, b)
    bias = alignment.language_bias({"p": (cos[:150], pairs.scores[:150]), "q": (cos[150:], pairs.scores[150:])})
    assert bias["pooled_spearman"] == pytest.approx(100 * spearmanr(cos, pairs.scores).statistic)


# ---------------------------------------------------------------- malformed files


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("STS.gs.track5.en-en.txt", "1.0\nhigh\n", r"STS\.gs\.track5\.en-en\.txt:2: score 'high'"),
        ("STS.input.track5.en-en.txt", "a\tb\nc d\n", r"STS\.input\.track5\.en-en\.txt:2: expected 2 tab"),
    ],
)
def test_malformed_sts17(tmp_path, name, content, message):
    (tmp_path / "STS.input.track5.en-en.txt").write_text("a\tb\nc\td\n")
    (tmp_path / "STS.gs.track5.en-en.txt").write_text("1.0\n2.0\n")
    (tmp_path / name).write_text(content)
    with pytest.raises(EvalDataError, match=message):
        sts.read_sts17(tmp_path, "en-en")


@pytest.mark.unit
def test_sts17_count_mismatch_names_files(tmp_path):
    (tmp_path / "STS.input.track5.en-en.txt").write_text("a\tb\nc\td\ne\tf\n")
    (tmp_path / "STS.gs.track5.en-en.txt").write_text("1.0\n2.0\n")
    with pytest.raises(EvalDataError, match=r"has 3 pairs but .*STS\.gs.* has 2 scores: line 3 of .*STS\.input"):
        sts.read_sts17(tmp_path, "en-en")


@pytest.mark.unit
def test_tatoeba_mismatched_sides_name_file_and_line(tmp_path):
    (tmp_path / "tatoeba.deu-eng.deu").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("one\ntwo\n")
    with pytest.raises(EvalDataError, match=r"tatoeba\.deu-eng\.deu has 3 lines .* line 3 of .*tatoeba\.deu-eng\.deu"):
        tatoeba.read_tatoeba(tmp_path, "de")


@pytest.mark.unit
@pytest.mark.parametrize(
    "reader, name, content, message",
    [
        (sts.read_korsts, "k.tsv", "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\ng\tf\ty\t1\t2.5\ts1\n",
         r"k\.tsv:2: expected 7 tab-separated columns, got 6"),
        (sts.read_korsts, "k.tsv", "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\ng\tf\ty\t1\tx\ts1\ts2\n",
         r"k\.tsv:2: score 'x'"),
        (sts.read_sick, "s.txt", "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\ta\tb\t?\tN\n",
         r"s\.txt:2: score '\?'"),
        (sts.read_jsts, "j.json", '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a", "label": 2}\n',
         r"j\.json:2: field 'sentence2' missing"),
        (sts.read_jsts, "j.json", '{"sentence1": "a", "sentence2": "b", "label": "n/a"}\n', r"j\.json:1: score 'n/a'"),
    ],
)  # fmt: skip
def test_malformed_readers_name_file_and_line(tmp_path, reader, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError, match=message):
        reader(tmp_path / name)


@pytest.mark.unit
def test_malformed_bucc_gold(tmp_path):
    (tmp_path / "zh-en.dev.zh").write_text("zh-1\t你好\n")
    (tmp_path / "zh-en.dev.en").write_text("en-1\thello\n")
    (tmp_path / "zh-en.dev.gold").write_text("zh-1\ten-1\nzh-1 en-1\n")
    with pytest.raises(EvalDataError, match=r"zh-en\.dev\.gold:2: expected"):
        bucc.read_bucc(tmp_path, "zh", "dev")


# ---------------------------------------------------------------- mst5 eval end to end


def test_mst5_eval_cli_on_tiny_model(tiny_base, shared_data, tmp_path):
    out = tmp_path / "results.json"
    cmd = mst5_cmd(
        "eval", "--model", str(tiny_base), "--data-dir", str(shared_data), "--output", str(out),
        "--tasks", "tatoeba,bucc,sts17,stsb,xstsb,jsts,korsts,sick,langbias,rsim", "--limit", "60",
        "--tatoeba-langs", "de,fr,sw", "--tatoeba-margin", "--stsb-langs", "en,de,fr", "--rsim-langs", "de",
        "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--name", "tiny",
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    r = report["results"]
    assert set(r) == {"tatoeba", "bucc", "sts17", "stsb", "xstsb", "jsts", "korsts", "sick", "langbias", "rsim"}
    de = r["tatoeba"]["languages"]["de"]
    assert de["n"] == 60 and 0 <= de["xx2en"] <= 100 and "xsim_error_xx2en" in de
    assert r["tatoeba"]["averages"]["tatoeba14"]["complete"] is False  # only 3 languages were run
    assert r["bucc"]["zh"]["threshold_protocol"].startswith("oracle") and r["bucc"]["zh"]["n_gold"] == 257
    assert set(r["sts17"]) == set(sts.STS17_NAMES) and r["sts17"]["ar-en"]["n"] == 60
    assert set(r["langbias"]["own_spearman"]) == {"en-de", "en-fr"}
    assert len(report["model"]["fingerprint"]) == 64 and report["model"]["runtime"] == "TorchEmbedder"
    assert any(p.endswith("tatoeba.deu-eng.deu") for p in report["data_files"])
    assert report["settings"]["limit"] == 60 and report["cache"]["misses"] > 0
    assert "| tiny |" in proc.stdout and "Tatoeba-14" in proc.stdout and report["markdown"] in proc.stdout


@pytest.mark.unit
def test_mst5_eval_bad_data_exits_2_with_one_line(tiny_base, tmp_path, capsys):
    from mst5_dist.cli import main

    data = tmp_path / "data"  # the results file goes beside it: an output inside an input is refused
    (data / "sts17").mkdir(parents=True)
    (data / "sts17" / "STS.input.track5.en-en.txt").write_text("a\tb\n")
    (data / "sts17" / "STS.gs.track5.en-en.txt").write_text("five\n")
    args = ["eval", "--model", str(tiny_base), "--data-dir", str(data), "--tasks", "sts17",
            "--sts17-tracks", "en-en", "--output", str(tmp_path / "r.json"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("STS.gs.track5.en-en.txt:1: score 'five' is not a number")
    assert main([*args[:-3], "--tasks", "nope"]) == 2
    assert "unknown task(s) nope" in capsys.readouterr().err


@pytest.mark.unit
def test_data_download_checks_existing_files_and_explains_offline(shared_data, tmp_path, monkeypatch, capsys):
    import urllib.error

    from mst5_dist.evaluate import download

    shutil.copytree(shared_data / "sts17", tmp_path / "sts17")
    assert download.download(["sts17"], tmp_path) == 0  # all 14 present with the right sha256: no network
    assert "14 files" in capsys.readouterr().out

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    (tmp_path / "sts17" / "STS.gs.track5.en-en.txt").write_text("tampered\n")  # checksum mismatch -> refetch
    assert download.download(["sts17"], tmp_path) == 1
    err = capsys.readouterr().err
    assert "Offline? Put the files into" in err and "STS.gs.track5.en-en.txt" in err
    assert download.download(["nope"], tmp_path) == 2
