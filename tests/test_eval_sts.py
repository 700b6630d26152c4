import pytest
import torch
from scipy.stats import spearmanr

from mst5_dist.evaluate.sts import EvalDataError, read_stsb_csv, spearman_x100

pytestmark = pytest.mark.unit


def test_spearman_matches_scipy_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.2]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    gold = [5.0, 3.0, 0.0, 4.0]  # cosines: 1, .707, 0, .98 -> same ranking as gold
    assert spearman_x100(a, b, gold) == pytest.approx(100.0)
    assert spearman_x100(a, b, gold[::-1]) == pytest.approx(100 * spearmanr([1, 0.707, 0, 0.98], gold[::-1]).statistic)


def test_reads_real_stsb(shared_data):
    pairs = read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-de-test.csv")
    assert len(pairs.scores) == 1379 and all(0 <= s <= 5 for s in pairs.scores)


@pytest.mark.parametrize(
    "content, message", [("a,b\n", r":1: expected 3 columns"), ("a,b,1\nc,d,high\n", r":2: score 'high'")]
)
def test_malformed_sts_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(EvalDataError, match=rf"bad\.csv{message}"):
        read_stsb_csv(path)
