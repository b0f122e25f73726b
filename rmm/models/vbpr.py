"""VBPR: BPR-MF whose item factors are extended by a linear map of the item's content features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender, register
from rmm.models.layers import FUSIONS, bpr_loss, build_fusion, l2_reg


@dataclass(frozen=True)
class VBPRConfig:
    """MMRec's ``VBPR.yaml``: ``embedding_dim`` for each half (gamma and theta), ``reg_weight`` from its grid."""

    embedding_dim: int = 64
    reg_weight: float = 1e-4

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim")
        require_at_least(self, 0, "reg_weight")


@register("vbpr")
class VBPR(EmbeddingRecommender):
    r"""VBPR (He & McAuley, `VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback
    <https://arxiv.org/abs/1510.01784>`_, AAAI 2016), in MMRec's form (no bias terms).

    .. math:: \hat{y}_{ui} = [\gamma_u; \theta_u]^\top [\gamma_i; \mathbf{E} f_i]

    ``f_i`` is the item's content: one modality as is, or several combined by ``fusion``; the fusion module
    includes the projection ``E`` (see ``rmm.models.layers.build_fusion``).

    Shapes:
        user_embedding: (num_users, 2 * embedding_dim); item_embedding (gamma_i): (num_items, embedding_dim);
        content: (num_items, embedding_dim).
    """

    config_class = VBPRConfig
    uses_features = True
    fusions = FUSIONS

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: VBPRConfig, *,
                 fusion: str = "concat") -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.modalities = list(features)
        for i, matrix in enumerate(features.values()):
            # Not persistent: features are inputs reloaded from the store, not state to checkpoint.
            self.register_buffer(f"feature_{i}", matrix.float(), persistent=False)
        # With one modality every fusion reduces to the projection E; concat is exactly that.
        self.fusion = build_fusion(fusion if len(features) > 1 else "concat",
                                   [m.shape[1] for m in features.values()], cfg.embedding_dim)
        self.user_embedding = nn.Embedding(self.num_users, 2 * cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def item_rows(self, items: Tensor) -> Tensor:
        r"""Final item embeddings :math:`[\gamma_i; \mathbf{E} f_i]` of ``items``. Shapes: (N,) -> (N, 2d)."""
        content = self.fusion([getattr(self, f"feature_{i}")[items] for i in range(len(self.modalities))])
        return torch.cat([self.item_embedding(items), content], dim=-1)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_rows(torch.arange(self.num_items, device=self.feature_0.device))

    def loss(self, batch: BPRBatch) -> Tensor:
        """The BPR loss of :class:`EmbeddingRecommender`, projecting only the batch's distinct items (every
        fusion is row-wise), not the whole catalogue: at 7k items x 4480-d content that is most of a step."""
        items, inverse = torch.unique(torch.cat([batch.pos_items, batch.neg_items]), return_inverse=True)
        pos, neg = self.item_rows(items)[inverse].split(len(batch.pos_items))  # (B, 2d) each
        users = self.user_embedding(batch.users)
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        return ranking + self.cfg.reg_weight * l2_reg(users, pos, neg)
