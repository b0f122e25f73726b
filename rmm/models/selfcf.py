"""SelfCF (SELFCF_ed): self-supervised collaborative filtering without negatives, a LightGCN encoder whose target
views are dropout copies of its own output."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph, csr_of_row_major
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.selfcf import SelfCFConfig
from rmm.models.layers import l2_reg, lightgcn
from rmm.models.registry import register


def negative_cosine(online: Tensor, target: Tensor) -> Tensor:
    r""":math:`-\cos(p, \mathrm{sg}(z))` averaged over rows. Shapes: (B, d), (B, d) -> ()."""
    return -F.cosine_similarity(online, target.detach(), dim=-1).mean()


@register("selfcf")
class SelfCF(EmbeddingRecommender[SelfCFConfig]):
    r"""SelfCF (Zhou et al., `SelfCF: A Simple Framework for Self-supervised Collaborative Filtering
    <https://arxiv.org/abs/2107.03019>`_, ACM TORS 2023; MMRec's ``SELFCFED_LGN``): the SELFCF\ :sub:`ed`
    variant (embedding dropout) with a LightGCN encoder. ID-only.

    The online encoder is LightGCN, :math:`[U; I] = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l [E_U; E_I]`; a batch of
    B observed pairs (u, i) is trained with a linear predictor :math:`h(x) = Wx + b` against target views that
    are dropout copies of the online output under stop-gradient,
    :math:`\dot{\mathbf{u}} = \mathrm{sg}(\mathrm{dropout}_p(\mathbf{u}))`:

    .. math:: \mathcal{L} = -\tfrac{1}{2}\cos(h(\mathbf{u}), \dot{\mathbf{i}})
                            - \tfrac{1}{2}\cos(h(\mathbf{i}), \dot{\mathbf{u}})
                            + \lambda \tfrac{1}{2B}(\lVert U_B\rVert^2 + \lVert I_B\rVert^2), \quad
              \hat{y}_{ui} = h(\mathbf{u})^\top \mathbf{i} + \mathbf{u}^\top h(\mathbf{i})

    (the cosines averaged over the batch; :math:`U_B, I_B` the batch's online rows). There are no negatives: the
    BPR batch's ``neg_items`` are ignored. Scoring propagates over :math:`\hat{A}` without any dropout.

    Differences from MMRec, each a :class:`SelfCFConfig` switch (``strict`` / ``mmrec``): the penalty divided by
    B / summed (``reg_reduction``); no graph dropout / the encoder's per-step edge dropout at a rate drawn from
    :math:`\mathcal{U}[0, 1)` (``edge_dropout``). Not switched: degrees carry no ``+1e-7``; the edge-dropout rate
    is drawn from torch's global generator (MMRec: numpy's), as are the dropout masks (both: the global RNG).

    Shapes:
        adj: sparse (U+I, U+I); user/item embeddings: (U, d), (I, d); ``embeddings()``: (U, 2d), (I, 2d), the
        concatenations :math:`[h(\mathbf{u}); \mathbf{u}]` and :math:`[\mathbf{i}; h(\mathbf{i})]` whose inner
        product is the score.
    """

    # Buffers: the normalised user-item graph; for the edge dropout, its stored entries (row-major) and the
    # permutation that lists them in the transpose's row-major order.
    adj: Tensor
    adj_index: Tensor
    adj_values: Tensor
    transpose_order: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: SelfCFConfig) -> None:
        super().__init__(graph, features, cfg)
        adj = graph.norm_adj()
        self.register_buffer("adj", adj, persistent=False)
        entries = adj.to_sparse_coo().coalesce()
        rows, cols = entries.indices()
        self.register_buffer("adj_index", entries.indices(), persistent=False)
        self.register_buffer("adj_values", entries.values(), persistent=False)
        self.register_buffer("transpose_order", torch.argsort(cols * adj.shape[0] + rows), persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.predictor = nn.Linear(cfg.embedding_dim, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor.reset_parameters()  # nn.Linear's own (Kaiming-uniform), as MMRec

    def dropped_graph(self) -> tuple[Tensor, Tensor]:
        r"""This step's training graph and its transpose: :math:`\hat{A}` itself without edge dropout, else each
        stored entry kept with probability :math:`1 - r`, :math:`r \sim \mathcal{U}[0, \text{edge\_dropout})`, and
        rescaled by :math:`1/(1-r)` (the two directions of an edge independently: not symmetric).

        Draws, from torch's global generator: the rate (one float32 on the CPU), then one uniform per stored entry
        (row-major) on the graph's device. Both are built as CSR straight from the kept entries, in row-major
        order already (the transpose's through ``transpose_order``): no per-step sort."""
        if self.cfg.edge_dropout == 0:
            return self.adj, self.adj
        rate = float(torch.rand(())) * self.cfg.edge_dropout
        kept = torch.rand(len(self.adj_values), device=self.adj_values.device) >= rate
        rows, cols = self.adj_index
        shape = (self.adj.shape[0], self.adj.shape[1])

        def kept_csr(order: Tensor, row_of: Tensor, col_of: Tensor) -> Tensor:
            """The kept entries listed in ``order`` (row-major in ``row_of``), rescaled, as CSR."""
            values = self.adj_values.index_select(0, order) / (1.0 - rate)
            return csr_of_row_major(row_of.index_select(0, order), col_of.index_select(0, order), values, shape)

        by_col = self.transpose_order[kept[self.transpose_order]]  # the kept entries by (col, row)
        return kept_csr(kept.nonzero().squeeze(1), rows, cols), kept_csr(by_col, cols, rows)

    def online(self, adj: Tensor | None = None, adj_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder's user and item embeddings over ``adj`` (the full graph when None). Shapes: (U, d), (I, d)."""
        return lightgcn(self.adj if adj is None else adj, self.user_embedding.weight, self.item_embedding.weight,
                        self.cfg.num_layers, adj_t)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = self.online()
        return torch.cat([self.predictor(users), users], 1), torch.cat([items, self.predictor(items)], 1)

    def loss(self, batch: BPRBatch) -> Tensor:
        """The alignment loss of the batch's observed pairs; ``batch.neg_items`` is not used."""
        user_emb, item_emb = self.online(*self.dropped_graph())
        users, items = user_emb[batch.users], item_emb[batch.pos_items]  # (B, d)
        with torch.no_grad():
            user_target = F.dropout(users, self.cfg.dropout, training=True)
            item_target = F.dropout(items, self.cfg.dropout, training=True)
        align = (negative_cosine(self.predictor(users), item_target)
                 + negative_cosine(self.predictor(items), user_target)) / 2
        reg = l2_reg(users, items, norm=self.cfg.reg_norm)
        if self.cfg.reg_reduction == "sum":
            reg = reg * len(batch.users)
        return align + self.cfg.reg_weight * reg
