"""Full-ranking top-K metrics, per user, as pure functions.

Every metric takes ``topk`` (the ranked item ids of each user, best first) and ``truth`` (a boolean
``(U, num_items)`` relevance mask) and returns one float64 value per user, so callers can average, compare
per user, or test significance. A user with no relevant item has no defined Recall/NDCG/MAP; callers
evaluate only users with at least one relevant item.

``num_relevant`` (each user's number of relevant items) may be passed when the caller knows it: counting it
from ``truth`` reads the whole ``(U, num_items)`` mask, once per metric and cut-off, which at 63k items took
longer than scoring and ranking together. Precision and HitRate accept it and do not need it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rmm.data.graph import UserItems
from rmm.errors import ConfigError

if TYPE_CHECKING:
    from rmm.models.base import Recommender


def _hits(topk: Tensor, truth: Tensor, k: int) -> Tensor:
    """Relevance of the first k ranked items. Shapes: (U, >=k), (U, I) -> (U, k) float64."""
    return truth.gather(1, topk[:, :k]).double()


def _num_relevant(truth: Tensor, num_relevant: Tensor | None) -> Tensor:
    """Relevant items per user: ``num_relevant`` when given, else counted from ``truth``. Shapes: (U,)."""
    return truth.sum(1) if num_relevant is None else num_relevant


def recall_at_k(topk: Tensor, truth: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    """Recall@k per user: hits in the top k / number of relevant items."""
    return _hits(topk, truth, k).sum(1) / _num_relevant(truth, num_relevant)


def precision_at_k(topk: Tensor, truth: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    """Precision@k per user: hits in the top k / k."""
    return _hits(topk, truth, k).sum(1) / k


def hit_rate_at_k(topk: Tensor, truth: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    """HitRate@k per user: 1 if any of the top k is relevant, else 0."""
    return (_hits(topk, truth, k).sum(1) > 0).double()


def ndcg_at_k(topk: Tensor, truth: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    r"""NDCG@k per user with binary relevance; the ideal DCG ranks min(|relevant|, k) hits first.

    .. math:: \mathrm{DCG@k} = \sum_{r=1}^{k} \frac{rel_r}{\log_2(r + 1)}
    """
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=topk.device))  # (k,)
    dcg = (_hits(topk, truth, k) * discount).sum(1)
    ideal_len = _num_relevant(truth, num_relevant).clamp(max=k)
    ideal = torch.cumsum(discount, 0)[ideal_len - 1]
    return dcg / ideal


def map_at_k(topk: Tensor, truth: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    r"""MAP@k per user (average precision at cut-off k), normalised by min(|relevant|, k) as in MMRec.

    .. math:: \mathrm{AP@k} = \frac{1}{\min(|T_u|, k)} \sum_{r=1}^{k} \mathrm{P@r} \cdot rel_r
    """
    hits = _hits(topk, truth, k)
    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=topk.device)
    precision = torch.cumsum(hits, 1) / ranks  # (U, k): P@r
    return (precision * hits).sum(1) / _num_relevant(truth, num_relevant).clamp(max=k)


METRICS: dict[str, Callable[[Tensor, Tensor, int, Tensor | None], Tensor]] = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "precision": precision_at_k,
    "hit_rate": hit_rate_at_k,
    "map": map_at_k,
}


def metric_names(ks: Sequence[int]) -> list[str]:
    """Column names of :func:`evaluate`'s table, e.g. ``recall@20``, in a fixed order."""
    return [f"{name}@{k}" for k in ks for name in METRICS]


def evaluate(model: Recommender[Any], users: Tensor, exclude: UserItems, truth: UserItems, ks: Sequence[int],
             batch_users: int = 1024) -> dict[str, Tensor]:
    """Full-ranking metrics of ``users``: every item is scored, ``exclude`` items are never recommended.

    Mask the train items when validating and train + valid items when testing, so a model is not rewarded
    for re-recommending what the user already has.

    Args:
        model: the recommender; evaluated in eval mode, its mode restored afterwards.
        users: users to evaluate, each with at least one ``truth`` item.
        exclude: items masked out per user.
        truth: relevant items per user.
        ks: cut-offs, each at most the number of items.
        batch_users: users scored at once; bounds memory at ``batch_users * num_items`` floats.

    Returns:
        ``{"recall@10": (len(users),) float64, ...}`` in :func:`metric_names` order, on the CPU.
    """
    if max(ks) > truth.num_items:
        raise ConfigError(f"top-K cut-offs {list(ks)} exceed the {truth.num_items} items; lower train.eval.topk")
    columns: dict[str, list[Tensor]] = {name: [torch.empty(0, dtype=torch.float64)] for name in metric_names(ks)}
    device = next(itertools.chain(model.parameters(), model.buffers())).device  # training-free: buffers only
    was_training = model.training
    model.eval()
    with torch.no_grad():
        score = model.scorer()
        for chunk in users.split(batch_users):
            scores = score(chunk.to(device))  # (B, I)
            scores = scores.masked_fill(exclude.mask(chunk).to(device), -math.inf)
            topk = torch.topk(scores, max(ks), dim=1).indices  # (B, max k)
            relevant = truth.mask(chunk).to(device)
            num_relevant = truth.counts(chunk.cpu()).to(device)  # from the CSR rows, not the dense mask
            for k in ks:
                for name, fn in METRICS.items():
                    columns[f"{name}@{k}"].append(fn(topk, relevant, k, num_relevant).cpu())
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in columns.items()}
