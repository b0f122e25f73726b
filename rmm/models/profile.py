"""Profile matching: a user is the mean of their history items' content vectors; items ranked by cosine."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from functools import reduce

from torch import Tensor

from rmm.data.graph import TrainGraph, unit_rows
from rmm.models.base import TrainingFreeRecommender
from rmm.models.hparams.profile import ProfileConfig
from rmm.models.layers import FeatureBank
from rmm.models.registry import register


@register("profile")
class ProfileMatching(TrainingFreeRecommender[ProfileConfig]):
    r"""Content profile matching (the classic content-based recommender, e.g. Lops et al., `Content-based
    Recommender Systems: State of the Art and Trends <https://doi.org/10.1007/978-0-387-85820-3_3>`_,
    Recommender Systems Handbook 2011), training-free.

    .. math:: \mathbf{p}^m_u = \frac{1}{|N(u)|} \sum_{j \in N(u)} \tilde{x}^m_j, \qquad
              \hat{y}_{ui} = \frac{1}{M} \sum_m \cos(\mathbf{p}^m_u, x^m_i)

    where :math:`N(u)` is the user's distinct train items, :math:`\tilde{x} = x / \lVert x\rVert` with
    ``normalize_items`` (the default) and :math:`\tilde{x} = x` without, and :math:`\cos(a, b) = 0` when
    :math:`a` or :math:`b` is zero. So an item without a vector (a zero row) scores 0 and adds nothing to a
    profile but its count, and a user without train items scores 0 everywhere.

    Not in MMRec: ``protocol: mmrec`` is ``strict`` here. Cosines are computed on rows rescaled first (see
    :func:`rmm.data.graph.unit_rows`), so features of any finite scale give the same scores.

    Shapes:
        features: (I, d_m) per modality; profiles: (B, d_m); scores: (B, I).
    """

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: ProfileConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank({name: unit_rows(m.float()) for name, m in features.items()})
        self.raw = FeatureBank(features) if not cfg.normalize_items else None
        self.history = graph.user_items()

    def scorer(self) -> Callable[[Tensor], Tensor]:
        units = self.features.matrices()
        sources = units if self.raw is None else self.raw.matrices()

        def score(users: Tensor) -> Tensor:
            history = self.history.sparse(users, mean=True).to(units[0].device)  # (B, I), rows sum to 1
            scores = [unit_rows(history @ x) @ unit.T for x, unit in zip(sources, units, strict=True)]  # M x (B, I)
            return reduce(operator.add, scores) / len(units)

        return score
