"""LightGCN: embeddings smoothed over the user-item graph by parameter-free propagation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rmm.validation import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingConfig, EmbeddingRecommender, register
from rmm.models.layers import propagate


@dataclass(frozen=True)
class LightGCNConfig(EmbeddingConfig):
    r"""LightGCN's hyperparameters: the paper's defaults (3 layers, :math:`\lambda` 1e-4, d 64), inside MMRec's
    ``LightGCN.yaml`` grid.

    Attributes:
        embedding_dim: d of the layer-0 embeddings (MMRec's ``embedding_size``: 64).
        num_layers: propagation steps L (MMRec searches ``n_layers`` in [1, 2, 3, 4]).
        reg_weight: weight of the regulariser of the batch's layer-0 embeddings (MMRec searches [1e-2, 1e-3,
            1e-4, 1e-5, 1e-6]).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``squared`` / ``frobenius``: rmm regularises :math:`\frac{1}{2B}\sum\lVert e^{(0)}\rVert^2`,
            as the paper and its reference code; MMRec's ``EmbLoss`` uses the non-squared norms
            :math:`\frac{1}{B}\sum\lVert e^{(0)}\rVert_F`.
        init_per_table: ``False`` / ``True``: True draws the user and the item table Xavier-uniform each with its
            own bound :math:`\sqrt{6 / (n + d)}` (``n`` = U, then I), as the reference code and MMRec; False
            draws the stacked ``(U+I, d)`` table at once, one bound :math:`\sqrt{6 / (U + I + d)}` for both, which
            is rmm's historical initialisation, kept so that strict runs stay comparable with earlier ones (the
            smaller side's rows start smaller than the reference code's: ~2x for items at 20k users, 7k items).
    """

    embedding_dim: int = 64
    num_layers: int = 3
    reg_weight: float = 1e-4
    init_per_table: bool = False
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's ``lightgcn.py`` and ``LightGCN.yaml``);
    #: explicit values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "reg_norm": "frobenius", "init_per_table": True}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")


@register("lightgcn")
class LightGCN(EmbeddingRecommender):
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

    config_class = LightGCNConfig

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LightGCNConfig, *,
                 fusion: str = "concat") -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
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
        final = propagate(self.adj, self.embedding.weight, self.cfg.num_layers)
        return torch.split(final, [self.num_users, self.num_items])

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ego = self.embedding.weight  # index_select: its backward is an index_add, not a sorting index_put
        return (ego.index_select(0, batch.users), ego.index_select(0, self.num_users + batch.pos_items),
                ego.index_select(0, self.num_users + batch.neg_items))
