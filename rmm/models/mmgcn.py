"""MMGCN: one graph convolution branch per modality over the user-item graph, each with ID embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingRecommender, register
from rmm.models.layers import FeatureBank, sparse_matmul


@dataclass(frozen=True)
class MMGCNConfig:
    """MMRec's ``MMGCN.yaml``: d 64, 2 layers (``n_layers``; MMRec's code runs 3 whatever it says),
    ``reg_weight`` 1e-4 from its grid; ``latent_dim`` 256 is MMRec's ``dim_latent`` of the visual branch, here
    every modality's."""

    embedding_dim: int = 64
    latent_dim: int = 256
    num_layers: int = 2
    reg_weight: float = 1e-4

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim", "latent_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")


class ModalityGCN(nn.Module):
    r"""One MMGCN branch: a modality's user preferences and projected item features, convolved ``num_layers``
    times over the user-item graph, each layer combined with the shared ID embeddings.

    .. math:: \mathbf{h}^{(l)} = \mathrm{lrelu}\big(\mathrm{mean}_{j \in N(v)} W_1^{(l)} \mathbf{x}_j^{(l)}\big),
              \quad \hat{\mathbf{x}}^{(l)}_v = \mathrm{lrelu}(W_2^{(l)} \mathbf{x}^{(l)}_v) + \mathbf{e}^{id}_v,
              \quad \mathbf{x}^{(l+1)}_v = \mathrm{lrelu}(W_3^{(l)} \mathbf{h}^{(l)}_v + \hat{\mathbf{x}}^{(l)}_v)

    Shapes:
        preference: (U, latent_dim); features (I, dim) -> x^{(0)} (U+I, latent_dim) -> (U+I, embedding_dim).
    """

    def __init__(self, num_users: int, dim: int, latent_dim: int, embedding_dim: int, num_layers: int) -> None:
        super().__init__()
        self.preference = nn.Parameter(torch.empty(num_users, latent_dim))
        self.mlp = nn.Linear(dim, latent_dim)
        widths = [latent_dim] + [embedding_dim] * (num_layers - 1)
        self.conv = nn.ModuleList(nn.Linear(w, w, bias=False) for w in widths)
        self.linear = nn.ModuleList(nn.Linear(w, embedding_dim) for w in widths)
        self.combine = nn.ModuleList(nn.Linear(w, embedding_dim) for w in widths)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.preference)
        for layer in [*self.conv, *self.linear, *self.combine]:
            nn.init.xavier_normal_(layer.weight)

    def forward(self, features: Tensor, id_embedding: Tensor, adj: Tensor, inv_degree: Tensor) -> Tensor:
        x = F.normalize(torch.cat([self.preference, self.mlp(features)]), dim=1)  # (U+I, latent_dim)
        for conv, linear, combine in zip(self.conv, self.linear, self.combine):
            h = F.leaky_relu(sparse_matmul(adj, conv(x)) * inv_degree)  # mean over neighbours
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(combine(h) + x_hat)
        return x


@register("mmgcn")
class MMGCN(EmbeddingRecommender):
    r"""MMGCN (Wei et al., `MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation of
    Micro-video <https://doi.org/10.1145/3343031.3351034>`_, ACM MM 2019).

    One :class:`ModalityGCN` per modality, over the user-item graph with mean aggregation; the final
    representation of every user and item is the mean of the branches,

    .. math:: \mathbf{x}_v = \frac{1}{M} \sum_{m} \mathbf{x}^{m, (L)}_v, \qquad
              \hat{y}_{ui} = \mathbf{x}_u^\top \mathbf{x}_i

    trained with BPR plus an L2 penalty on the batch's ID embeddings and user preferences. The combination
    layer is the element-wise sum (the paper's Eq. 7).

    Shapes:
        adj: binary sparse (U+I, U+I); id_embedding: (U+I, embedding_dim).
    """

    config_class = MMGCNConfig
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MMGCNConfig, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.features = FeatureBank(features)
        self.register_buffer("adj", graph.adjacency("none"), persistent=False)
        self.register_buffer("inv_degree", 1.0 / graph.degrees().clamp_min(1).unsqueeze(1), persistent=False)
        self.id_embedding = nn.Parameter(torch.empty(self.num_users + self.num_items, cfg.embedding_dim))
        self.branches = nn.ModuleList(
            ModalityGCN(self.num_users, dim, cfg.latent_dim, cfg.embedding_dim, cfg.num_layers)
            for dim in self.features.dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.id_embedding)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        outputs = [branch(x, self.id_embedding, self.adj, self.inv_degree)
                   for branch, x in zip(self.branches, self.features.matrices())]
        return torch.split(torch.stack(outputs).mean(0), [self.num_users, self.num_items])

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ids = self.id_embedding
        return (ids[batch.users], ids[self.num_users + batch.pos_items], ids[self.num_users + batch.neg_items],
                *(branch.preference[batch.users] for branch in self.branches))
