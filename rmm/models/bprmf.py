"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking, the ID-only baseline."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import EmbeddingRecommender
from rmm.models.hparams.bprmf import BPRMFConfig
from rmm.models.registry import register


@register("bprmf")
class BPRMF(EmbeddingRecommender[BPRMFConfig]):
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

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: BPRMFConfig) -> None:
        super().__init__(graph, features, cfg)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init = nn.init.xavier_normal_ if self.cfg.init == "xavier_normal" else nn.init.xavier_uniform_
        init(self.user_embedding.weight)
        init(self.item_embedding.weight)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight
