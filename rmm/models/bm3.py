"""BM3: self-supervised bootstrapping of latent views, with neither negative samples nor a contrastive loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingRecommender, register
from rmm.models.layers import FeatureBank, emb_norm_loss, projections, propagate


@dataclass(frozen=True)
class BM3Config:
    """MMRec's ``BM3.yaml``: d 64 (the modalities are projected to it, MMRec's ``feat_embed_dim``),
    ``cl_weight`` 2.0; ``num_layers`` 1, ``dropout`` 0.5 and ``reg_weight`` 0.1 from its grids. ``reg_weight``
    multiplies MMRec's ``EmbLoss`` (see :func:`~rmm.models.layers.emb_norm_loss`)."""

    embedding_dim: int = 64
    num_layers: int = 1
    dropout: float = 0.5
    reg_weight: float = 0.1
    cl_weight: float = 2.0

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim", "num_layers")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_at_least(self, 0, "reg_weight", "cl_weight")


def bootstrap_loss(online: Tensor, target: Tensor) -> Tensor:
    r""":math:`1 - \cos(p, z)` averaged over rows; ``target`` is detached (the stop-gradient). Shapes: (B, d)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


@register("bm3")
class BM3(EmbeddingRecommender):
    r"""BM3 (Zhou et al., `Bootstrap Latent Representations for Multi-modal Recommendation
    <https://arxiv.org/abs/2207.05969>`_, WWW 2023).

    The online embeddings are LightGCN's over the user-item graph plus the item ID embedding; a target view is
    a dropout copy under stop-gradient, and a shared predictor :math:`f_p` maps online views onto target
    views. Every modality's projection :math:`h^m_i = W_m x^m_i + b_m` is aligned both with the item's target
    embedding (inter-modality) and with its own dropout view (intra-modality):

    .. math:: \mathcal{L} = \underbrace{(1 - \cos(f_p(\mathbf{e}_u), \mathrm{sg}(\dot{\mathbf{e}}_i)))
                  + (1 - \cos(f_p(\mathbf{e}_i), \mathrm{sg}(\dot{\mathbf{e}}_u)))}_{\mathcal{L}_{rec}}
              + \lambda_{cl} \sum_m \big[(1 - \cos(f_p(h^m_i), \mathrm{sg}(\dot{\mathbf{e}}_i)))
                  + (1 - \cos(f_p(h^m_i), \mathrm{sg}(\dot{h}^m_i)))\big]
              + \lambda \, \mathrm{EmbLoss}(\mathbf{E}_U, \mathbf{E}_I)

    with :math:`\dot{x} = \mathrm{dropout}(x)`. Only the positive pairs of a batch are used (the sampled
    negatives are ignored). Scores are :math:`f_p(\mathbf{e}_u)^\top f_p(\mathbf{e}_i)`. The features are
    frozen inputs (MMRec fine-tunes them).

    Shapes:
        adj: sparse (U+I, U+I); user/item embeddings: (U, d), (I, d); predictor: d -> d.
    """

    config_class = BM3Config
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: BM3Config, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.features = FeatureBank(features)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.predictor = nn.Linear(cfg.embedding_dim, cfg.embedding_dim)
        self.projections = projections(self.features.dims, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        nn.init.xavier_normal_(self.predictor.weight)

    def online(self) -> tuple[Tensor, Tensor]:
        """Online user and item embeddings (before the predictor). Shapes: (U, d), (I, d)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = torch.split(propagate(self.adj, ego, self.cfg.num_layers), [self.num_users, self.num_items])
        return users, items + self.item_embedding.weight

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = self.online()
        return self.predictor(users), self.predictor(items)

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb = self.online()
        users, items = user_emb[batch.users], item_emb[batch.pos_items]  # (B, d)
        with torch.no_grad():
            user_target = F.dropout(users, self.cfg.dropout, training=True)
            item_target = F.dropout(items, self.cfg.dropout, training=True)
        rec = bootstrap_loss(self.predictor(users), item_target) + bootstrap_loss(self.predictor(items), user_target)
        modal = torch.zeros((), device=users.device)
        for proj, x in zip(self.projections, self.features.matrices()):
            content = proj(x[batch.pos_items])  # (B, d)
            content_target = F.dropout(content.detach(), self.cfg.dropout, training=True)
            online = self.predictor(content)
            modal = modal + bootstrap_loss(online, item_target) + bootstrap_loss(online, content_target)
        return rec + self.cfg.reg_weight * emb_norm_loss(user_emb, item_emb) + self.cfg.cl_weight * modal
