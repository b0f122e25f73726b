"""Metrics against values computed by hand on tiny rankings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from rmm.data.graph import UserItems
from rmm.eval.metrics import evaluate, hit_rate_at_k, map_at_k, metric_names, ndcg_at_k, precision_at_k, recall_at_k

NUM_ITEMS = 6
RANKING = [3, 0, 5, 1, 2, 4]  # every user's ranked items, best first
L3, L6 = math.log2(3), math.log2(6)


def _case(*relevant: set[int]) -> tuple[Tensor, Tensor]:
    topk = torch.tensor([RANKING] * len(relevant))
    truth = torch.zeros(len(relevant), NUM_ITEMS, dtype=torch.bool)
    for row, items in enumerate(relevant):
        truth[row, list(items)] = True
    return topk, truth


# Users: A relevant {0, 2} (hits at ranks 2 and 5); B relevant {4} (hit at rank 6 only); C relevant {3, 0, 5, 1}.
TOPK, TRUTH = _case({0, 2}, {4}, {3, 0, 5, 1})

EXPECTED = {
    (recall_at_k, 3): [1 / 2, 0, 3 / 4],
    (recall_at_k, 5): [1, 0, 1],
    (precision_at_k, 3): [1 / 3, 0, 1],
    (precision_at_k, 5): [2 / 5, 0, 4 / 5],
    (hit_rate_at_k, 3): [1, 0, 1],
    (hit_rate_at_k, 5): [1, 0, 1],
    # Ideal DCG over min(|relevant|, k) hits: A 2, B 1, C 3 at k=3 and 4 at k=5.
    (ndcg_at_k, 3): [(1 / L3) / (1 + 1 / L3), 0, 1],
    (ndcg_at_k, 5): [(1 / L3 + 1 / L6) / (1 + 1 / L3), 0, 1],
    # AP@k = sum of P@r at hit ranks / min(|relevant|, k).
    (map_at_k, 3): [(1 / 2) / 2, 0, 1],
    (map_at_k, 5): [(1 / 2 + 2 / 5) / 2, 0, 1],
}


@pytest.mark.parametrize(("metric", "k"), list(EXPECTED), ids=lambda v: getattr(v, "__name__", str(v)))
def test_metric_matches_hand_computed(metric, k: int) -> None:
    """Counting the relevant items from the mask, or being given their number, gives the hand-computed values."""
    for values in (metric(TOPK, TRUTH, k), metric(TOPK, TRUTH, k, torch.tensor([2, 1, 4]))):
        assert values.dtype == torch.float64
        assert torch.allclose(values, torch.tensor(EXPECTED[metric, k], dtype=torch.float64))


class _FixedScores(nn.Module):
    """A stand-in recommender with a fixed score matrix."""

    def __init__(self, scores: Tensor) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores)

    def scorer(self):
        return lambda users: self.scores[users]


def _user_items(rows: list[set[int]]) -> UserItems:
    pairs = torch.tensor([(u, i) for u, items in enumerate(rows) for i in items], dtype=torch.long).reshape(-1, 2)
    return UserItems.from_pairs(pairs[:, 0], pairs[:, 1], len(rows), NUM_ITEMS)


def test_evaluate_masks_seen_items_and_is_chunk_invariant() -> None:
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6]])
    model = _FixedScores(scores)
    exclude = _user_items([{0}, {5, 4}])  # the top-scored items are masked out
    truth = _user_items([{1, 5}, {3}])
    users = torch.tensor([0, 1])

    table = evaluate(model, users, exclude, truth, ks=(1, 2), batch_users=1)

    assert list(table) == metric_names((1, 2))
    assert table["recall@1"].tolist() == [0.5, 1.0]  # user 0 ranks 1 first; user 1 ranks 3 first
    assert table["recall@2"].tolist() == [0.5, 1.0]
    assert table["precision@2"].tolist() == [0.5, 0.5]
    chunked_once = evaluate(model, users, exclude, truth, ks=(1, 2), batch_users=8)
    assert all(torch.equal(table[n], chunked_once[n]) for n in table)
    assert model.training  # mode restored


def test_evaluate_rejects_cut_off_above_item_count() -> None:
    model = _FixedScores(torch.zeros(1, NUM_ITEMS))
    with pytest.raises(ValueError, match="exceed"):
        evaluate(model, torch.tensor([0]), _user_items([set()]), _user_items([{1}]), ks=(10,))
