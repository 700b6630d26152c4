import pytest
import torch

from mst5_dist.config import LoraConfig
from mst5_dist.lora import apply_lora, count_parameters
from mst5_dist.model import ModelError, SentenceEncoder, mean_pool

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
