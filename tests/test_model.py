import json
import random
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from mst5_dist.config import LoraConfig
from mst5_dist.lora import apply_lora, count_parameters
from mst5_dist.model import EncoderMeta, ModelError, SentenceEncoder, encode_batched, mean_pool, plan_batches

pytestmark = pytest.mark.unit

MULTILINGUAL = [
    "The weather is nice today.",
    "Das Wetter ist heute schön.",
    "El tiempo es agradable hoy.",
    "Сегодня хорошая погода.",
    "今天天气很好。",
    "الطقس جميل اليوم.",
]


def test_mean_pool_excludes_padding_and_survives_empty_rows():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = mean_pool(hidden, mask)
    assert torch.equal(out[0], torch.tensor([2.0, 3.0]))
    assert torch.equal(out[1], torch.zeros(2))  # all padding: zero, not NaN


def test_tokenizer_round_trips_real_text(tiny_base):
    enc = SentenceEncoder.from_pretrained(tiny_base)
    tok = enc.tokenizer
    for text in MULTILINGUAL:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text
    slow = SentenceEncoder.from_pretrained(tiny_base, tokenizer_use_fast=False).tokenizer
    assert slow(MULTILINGUAL)["input_ids"] == tok(MULTILINGUAL)["input_ids"]


def test_only_the_encoder_is_loaded(tiny_base):
    enc = SentenceEncoder.from_pretrained(tiny_base)
    assert type(enc.backbone).__name__ == "MT5EncoderModel"
    assert not any("decoder" in n for n, _ in enc.named_parameters())


def test_padding_does_not_change_embeddings(tiny_base):
    enc = SentenceEncoder.from_pretrained(tiny_base).eval()
    alone = torch.stack([enc.encode([t])[0] for t in MULTILINGUAL])
    together = enc.encode(MULTILINGUAL)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    assert torch.allclose(together.norm(dim=-1), torch.ones(len(MULTILINGUAL)))


def test_fp16_is_refused_for_t5(tiny_base):
    with pytest.raises(ModelError, match="fp16"):
        SentenceEncoder.from_pretrained(tiny_base, dtype="fp16")


@pytest.mark.parametrize(
    "preset, expected", [("qv", {"q", "v"}), ("all-linear", {"q", "k", "v", "o", "wi_0", "wi_1", "wo"})]
)
def test_lora_presets_on_t5(tiny_base, preset, expected):
    enc = SentenceEncoder.from_pretrained(tiny_base)
    for p in enc.parameters():
        p.requires_grad_(False)
    apply_lora(enc, LoraConfig(preset=preset))
    wrapped = {n.rsplit(".lora_A", 1)[0].split(".")[-1] for n, _ in enc.named_parameters() if ".lora_A." in n}
    assert wrapped == expected
    trainable, total = count_parameters(enc)
    assert 0 < trainable < total


def test_save_and_reload_by_path_gives_identical_embeddings(tiny_base, tmp_path):
    """The same from_pretrained path a GPU user takes with google/mt5-xxl, on a tiny model."""
    torch.manual_seed(0)
    enc = SentenceEncoder.from_pretrained(tiny_base, max_seq_length=48)
    apply_lora(enc, LoraConfig(preset="all-linear"))
    with torch.no_grad():  # move the adapter off its zero init so the test means something
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = enc.encode(MULTILINGUAL)
    base = SentenceEncoder.from_pretrained(tiny_base).encode(MULTILINGUAL)
    assert (before - base).abs().max() > 1e-3
    enc.save_pretrained(tmp_path / "saved")
    again = SentenceEncoder.from_pretrained(tmp_path / "saved")
    assert again.max_seq_length == 48 and again.has_adapter
    assert torch.equal(again.encode(MULTILINGUAL), before)


def test_minilm_matches_sentence_transformers(minilm_path, shared_data):
    """A real pretrained model nobody here trained: our loader+pooling == sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    lines = (shared_data / "stsb-multi-mt" / "stsb-en-test.csv").read_text().splitlines()[:64]
    sentences = [line.split('","')[0].lstrip('"') if line.startswith('"') else line.split(",")[0] for line in lines]
    ours = SentenceEncoder.from_pretrained(minilm_path)
    assert (ours.pooling, ours.normalize, ours.max_seq_length) == ("mean", True, 256)
    mine = ours.encode(sentences, batch_size=16)
    theirs = torch.from_numpy(SentenceTransformer(str(minilm_path), device="cpu").encode(sentences, batch_size=16))
    cos = torch.nn.functional.cosine_similarity(mine, theirs, dim=-1)
    assert cos.min().item() >= 0.9999


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_base):
    from mst5_dist.lora import enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        enc = SentenceEncoder.from_pretrained(tiny_base, dropout=0.0)
        for p in enc.parameters():
            p.requires_grad_(False)
        apply_lora(enc, LoraConfig(preset="all-linear", dropout=0.0))
        if checkpointing:
            enable_gradient_checkpointing(enc)
        # Train mode (transformers only checkpoints while training) with dropout 0, so both
        # passes compute the same function and the second one really recomputes in backward.
        enc.train()
        batch = enc.tokenize(MULTILINGUAL)
        emb = enc(batch["input_ids"], batch["attention_mask"])
        # A fixed random projection: .pow(2).sum() of unit-length embeddings is a constant (zero gradient).
        direction = torch.randn(emb.shape, generator=torch.Generator().manual_seed(3))
        (emb * direction).sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad and "lora_B" in n})
    # lora_B starts at zero (so lora_A gets no gradient yet); lora_B's gradient is non-zero
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(g.abs().sum() > 0 for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ sentence_encoder.json (EncoderMeta)
# As the code writes them today: a LoRA run on a merged stack, and a merged export.
ADAPTER_META = {
    "format_version": 1,
    "base_model": "/models/mt5-base",
    "model_type": "mt5",
    "adapter": True,
    "pooling": "mean",
    "normalize": True,
    "max_seq_length": 128,
    "tokenizer_use_fast": True,
    "embedding_dim": 768,
    "merged_adapters": [{"absolute": "/runs/L/final", "path": "../../L/final", "sha256": "ab" * 32}],
}
MERGED_META = {
    **{k: v for k, v in ADAPTER_META.items() if k != "merged_adapters"},
    "adapter": False,
    "merged_into_weights": [{"absolute": "/runs/L/final", "sha256": "ab" * 32}],
    "merged_from": "/runs/C/final",
}


def _write_meta(folder, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentence_encoder.json").write_text(json.dumps(data))


@pytest.mark.parametrize("data", [ADAPTER_META, MERGED_META])
def test_encoder_meta_round_trips_the_files_written_today(tmp_path, data):
    _write_meta(tmp_path / "a", data)
    meta = EncoderMeta.read(tmp_path / "a")
    (tmp_path / "b").mkdir()
    meta.write(tmp_path / "b")
    again = json.loads((tmp_path / "b" / "sentence_encoder.json").read_text())
    assert again == data and list(again) == list(data)  # same keys, same order
    assert EncoderMeta.read(tmp_path / "b") == meta
    # negative control: a changed field is seen by the comparison
    assert replace(meta, pooling="cls").to_dict() != data


def test_encoder_meta_of_a_saved_model_is_what_from_pretrained_reads(tiny_base, tmp_path):
    enc = SentenceEncoder.from_pretrained(tiny_base, pooling="cls", normalize=False, max_seq_length=32)
    enc.save_pretrained(tmp_path / "m")
    meta = EncoderMeta.read(tmp_path / "m")
    assert (meta.pooling, meta.normalize, meta.max_seq_length, meta.adapter) == ("cls", False, 32, False)
    again = SentenceEncoder.from_pretrained(tmp_path / "m")
    assert (again.pooling, again.normalize, again.max_seq_length) == ("cls", False, 32)


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        ({}, None),  # negative control: the file as written today loads
        ({"pooling_mode": "mean"}, "unknown key 'pooling_mode'"),
        ({"format_version": 1}, None),  # negative control: the current version loads
        ({"format_version": 2}, "'format_version' 2 is newer"),
        ({"max_seq_length": "128"}, "'max_seq_length' is '128', expected int"),
        ({"embedding_dim": True}, "'embedding_dim' is True, expected int"),
    ],
)
def test_encoder_meta_refuses_unknown_keys_newer_versions_and_wrong_types(tmp_path, edit, error):
    _write_meta(tmp_path, {**ADAPTER_META, **edit})
    if error is None:
        assert EncoderMeta.read(tmp_path).to_dict() == {**ADAPTER_META, **edit}
        return
    with pytest.raises(ModelError, match=re.escape(error)) as info:
        EncoderMeta.read(tmp_path)
    assert str(tmp_path / "sentence_encoder.json") in str(info.value)  # names the file


def test_encoder_meta_reads_a_hand_written_format_1_file(tmp_path):
    # No format_version and no model_type (what the model card test writes): format 1, fields unset.
    _write_meta(tmp_path, {"base_model": "google/mt5-base", "adapter": True, "pooling": "mean"})
    meta = EncoderMeta.read(tmp_path)
    assert (meta.format_version, meta.model_type, meta.normalize) == (1, None, None)


# ------------------------------------------------------------------ the one inference batcher
class CharTokenizer:
    """One token per character (its code point); enough for the batcher, which never looks inside."""

    pad_token_id = 0
    padding_side = "right"

    def __call__(self, texts, truncation=True, max_length=None):
        return {"input_ids": [[ord(c) for c in t][:max_length] for t in texts]}


def _budget_problems(batches, lengths, batch_size, budget) -> list[str]:
    out = [f"batch {k}: {len(b)} rows" for k, b in enumerate(batches) if len(b) > batch_size]
    out += [
        f"batch {k}: {len(b)} x {max(lengths[i] for i in b)} tokens"
        for k, b in enumerate(batches)
        if len(b) * max(lengths[i] for i in b) > budget
    ]
    return out


def test_batches_keep_the_token_budget_and_cover_every_row_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(200)]
    batches = plan_batches(lengths, batch_size=16, max_tokens=160)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert _budget_problems(batches, lengths, 16, 160) == []
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # token-length order, longest first
    # negative control: the check bites on batches cut by row count alone
    assert _budget_problems(plan_batches(lengths, batch_size=16), lengths, 16, 160) != []


def test_batcher_returns_rows_in_input_order():
    texts = ["a", "ccc", "bb", "dddd", "e", "ff"]
    seen: list[list[int]] = []

    def embed(ids, mask):
        seen.extend(ids[:, 0].tolist())
        return np.stack([ids[:, 0], mask.sum(axis=1)], axis=1)

    out, stats = encode_batched(CharTokenizer(), texts, embed, dim=2, max_length=8, batch_size=2)
    assert out[:, 0].tolist() == [ord(t[0]) for t in texts] and out[:, 1].tolist() == [len(t) for t in texts]
    assert stats == {"real_tokens": 13, "padded_tokens": 2 * 4 + 2 * 2 + 2 * 1}  # (dddd ccc) (bb ff) (a e)
    # negative control: the rows were embedded in another order, so a batcher that did not
    # restore the input order would fail the first assertion
    assert seen != [ord(t[0]) for t in texts]


def test_batched_encoding_equals_one_at_a_time(tiny_base):
    enc = SentenceEncoder.from_pretrained(tiny_base).eval()
    texts = MULTILINGUAL * 2
    alone = torch.stack([enc.encode([t])[0] for t in texts])
    batched = enc.encode(texts, batch_size=4, max_tokens=40)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    # negative control: rows of different texts differ, so a misplaced row would be caught
    assert not torch.allclose(batched, batched.roll(1, dims=0), atol=1e-3)
