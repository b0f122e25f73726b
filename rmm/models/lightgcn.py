"""LightGCN: embeddings smoothed over the user-item graph by parameter-free propagation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender, register
from rmm.models.layers import propagate


@dataclass(frozen=True)
class LightGCNConfig:
    """Paper defaults (3 layers, lambda 1e-4, d 64), inside MMRec's ``LightGCNTorch.yaml`` grid."""

    embedding_dim: int = 64
    num_layers: int = 3
    reg_weight: float = 1e-4

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")


@register("lightgcn")
class LightGCN(EmbeddingRecommender):
    r"""LightGCN (He et al., `LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation <https://arxiv.org/abs/2002.02126>`_, SIGIR 2020).

    .. math:: \mathbf{E} = \sum_{l=0}^{L} \alpha_l \mathbf{E}^{(l)}, \quad
              \mathbf{E}^{(l+1)} = D^{-1/2} A D^{-1/2} \mathbf{E}^{(l)}, \quad \alpha_l = \tfrac{1}{L+1}

    The L2 penalty applies to the layer-0 (ego) embeddings of the batch, as in the paper.

    Shapes:
        adj: sparse (U+I, U+I), normalised once in ``rmm.data.graph``; embedding: (U+I, embedding_dim).
    """

    config_class = LightGCNConfig

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LightGCNConfig, *,
                 fusion: str = "concat") -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        # Not persistent: rebuilt from the graph, never checkpointed. DDP must run with broadcast_buffers=False.
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.embedding = nn.Embedding(self.num_users + self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.embedding.weight)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        final = propagate(self.adj, self.embedding.weight, self.cfg.num_layers)
        return torch.split(final, [self.num_users, self.num_items])

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ego = self.embedding.weight
        return ego[batch.users], ego[self.num_users + batch.pos_items], ego[self.num_users + batch.neg_items]
