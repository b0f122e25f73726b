"""VBPR: BPR-MF whose item factors are extended by a linear map of the item's content features."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.vbpr import VBPRConfig
from rmm.models.layers import bpr_loss, build_fusion, deferred_init, l2_reg, per_distinct
from rmm.models.registry import register


@register("vbpr")
class VBPR(EmbeddingRecommender[VBPRConfig]):
    r"""VBPR (He & McAuley, `VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback
    <https://arxiv.org/abs/1510.01784>`_, AAAI 2016), in MMRec's form (no bias terms).

    .. math:: \hat{y}_{ui} = [\gamma_u; \theta_u]^\top [\gamma_i; \mathbf{E} f_i + \mathbf{b}]

    ``f_i`` is the item's content: one modality as is, or several combined by ``fusion``; the fusion module
    includes the projection ``E`` and its bias ``b`` (``concat``, MMRec's: :math:`f_i` is the concatenated
    modalities and one linear map; see ``rmm.models.layers.build_fusion`` for the others). The loss is BPR over
    a batch of B triples (u, i, j) plus :math:`\lambda \mathcal{R}` of the batch's *final* rows, users
    :math:`[\gamma_u; \theta_u]` and items :math:`[\gamma_i; \mathbf{E} f_i + \mathbf{b}]` (as MMRec):
    ``squared`` :math:`\mathcal{R} = \frac{1}{2B}\sum\lVert\cdot\rVert_F^2`, ``frobenius`` :math:`\frac{1}{B}
    \sum\lVert\cdot\rVert_F` (MMRec's ``EmbLoss``) over the three (B, 2d) matrices.

    Differences from MMRec's code, each with its switch (``strict`` / ``mmrec``; see :class:`VBPRConfig`):

    - ``reg_norm`` (``squared`` / ``frobenius``): squared norms or MMRec's non-squared ones.
    - ``projection_init`` (``pytorch`` / ``xavier_normal``): the projection's initialisation.

    And without a switch: MMRec concatenates text before image, rmm the modalities in ``model.features``
    order (the same model with E's columns permuted); MMRec's BPR term is :math:`-\ln(10^{-10} + \sigma)`,
    rmm's ``softplus`` (equal unless a score gap exceeds ~20); fusions other than ``concat`` are rmm's.
    From the paper, rmm (like MMRec) drops the item bias :math:`\beta_i` and the visual bias
    :math:`\beta'^\top f_i`, adds the projection bias :math:`\mathbf{b}`, and regularises the projected
    content rows with one :math:`\lambda` instead of :math:`\lambda_E \lVert\mathbf{E}\rVert^2` apart.

    Shapes:
        user_embedding: (num_users, 2 * embedding_dim); item_embedding (gamma_i): (num_items, embedding_dim);
        content: (num_items, embedding_dim); scores: (B, num_items).
    """

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: VBPRConfig, *,
                 fusion: str = "concat") -> None:
        super().__init__(graph, features, cfg)
        self.spec.check_inputs(list(features), fusion)
        self.modalities = list(features)
        for i, matrix in enumerate(features.values()):
            # Not persistent: features are inputs reloaded from the store, not state to checkpoint.
            self.register_buffer(f"feature_{i}", matrix.float(), persistent=False)
        # With one modality every fusion reduces to the projection E; concat is exactly that.
        self.fusion = deferred_init(lambda: build_fusion(fusion if len(features) > 1 else "concat",
                                                         [m.shape[1] for m in features.values()], cfg.embedding_dim))
        self.user_embedding = nn.Embedding(self.num_users, 2 * cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        for layer in self.fusion.modules():  # the projection E (and a fusion's other layers)
            if not isinstance(layer, nn.Linear):
                continue
            if self.cfg.projection_init == "pytorch":
                layer.reset_parameters()
                continue
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def item_rows(self, items: Tensor) -> Tensor:
        r"""Final item embeddings :math:`[\gamma_i; \mathbf{E} f_i + \mathbf{b}]` of ``items``.

        Shapes: (N,) -> (N, 2d)."""
        content = self.fusion([getattr(self, f"feature_{i}").index_select(0, items)  # faster than [items]
                               for i in range(len(self.modalities))])
        return torch.cat([self.item_embedding(items), content], dim=-1)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        items = torch.arange(self.num_items, device=self.item_embedding.weight.device)
        return self.user_embedding.weight, self.item_rows(items)

    def loss(self, batch: BPRBatch) -> Tensor:
        """The BPR loss of :class:`EmbeddingRecommender`, projecting only the batch's distinct items (every
        fusion is row-wise), not the whole catalogue: at 7k items x 4480-d content that is most of a step."""
        items = torch.cat([batch.pos_items, batch.neg_items])
        pos, neg = per_distinct(items, self.item_rows).split(len(batch.pos_items))  # (B, 2d) each
        users = self.user_embedding(batch.users)
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        return ranking + self.cfg.reg_weight * l2_reg(users, pos, neg, norm=self.cfg.reg_norm)
