"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking, the ID-only baseline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from rmm.validation import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import EmbeddingConfig, EmbeddingRecommender, register

#: ``init`` values: the Xavier distribution the embedding tables are drawn from.
INITS = ("xavier_uniform", "xavier_normal")


@dataclass(frozen=True)
class BPRMFConfig(EmbeddingConfig):
    r"""BPR-MF's hyperparameters, after MMRec's ``BPR.yaml``.

    Attributes:
        embedding_dim: d of the user and item factors (MMRec's ``embedding_size``: 64).
        reg_weight: weight of the regulariser of the batch's embeddings (MMRec searches ``reg_weight`` in
            [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]; rmm's default is the middle of that grid).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``squared`` / ``frobenius``: rmm regularises :math:`\frac{1}{2B}\sum\lVert e\rVert^2` (the
            paper's Gaussian prior :math:`\lambda \lVert\Theta\rVert^2`, restricted to the batch); MMRec's
            ``EmbLoss`` uses the non-squared norms :math:`\frac{1}{B}\sum\lVert e\rVert_F`.
        init: ``xavier_uniform`` / ``xavier_normal``: the distribution of the initial factors. Both have the
            variance :math:`2 / (n + d)` of an ``(n, d)`` table; rmm draws its ID embedding tables Xavier-uniform
            throughout (as LightGCN's reference code); MMRec's BPR applies ``xavier_normal_initialization``.
    """

    embedding_dim: int = 64
    reg_weight: float = 1e-4
    init: str = "xavier_uniform"
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's ``bpr.py`` and ``BPR.yaml``); explicit
    #: values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "reg_norm": "frobenius", "init": "xavier_normal"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim")
        require_at_least(self, 0, "reg_weight")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")


@register("bprmf")
class BPRMF(EmbeddingRecommender):
    r"""BPR-MF (Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
    <https://arxiv.org/abs/1205.2618>`_, UAI 2009; MMRec's ``BPR``).

    .. math:: \hat{y}_{ui} = \gamma_u^\top \gamma_i, \qquad
              \mathcal{L} = \frac{1}{B} \sum_{(u,i,j)} -\ln \sigma(\hat{y}_{ui} - \hat{y}_{uj})
                  + \lambda \, \mathcal{R}(\gamma_u, \gamma_i, \gamma_j)

    over a batch of B triples (u, observed i, sampled j), with ``reg_norm``'s regulariser of the batch's rows:
    ``squared`` :math:`\mathcal{R} = \frac{1}{2B}(\lVert\Gamma_u\rVert_F^2 + \lVert\Gamma_i\rVert_F^2 +
    \lVert\Gamma_j\rVert_F^2)`, ``frobenius`` :math:`\mathcal{R} = \frac{1}{B}(\lVert\Gamma_u\rVert_F +
    \lVert\Gamma_i\rVert_F + \lVert\Gamma_j\rVert_F)` (MMRec's ``EmbLoss``), :math:`\Gamma_u` being the
    (B, d) matrix of the batch's user factors.

    Differences from MMRec's code, each with its switch (``strict`` / ``mmrec``; see :class:`BPRMFConfig`):

    - ``reg_norm`` (``squared`` / ``frobenius``): squared norms (the paper's prior) or MMRec's non-squared ones.
    - ``init`` (``xavier_uniform`` / ``xavier_normal``): the initial factors' distribution (same variance).

    And without a switch: the BPR term is computed as ``softplus`` (exact :math:`-\ln\sigma`), MMRec's as
    :math:`-\ln(10^{-10} + \sigma)`; they agree to ~1e-10 unless a negative outscores a positive by more than
    ~20, where MMRec's saturates (at 23, with no gradient). From the paper, rmm (like MMRec) differs in using one
    :math:`\lambda` for users, positive and negative items (the paper has one per parameter group), and in
    training with Adam on mini-batches of triples instead of SGD on single bootstrap-sampled triples.

    Shapes:
        user_embedding: (num_users, embedding_dim); item_embedding: (num_items, embedding_dim);
        scores: (B, num_items).
    """

    config_class = BPRMFConfig

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: BPRMFConfig, *,
                 fusion: str = "concat") -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init = nn.init.xavier_normal_ if self.cfg.init == "xavier_normal" else nn.init.xavier_uniform_
        init(self.user_embedding.weight)
        init(self.item_embedding.weight)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight
