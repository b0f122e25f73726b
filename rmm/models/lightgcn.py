"""LightGCN: embeddings smoothed over the user-item graph by parameter-free propagation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.lightgcn import LightGCNConfig
from rmm.models.layers import lightgcn
from rmm.models.registry import register


@register("lightgcn")
class LightGCN(EmbeddingRecommender[LightGCNConfig]):
    r"""LightGCN (He et al., `LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation <https://arxiv.org/abs/2002.02126>`_, SIGIR 2020; MMRec's ``LightGCN``).

    .. math:: \mathbf{E} = \sum_{l=0}^{L} \alpha_l \mathbf{E}^{(l)}, \quad
              \mathbf{E}^{(l+1)} = D^{-1/2} A D^{-1/2} \mathbf{E}^{(l)}, \quad \alpha_l = \tfrac{1}{L+1}, \quad
              \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i

    with :math:`A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix}` the binary bipartite adjacency of the
    distinct train pairs R (users first), :math:`D` its degrees (a node without edges gets a zero row). The loss
    is BPR over a batch of B triples (u, i, j) on the final embeddings plus :math:`\lambda \mathcal{R}` of the
    batch's *layer-0* (ego) rows, as in the paper: ``squared`` :math:`\mathcal{R} = \frac{1}{2B}
    (\lVert E^{(0)}_u\rVert_F^2 + \lVert E^{(0)}_i\rVert_F^2 + \lVert E^{(0)}_j\rVert_F^2)`, ``frobenius`` the
    same sum of non-squared norms over B (MMRec's ``EmbLoss``).

    Differences from MMRec's code, each with its switch (``strict`` / ``mmrec``; see :class:`LightGCNConfig`):

    - ``reg_norm`` (``squared`` / ``frobenius``): squared norms (paper) or MMRec's non-squared ones.
    - ``init_per_table`` (False / True): one Xavier bound for the stacked table or one per table.

    And without a switch: MMRec adds 1e-7 to every degree before :math:`D^{-1/2}` (a relative change below 1e-7
    of a weight, and a node without edges has a zero row either way); its BPR term is
    :math:`-\ln(10^{-10} + \sigma)`, rmm's ``softplus`` (equal unless a score gap exceeds ~20).

    Shapes:
        adj: sparse (U+I, U+I), normalised once in ``rmm.data.graph``; embedding: (U+I, embedding_dim), users
        first; scores: (B, num_items).
    """

    adj: Tensor  # buffer: the normalised user-item graph

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LightGCNConfig) -> None:
        super().__init__(graph, features, cfg)
        # Not persistent: rebuilt from the graph, never checkpointed. DDP must run with broadcast_buffers=False.
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.embedding = nn.Embedding(self.num_users + self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.cfg.init_per_table:
            nn.init.xavier_uniform_(self.embedding.weight)
            return
        with torch.no_grad():  # each table's own fan, as two separate (n, d) tensors
            for table in torch.split(self.embedding.weight, [self.num_users, self.num_items]):
                table.copy_(nn.init.xavier_uniform_(torch.empty_like(table)))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = self.embedding.weight.split([self.num_users, self.num_items])
        return lightgcn(self.adj, users, items, self.cfg.num_layers)

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ego = self.embedding.weight  # index_select: its backward is an index_add, not a sorting index_put
        return (ego.index_select(0, batch.users), ego.index_select(0, self.num_users + batch.pos_items),
                ego.index_select(0, self.num_users + batch.neg_items))
