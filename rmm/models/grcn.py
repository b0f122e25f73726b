"""GRCN: the user-item graph refined by content affinity, pruning edges whose content disagrees."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingRecommender, register
from rmm.models.layers import FeatureBank, aggregate, segment_softmax


@dataclass(frozen=True)
class GRCNConfig:
    """MMRec's ``GRCN.yaml``: d 64, ``latent_dim`` 64 (its ``latent_embedding``), 3 routing iterations (its
    ``n_layers``), ``reg_weight`` 1e-4 from its grid."""

    embedding_dim: int = 64
    latent_dim: int = 64
    num_routing: int = 3
    reg_weight: float = 1e-4

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim", "latent_dim", "num_routing")
        require_at_least(self, 0, "reg_weight")


def attention(src: Tensor, dst: Tensor, x_src: Tensor, x_dst: Tensor, num_nodes: int) -> Tensor:
    r"""Edge weights :math:`\mathrm{softmax}_{j \in N(v)}(x_v^\top x_j)` over each target's incoming edges.

    Shapes:
        src, dst: (E,); x_src, x_dst: node matrices -> (E,).
    """
    return segment_softmax((x_dst[dst] * x_src[src]).sum(-1), dst, num_nodes)


class ContentGraph(nn.Module):
    r"""GRCN's graph refining layer for one modality: user preferences routed over the items' content, then
    one attention convolution whose edge weights score how well the two ends of an edge agree.

    .. math:: \mathbf{p}_u \leftarrow \frac{\mathbf{p}_u + \sum_{i \in N(u)} \alpha_{ui} \mathbf{f}_i}
                  {\lVert \cdot \rVert}\ (\times R), \quad
              \alpha_{vj} = \mathrm{softmax}_{j \in N(v)}(\mathbf{x}_v^\top \mathbf{x}_j), \quad
              \mathbf{c}_v = \mathbf{x}_v + \sum_{j \in N(v)} \alpha_{vj} \mathbf{x}_j

    with :math:`\mathbf{f}_i = \mathrm{norm}(\mathrm{lrelu}(W f^m_i + b))` and
    :math:`\mathbf{x} = [\mathbf{p}; \mathbf{f}]`.

    Shapes:
        preference: (U, latent_dim); features (I, dim) -> content (U+I, latent_dim), weights (2E,).
    """

    def __init__(self, num_users: int, dim: int, latent_dim: int, num_routing: int) -> None:
        super().__init__()
        self.num_routing = num_routing
        self.preference = nn.Parameter(torch.empty(num_users, latent_dim))
        self.mlp = nn.Linear(dim, latent_dim)
        nn.init.xavier_normal_(self.preference)
        nn.init.xavier_normal_(self.mlp.weight)

    def forward(self, features: Tensor, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """``users``/``items``: the train edges (E,); returns content (U+I, latent) and the attention
        weights of the 2E directed edges, user->item ones first."""
        num_users = self.preference.shape[0]
        content = F.normalize(F.leaky_relu(self.mlp(features)), dim=1)  # (I, latent)
        preference = F.normalize(self.preference, dim=1)
        for _ in range(self.num_routing):  # a user attends over the content of its items
            alpha = attention(items, users, content, preference, num_users)
            preference = F.normalize(preference + aggregate(items, users, alpha, content, num_users), dim=1)
        x = torch.cat([preference, content])  # (U+I, latent)
        item_nodes = items + num_users
        src, dst = torch.cat([users, item_nodes]), torch.cat([item_nodes, users])
        alpha = attention(src, dst, x, x, len(x))  # (2E,)
        return x + aggregate(src, dst, alpha, x, len(x)), alpha


@register("grcn")
class GRCN(EmbeddingRecommender):
    r"""GRCN (Wei et al., `Graph-Refined Convolutional Network for Multimedia Recommendation with Implicit
    Feedback <https://arxiv.org/abs/2111.02036>`_, ACM MM 2020).

    Every modality's :class:`ContentGraph` scores each directed edge :math:`j \to v` by attention
    :math:`\alpha^m_{jv}`; the refined graph keeps, per edge, the most confident modality and prunes
    disagreeing edges (ReLU), with learned per-node, per-modality confidences :math:`c`:

    .. math:: w_{jv} = \mathrm{relu}\big(\max_m \alpha^m_{jv} c^m_j\big), \quad
              \mathbf{e}^{(l+1)}_v = \sum_{j \to v} w_{jv} \mathbf{e}^{(l)}_j, \quad
              \mathbf{x}_v = [\textstyle\sum_{l=0}^{2} \mathbf{e}^{(l)}_v;\ \mathbf{c}^1_v; \dots;
                  \mathbf{c}^M_v], \quad \hat{y}_{ui} = \mathbf{x}_u^\top \mathbf{x}_i

    with :math:`\mathbf{e}^{(0)}` the L2-normalised ID embeddings and :math:`\mathbf{c}^m` the content
    representations. Trained with BPR plus an L2 penalty on the batch's ID embeddings and preferences.
    Simplified from the paper as in MMRec: no edge dropout, no activation in the ID convolution.

    Shapes:
        id_embedding: (U+I, embedding_dim); representation: (U+I, embedding_dim + M * latent_dim).
    """

    config_class = GRCNConfig
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: GRCNConfig, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.features = FeatureBank(features)
        self.register_buffer("edge_users", graph.users, persistent=False)
        self.register_buffer("edge_items", graph.items, persistent=False)
        num_nodes = self.num_users + self.num_items
        self.id_embedding = nn.Parameter(torch.empty(num_nodes, cfg.embedding_dim))
        self.confidence = nn.Parameter(torch.empty(num_nodes, len(self.features)))
        self.branches = nn.ModuleList(ContentGraph(self.num_users, dim, cfg.latent_dim, cfg.num_routing)
                                      for dim in self.features.dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.id_embedding)
        nn.init.xavier_normal_(self.confidence)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = self.edge_users, self.edge_items
        outputs = [branch(x, users, items) for branch, x in zip(self.branches, self.features.matrices())]
        item_nodes = items + self.num_users
        src, dst = torch.cat([users, item_nodes]), torch.cat([item_nodes, users])
        alpha = torch.stack([weights for _, weights in outputs], dim=1)  # (2E, M)
        weights = torch.relu((alpha * self.confidence[src]).max(dim=1).values)  # (2E,)
        num_nodes = self.num_users + self.num_items
        x = F.normalize(self.id_embedding, dim=1)
        hop1 = aggregate(src, dst, weights, x, num_nodes)
        hop2 = aggregate(src, dst, weights, hop1, num_nodes)
        representation = torch.cat([x + hop1 + hop2, *(content for content, _ in outputs)], dim=1)
        return torch.split(representation, [self.num_users, self.num_items])

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ids = self.id_embedding
        return (ids[batch.users], ids[self.num_users + batch.pos_items], ids[self.num_users + batch.neg_items],
                *(branch.preference[batch.users] for branch in self.branches))
