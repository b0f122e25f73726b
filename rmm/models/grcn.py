"""GRCN: the user-item graph refined by content affinity, pruning edges whose content disagrees."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.grcn import GRCNConfig
from rmm.models.layers import EdgeIndex, FeatureBank, deferred_init, modules_of, segment_softmax
from rmm.models.mmgcn import mmrec_regulariser
from rmm.models.registry import register


def attention(edges: EdgeIndex, x_src: Tensor, x_dst: Tensor) -> Tensor:
    r"""Edge weights :math:`\mathrm{softmax}_{j \in N(v)}(x_v^\top x_j)` over each target's incoming edges.

    Shapes:
        x_src: (num_src, D); x_dst: (num_dst, D) -> (E,).
    """
    return segment_softmax(edges.dot(x_dst, x_src), edges.dst, edges.num_dst)


class ContentGraph(nn.Module):
    r"""GRCN's graph refining layer for one modality: user preferences routed over the items' content (``R``
    times; not at all with ``num_routing`` 0), then one attention convolution whose edge weights score how well
    the two ends of an edge agree.

    .. math:: \mathbf{p}_u \leftarrow \frac{\mathbf{p}_u + \sum_{i \in N(u)} \alpha_{ui} \mathbf{f}_i}
                  {\lVert \cdot \rVert}\ (\times R), \quad
              \alpha_{vj} = \mathrm{softmax}_{j \in N(v)}(\mathbf{x}_v^\top \mathbf{x}_j), \quad
              \mathbf{c}_v = \mathbf{x}_v + \sum_{j \in N(v)} \alpha_{vj} \mathbf{x}_j

    with :math:`\mathbf{p}_u` starting at the normalised preference parameter,
    :math:`\mathbf{f}_i = \mathrm{norm}(\mathrm{lrelu}(W f^m_i + b))`,
    :math:`\alpha_{ui} = \mathrm{softmax}_{i \in N(u)}(\mathbf{p}_u^\top \mathbf{f}_i)` and
    :math:`\mathbf{x} = [\mathbf{p}; \mathbf{f}]`.

    Shapes:
        preference: (U, latent_dim); features (I, dim) -> content (U+I, latent_dim), weights (2E,).
    """

    def __init__(self, num_users: int, dim: int, latent_dim: int, num_routing: int) -> None:
        super().__init__()
        self.num_routing = num_routing  # 0: no routing (MMRec's, see GRCNConfig.route_preferences)
        self.preference = nn.Parameter(torch.empty(num_users, latent_dim))
        self.mlp = deferred_init(lambda: nn.Linear(dim, latent_dim))

    def reset_parameters(self) -> None:
        """Called by :meth:`GRCN.reset_parameters`, the model's one init site (the bias: ``nn.Linear``'s)."""
        self.mlp.reset_parameters()
        nn.init.xavier_normal_(self.preference)
        nn.init.xavier_normal_(self.mlp.weight)

    def forward(self, features: Tensor, routing: EdgeIndex, edges: EdgeIndex) -> tuple[Tensor, Tensor]:
        """``routing``: the train edges item -> user; ``edges``: the 2E directed edges over the U+I nodes,
        user->item ones first. Returns content (U+I, latent) and the attention weights of ``edges``."""
        content = F.normalize(F.leaky_relu(self.mlp(features)), dim=1)  # (I, latent)
        preference = F.normalize(self.preference, dim=1)
        for _ in range(self.num_routing):  # a user attends over the content of its items
            alpha = attention(routing, content, preference)
            preference = F.normalize(preference + routing.weighted_sum(alpha, content), dim=1)
        x = torch.cat([preference, content])  # (U+I, latent)
        alpha = attention(edges, x, x)  # (2E,)
        return x + edges.weighted_sum(alpha, x), alpha


@register("grcn")
class GRCN(EmbeddingRecommender[GRCNConfig]):
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
    representations (:math:`w_{jv}` is 0 off the train edges). Trained with
    :math:`\frac{1}{B}\sum_b -\ln \sigma(\hat{y}_{ui} - \hat{y}_{uj}) + \lambda R`, :math:`R` the
    ``regulariser`` (see :class:`GRCNConfig`). The ID embeddings, confidences, preferences and projections
    learn; the input features are frozen (in MMRec too).

    Deviations, and the switch of each (``strict`` / ``mmrec``):

    - preference routing: the paper's / none, MMRec's routing messages never reaching the users
      (``route_preferences``);
    - regulariser: ``l2_reg`` of the batch's rows / MMRec's element mean (``regulariser``).

    In both, as in MMRec's and the authors' defaults: no edge dropout (``dropout`` 0), no activation in either
    convolution (``has_act`` False), per-edge weights from the ``confid`` mode (max over modalities of
    attention times the source node's confidence) with pruning (ReLU), and ``concat`` fusion. MMRec computes
    but never adds a penalty on the confidences; rmm has none. MMRec ranks with the representation of the last
    *training* forward, one optimiser step stale; rmm recomputes it.

    Shapes:
        id_embedding: (U+I, embedding_dim); representation: (U+I, embedding_dim + M * latent_dim).
    """

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: GRCNConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        num_nodes = self.num_users + self.num_items
        item_nodes = graph.items + self.num_users
        self.routing = EdgeIndex(graph.items, graph.users, self.num_users, self.num_items)  # item -> user
        self.edges = EdgeIndex(torch.cat([graph.users, item_nodes]), torch.cat([item_nodes, graph.users]),
                               num_nodes, num_nodes)  # (2E,): user -> item, then item -> user
        self.id_embedding = nn.Parameter(torch.empty(num_nodes, cfg.embedding_dim))
        self.confidence = nn.Parameter(torch.empty(num_nodes, len(self.features)))
        num_routing = cfg.num_routing if cfg.route_preferences else 0
        self.branches = nn.ModuleList(ContentGraph(self.num_users, dim, cfg.latent_dim, num_routing)
                                      for dim in self.features.dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for branch in modules_of(self.branches, ContentGraph):
            branch.reset_parameters()
        nn.init.xavier_normal_(self.id_embedding)
        nn.init.xavier_normal_(self.confidence)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        outputs = [branch(x, self.routing, self.edges)
                   for branch, x in zip(self.branches, self.features.matrices(), strict=True)]
        alpha = torch.stack([weights for _, weights in outputs], dim=1)  # (2E, M)
        weights = torch.relu((alpha * self.confidence[self.edges.src]).max(dim=1).values)  # (2E,)
        x = F.normalize(self.id_embedding, dim=1)
        hop1 = self.edges.weighted_sum(weights, x)
        hop2 = self.edges.weighted_sum(weights, hop1)
        representation = torch.cat([x + hop1 + hop2, *(content for content, _ in outputs)], dim=1)
        users, items = torch.split(representation, [self.num_users, self.num_items])
        return users, items

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ids = self.id_embedding
        return (ids[batch.users], ids[self.num_users + batch.pos_items], ids[self.num_users + batch.neg_items],
                *(branch.preference[batch.users] for branch in modules_of(self.branches, ContentGraph)))

    def regularisation(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        if self.cfg.regulariser == "batch":
            return super().regularisation(batch, users, pos, neg)
        branches = modules_of(self.branches, ContentGraph)
        return (mmrec_regulariser(self.id_embedding, branches[0].preference, batch, self.num_users)
                + reduce(operator.add, (branch.preference[batch.users].pow(2).mean() for branch in branches)))
