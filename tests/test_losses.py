import math

import pytest
import torch
from conftest import REPO

from mst5_dist import objectives
from mst5_dist.config import ConfigError, check_embedding_dim, load_config
from mst5_dist.losses import info_nce

pytestmark = pytest.mark.unit


def _hand_ce(queries, cands, t):
    """Mean over queries of -log softmax(cosine / t)[own index], written out with loops."""
    total = 0.0
    for i, q in enumerate(queries):
        scores = [torch.nn.functional.cosine_similarity(q, c, dim=0).item() / t for c in cands]
        total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    return total / len(queries)


def _hand_info_nce(a, p, n, t):
    """InfoNCE written out: each anchor against the positives (and the negatives)."""
    return _hand_ce(a, list(p) + (list(n) if n is not None else []), t)


@pytest.mark.parametrize("hard_negatives", [False, True])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_matches_hand_computed(hard_negatives, temperature):
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(4, 8, generator=g) for _ in range(3))
    neg = n if hard_negatives else None
    got = info_nce(a, p, neg, temperature=temperature, gather=lambda t: t, rank=0)
    assert got.item() == pytest.approx(_hand_info_nce(a, p, neg, temperature), rel=1e-5)


def test_tiny_case_by_hand():
    # Orthogonal unit vectors: each anchor equals its positive, so its score is 1/t and the
    # others 0 -> loss = -log(e^{1/t} / (e^{1/t} + (C-1))).
    a = torch.eye(3)
    t = 0.5
    got = info_nce(a, a.clone(), None, temperature=t, gather=lambda x: x, rank=0)
    expect = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert got.item() == pytest.approx(expect, rel=1e-6)
    got_neg = info_nce(a, a.clone(), -a, temperature=t, gather=lambda x: x, rank=0)
    expect_neg = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 + math.exp(-1 / t) + 2))
    assert got_neg.item() == pytest.approx(expect_neg, rel=1e-6)


def test_candidate_order_and_rank_offset():
    """Rank 1's local loss equals the global loss restricted to rank 1's anchors, given the
    documented candidate order [pos r0, pos r1, neg r0, neg r1] and labels 1*B + i."""
    g = torch.Generator().manual_seed(1)
    B = 3
    a, p, n = (torch.randn(2 * B, 5, generator=g) for _ in range(3))
    rank0 = {"p": p[:B], "n": n[:B]}

    def fake_gather(t):  # rank 1's view of an all_gather: rank 0's rows come first
        other = rank0["p"] if torch.equal(t, p[B:]) else rank0["n"]
        return torch.cat([other, t])

    local = info_nce(a[B:], p[B:], n[B:], temperature=0.05, gather=fake_gather, rank=1)
    per_anchor = torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(torch.cat([p, n]), dim=-1).T / 0.05,
        torch.arange(2 * B),
        reduction="none",
    )
    assert local.item() == pytest.approx(per_anchor[B:].mean().item(), rel=1e-6)
    # and a wrong offset would give a different number (the test can fail)
    wrong = info_nce(a[B:], p[B:], n[B:], temperature=0.05, gather=fake_gather, rank=0)
    assert abs(wrong.item() - local.item()) > 1e-3


def test_gradients_flow_to_all_inputs():
    a, p, n = (torch.randn(4, 6, requires_grad=True) for _ in range(3))
    info_nce(a, p, n, gather=lambda t: t, rank=0).backward()
    for t in (a, p, n):
        assert t.grad is not None and t.grad.abs().sum() > 0


# ------------------------------------------------------------------ symmetric InfoNCE


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_symmetric_is_the_mean_of_both_directions(hard_negatives):
    """Anchors against [positives (+ negatives)] and positives against anchors, averaged; the hard
    negatives are candidates of the anchor direction only."""
    g = torch.Generator().manual_seed(2)
    a, p, n = (torch.randn(5, 8, generator=g) for _ in range(3))
    neg = n if hard_negatives else None
    got = info_nce(a, p, neg, temperature=0.1, gather=lambda t: t, rank=0, symmetric=True).item()
    forward = _hand_ce(a, list(p) + (list(n) if hard_negatives else []), 0.1)
    assert got == pytest.approx(0.5 * (forward + _hand_ce(p, list(a), 0.1)), rel=1e-5)
    # negative controls: one direction alone, and negatives also offered to the positives
    assert abs(got - forward) > 1e-3
    if hard_negatives:
        assert abs(got - 0.5 * (forward + _hand_ce(p, list(a) + list(n), 0.1))) > 1e-3


def test_symmetric_rank_offset_is_the_global_loss_of_this_ranks_rows():
    """Rank 1's local symmetric loss is the global symmetric loss restricted to rank 1's rows: its
    positives are scored against the anchors of BOTH ranks, labels offset by 1 * B."""
    g = torch.Generator().manual_seed(3)
    B = 3
    a, p, n = (torch.randn(2 * B, 6, generator=g) for _ in range(3))

    def fake_gather(t):  # rank 1's view of an all_gather: rank 0's rows first
        for whole in (a, p, n):
            if torch.equal(t, whole[B:]):
                return whole
        raise AssertionError("gathered an unknown tensor")

    local = info_nce(a[B:], p[B:], n[B:], temperature=0.05, gather=fake_gather, rank=1, symmetric=True)
    ce = torch.nn.functional.cross_entropy
    norm = torch.nn.functional.normalize
    fwd = ce(norm(a, dim=-1) @ norm(torch.cat([p, n]), dim=-1).T / 0.05, torch.arange(2 * B), reduction="none")
    back = ce(norm(p, dim=-1) @ norm(a, dim=-1).T / 0.05, torch.arange(2 * B), reduction="none")
    assert local.item() == pytest.approx(0.5 * (fwd[B:].mean() + back[B:].mean()).item(), rel=1e-6)
    wrong = info_nce(a[B:], p[B:], n[B:], temperature=0.05, gather=fake_gather, rank=0, symmetric=True)
    assert abs(wrong.item() - local.item()) > 1e-3


# ------------------------------------------------------------------ Matryoshka


@pytest.mark.parametrize("symmetric", [False, True])
def test_matryoshka_is_the_weighted_sum_over_renormalised_prefixes(symmetric):
    g = torch.Generator().manual_seed(4)
    a, p, n = (torch.randn(4, 16, generator=g) for _ in range(3))
    dims, weights = [16, 8, 3], [1.0, 0.5, 2.0]

    def hand(cut):
        def one(x):
            return torch.nn.functional.normalize(cut(x), dim=-1)  # re-normalised prefix

        loss = _hand_ce(one(a), list(one(p)) + list(one(n)), 0.05)
        return 0.5 * (loss + _hand_ce(one(p), list(one(a)), 0.05)) if symmetric else loss

    expect = sum(w * hand(lambda x, d=d: x[:, :d]) for d, w in zip(dims, weights))
    got = info_nce(a, p, n, gather=lambda t: t, rank=0, symmetric=symmetric, dims=dims, weights=weights).item()
    assert got == pytest.approx(expect, rel=1e-5)
    # negative controls: weights ignored, and suffixes instead of prefixes, give other numbers
    assert abs(got - sum(hand(lambda x, d=d: x[:, :d]) for d in dims)) > 1e-3
    assert abs(got - sum(w * hand(lambda x, d=d: x[:, -d:]) for d, w in zip(dims, weights))) > 1e-3
    # no dims: the full embedding once (the plain loss), and the default weights are 1 each
    plain = info_nce(a, p, n, gather=lambda t: t, rank=0, symmetric=symmetric).item()
    assert plain == pytest.approx(hand(lambda x: x), rel=1e-5)
    ones = info_nce(a, p, n, gather=lambda t: t, rank=0, symmetric=symmetric, dims=dims).item()
    assert ones == pytest.approx(sum(hand(lambda x, d=d: x[:, :d]) for d in dims), rel=1e-5)


def test_matryoshka_trains_only_the_listed_prefixes():
    """Coordinates beyond the largest listed size get no gradient; listing the full size trains all."""
    a, p = (torch.randn(4, 10, requires_grad=True) for _ in range(2))
    info_nce(a, p, gather=lambda t: t, rank=0, symmetric=True, dims=[6, 2]).backward()
    for t in (a, p):
        assert t.grad[:, 6:].abs().sum() == 0 and t.grad[:, :6].abs().min() > 0
        t.grad = None
    info_nce(a, p, gather=lambda t: t, rank=0, symmetric=True, dims=[10, 2]).backward()
    assert a.grad[:, 6:].abs().sum() > 0 and p.grad[:, 6:].abs().sum() > 0


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.matryoshka_dims=[64,128]", "loss.matryoshka_dims"),
        ("loss.matryoshka_dims=[64,64]", "loss.matryoshka_dims"),
        ("loss.matryoshka_dims=[64,0]", "loss.matryoshka_dims"),
        ("loss.matryoshka_dims=[64,32.5]", "loss.matryoshka_dims"),
        ("loss.matryoshka_weights=[1,0]", "loss.matryoshka_weights"),
        ("loss.matryoshka_weights=[1,-1]", "loss.matryoshka_weights"),
        ("loss.matryoshka_weights=[1]", "loss.matryoshka_weights"),
        ("loss.symmetric=sometimes", "loss.symmetric"),
    ],
)
def test_bad_loss_settings_name_the_key(override, key):
    good = ["loss.matryoshka_dims=[64,32]", "loss.matryoshka_weights=[1,0.5]"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*good, "loss.symmetric=true"])  # the control loads
    assert cfg.loss.matryoshka_dims == [64, 32] and cfg.loss.matryoshka_weights == [1.0, 0.5] and cfg.loss.symmetric
    overrides = [o for o in good if not o.startswith(override.split("=")[0])] + [override]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(REPO / "configs" / "tiny.yaml", overrides)


def test_matryoshka_sizes_are_checked_against_the_model():
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["loss.matryoshka_dims=[65,32]"])
    with pytest.raises(ConfigError, match=r"loss\.matryoshka_dims: \[65\] larger than the model's embedding size 64"):
        check_embedding_dim(cfg, 64)
    check_embedding_dim(cfg, 65)  # fits: no error


@pytest.mark.parametrize("override", ["loss.symmetric=true", "loss.matryoshka_dims=[32]"])
def test_cla_refuses_the_triplet_only_settings(override):
    base = ["loss.objective=cla", "loss.pivot_model=x", "loss.hard_negatives=false", "model.merge_adapters=[y]"]
    objectives.build(load_config(REPO / "configs" / "tiny.yaml", base))  # the control builds
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        objectives.build(load_config(REPO / "configs" / "tiny.yaml", [*base, override]))
