import math

import pytest
import torch

from mst5_dist.losses import info_nce

pytestmark = pytest.mark.unit


def _hand_info_nce(a, p, n, t):
    """InfoNCE written out with Python loops over cosine similarities."""
    cands = list(p) + (list(n) if n is not None else [])
    total = 0.0
    for i, anchor in enumerate(a):
        scores = [torch.nn.functional.cosine_similarity(anchor, c, dim=0).item() / t for c in cands]
        total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    return total / len(a)


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
