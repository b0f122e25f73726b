"""COHESION: ID-refined modality branches under a cosine-gated user-item convolution, homogeneous user-user and
item-item graphs, and an adaptively weighted per-branch BPR."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import KNNSpec, TrainGraph, UserGraphSpec, to_csr
from rmm.models.base import BPRBatch, Recommender, epoch_generator, inner_product_scorer
from rmm.models.dualgnn import padded_user_graph_weights, user_graph_weights
from rmm.models.freedom import register_mixed_item_graph
from rmm.models.hparams.cohesion import COHESIONConfig
from rmm.models.layers import (
    FeatureBank,
    bpr_loss,
    deferred_init,
    modules_of,
    reset_projections,
    smooth,
    sparse_matmul,
)
from rmm.models.registry import register

#: Added under the square root of the early fusion (MMRec's), so that its gradient stays finite at zero.
FUSION_EPS = 1e-8


@register("cohesion")
class COHESION(Recommender[COHESIONConfig]):
    r"""COHESION (Xu et al., `COHESION: Composite Graph Convolutional Network with Dual-Stage Fusion for
    Multimodal Recommendation <https://arxiv.org/abs/2504.04452>`_, SIGIR 2025), as its official MMRec-based
    ``cohesion.py``.

    Branches :math:`b = 0..M`: the behaviour (ID) branch, :math:`c_0 = \mathbf{E}_{id}` (free item embeddings),
    then one per content modality, :math:`c_m = f^m`, in feature order. Each has a user preference :math:`P_b` and
    an encoder :math:`g_b(c) = W_2\,\mathrm{LeakyReLU}(W_1 c + b_1) + b_2` (hidden width 4d). Early fusion refines
    every branch with the ID embedding (an element-wise root mean square), and the branch's rows are
    L2-normalised (so the 1/2 only matters next to :math:`\epsilon = 10^{-8}`):

    .. math:: X_b = \mathrm{norm}\big([P_b;\ \sqrt{(\mathbf{E}_{id}^{\,2} + g_b(c_b)^2)/2 + \epsilon}]\big)

    The composite (heterogeneous) convolution over the symmetric-normalised user-item graph :math:`\hat{A}` gates
    every node's layer by its cosine with its own layer 0, and sums the layers (no mean):

    .. math:: H_b^{(l)} = \mathrm{diag}\big(\cos(\hat{A} H_b^{(l-1)}, X_b)\big)\, \hat{A} H_b^{(l-1)}, \quad
              H_b^{(0)} = X_b, \quad H_b = \sum_{l=0}^{L} H_b^{(l)}

    Branches are concatenated (width (M+1) d, ID first) and the homogeneous graphs smooth them: items over the
    frozen item-item graph :math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}` (each modality's unweighted cosine kNN
    graph, ``modality_weights``), users over the user-user co-occurrence graph :math:`W` (each user's
    ``user_knn_k`` users sharing the most train items, softmax of the counts):

    .. math:: \mathbf{e}_i = \bar{\mathbf{e}}_i + (S^{L_m} \bar{E}_I)_i, \quad
              \mathbf{e}_u = \bar{\mathbf{e}}_u + (W \bar{E}_U)_u

    Late fusion (adaptive optimisation): per branch scores :math:`s_b^{\pm} = \mathbf{e}_{u,b}^\top
    \mathbf{e}_{i^\pm,b}` are weighted by :math:`\omega = 1 - \mathrm{softmax}_b(s_b^+ - s_b^-)` (no gradient), so
    the branch that separates the pair least counts most:

    .. math:: \mathcal{L} = -\log\sigma\Big(\sum_b \omega_b (s_b^+ - s_b^-)\Big)
              + \lambda \sum_b \overline{P_{b,B}^{\,2}}

    (means over the batch's users). Full ranking scores :math:`\mathbf{e}_u^\top \mathbf{e}_i` (all branches
    weighted 1, as MMRec's ``full_sort_predict``).

    Any number of modalities: the official code hard-codes image and text (and fails with one); here every
    feature is a branch, the ID branch first, and the late-fusion softmax runs over the M + 1 branches.

    Differences from MMRec, as :class:`COHESIONConfig` switches (``strict`` / ``mmrec``): kNN graphs without /
    with the item itself (``knn_self``), modality weights uniform / image 0.1, text 0.9 (``modality_weights``),
    encoder init (``projection_init``), natural-log / base-2 BPR (``log2_bpr``), short user neighbour lists kept /
    padded to k with random repeats each epoch (``pad_user_neighbours``), the ID branch trained / detached as
    MMRec's ``id_rep.data`` (``detach_id``). Not switched: MMRec's ``weight_u`` (a parameter that only its own
    penalty reads) is left out; the user-item edge pruning is left out (its yaml only searches ``dropout: 0``);
    scores come from the current weights (MMRec reuses the last training batch's embeddings); degrees carry no
    ``+1e-7``; items without a feature vector get no kNN neighbours.

    Shapes:
        adj: sparse (U+I, U+I); mm_adj: sparse (I, I); user_graph: sparse (U, U); preferences: (M+1) x (U, d);
        id_embedding: (I, d); final embeddings (U, (M+1) d), (I, (M+1) d).
    """

    adj: Tensor
    mm_adj: Tensor
    mm_adj_t: Tensor
    user_counts: Tensor
    user_graph: Tensor | None
    user_graph_t: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: COHESIONConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None, user_graph: Tensor | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        d, branches = cfg.embedding_dim, len(self.features) + 1
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        register_mixed_item_graph(self, features, item_graphs, cfg.modality_weights)
        if user_graph is None:
            user_graph = UserGraphSpec(cfg.user_knn_k).build(graph)
        elif not user_graph.is_sparse or tuple(user_graph.shape) != (self.num_users, self.num_users):
            raise ValueError(f"user_graph must be a sparse COO ({self.num_users}, {self.num_users}) matrix, got "
                             f"{user_graph.layout} {tuple(user_graph.shape)}")
        self.register_buffer("user_counts", user_graph.coalesce(), persistent=False)
        self.register_buffer("user_graph", None, persistent=False)  # padded each epoch (start_epoch)
        self.register_buffer("user_graph_t", None, persistent=False)
        if not cfg.pad_user_neighbours:
            self._set_user_graph(user_graph_weights(user_graph, "softmax"))
        self.id_embedding = nn.Parameter(torch.empty(self.num_items, d))
        self.preferences = nn.ParameterList(nn.Parameter(torch.empty(self.num_users, d)) for _ in range(branches))
        dims = [d, *self.features.dims]
        self.hidden = deferred_init(lambda: nn.ModuleList(nn.Linear(dim, 4 * d) for dim in dims))
        self.output = deferred_init(lambda: nn.ModuleList(nn.Linear(4 * d, d) for _ in dims))
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: COHESIONConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym", include_self=cfg.knn_self)

    @classmethod
    def user_graph_spec(cls, cfg: COHESIONConfig) -> UserGraphSpec:
        return UserGraphSpec(cfg.user_knn_k)

    @property
    def has_unused_parameters(self) -> bool:
        """With ``detach_id`` the ID branch's preference and encoder never get a gradient."""
        return self.cfg.detach_id

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.id_embedding)
        for preference in self.preferences:
            nn.init.xavier_normal_(preference)
        reset_projections(self.hidden, self.cfg.projection_init)
        reset_projections(self.output, self.cfg.projection_init)

    def _set_user_graph(self, weights: Tensor) -> None:
        self.user_graph = to_csr(weights).to(self.user_counts.device)
        self.user_graph_t = to_csr(weights.t()).to(self.user_counts.device)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """With ``pad_user_neighbours``: this epoch's random padding of the user-user graph."""
        if self.cfg.pad_user_neighbours:
            self._set_user_graph(padded_user_graph_weights(self.user_counts.cpu(), self.cfg.user_knn_k, "softmax",
                                                           epoch_generator(seed, epoch)))

    def branch_inputs(self) -> Tensor:
        """:math:`X_b` of every branch side by side, users then items. Shapes: (U+I, (M+1) d)."""
        ids = self.id_embedding
        chunks = []
        for preference, hidden, output, content in zip(
                self.preferences, modules_of(self.hidden, nn.Linear), modules_of(self.output, nn.Linear),
                [ids, *self.features.matrices()], strict=True):
            encoded = output(F.leaky_relu(hidden(content)))  # (I, d)
            refined = torch.sqrt((ids.square() + encoded.square()) / 2 + FUSION_EPS)  # early fusion
            chunks.append(F.normalize(torch.cat([preference, refined]), dim=1))
        if self.cfg.detach_id:  # MMRec's id_rep.data: branches never mix, so this detaches the whole ID branch
            chunks[0] = chunks[0].detach()
        return torch.cat(chunks, dim=1)

    def composite_convolution(self, x: Tensor) -> Tensor:
        """:math:`H_b` of every branch: one sparse product per layer for all branches, each branch's rows gated by
        their cosine with its layer 0. Shapes: (U+I, (M+1) d) -> (U+I, (M+1) d)."""
        nodes, width = x.shape
        ego = x.view(nodes, -1, self.cfg.embedding_dim)  # (N, M+1, d)
        total = layer = x
        for _ in range(self.cfg.num_layers):
            spread = sparse_matmul(self.adj, layer).view_as(ego)
            gate = F.cosine_similarity(spread, ego, dim=-1)  # (N, M+1)
            layer = (spread * gate.unsqueeze(-1)).reshape(nodes, width)
            total = total + layer
        return total

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings. Shapes: (U, (M+1) d), (I, (M+1) d)."""
        h = self.composite_convolution(self.branch_inputs())
        users, items = h[: self.num_users], h[self.num_users:]
        if self.user_graph is None or self.user_graph_t is None:  # a loop that never calls start_epoch
            self.start_epoch(0, 0)
        assert self.user_graph is not None and self.user_graph_t is not None
        users = users + sparse_matmul(self.user_graph, users, self.user_graph_t)
        return users, items + smooth(self.mm_adj, items, self.cfg.num_mm_layers, self.mm_adj_t)

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb = self.embeddings()
        branches, d = len(self.preferences), self.cfg.embedding_dim
        users = user_emb[batch.users]  # (B, (M+1) d)
        pos = (users * item_emb[batch.pos_items]).view(-1, branches, d).sum(-1)  # (B, M+1): per-branch scores
        neg = (users * item_emb[batch.neg_items]).view(-1, branches, d).sum(-1)
        weights = (1 - (pos - neg).softmax(dim=-1)).detach()  # late fusion: adaptive branch weights
        ranking = bpr_loss((weights * pos).sum(-1), (weights * neg).sum(-1))
        if self.cfg.log2_bpr:
            ranking = ranking / math.log(2.0)
        penalised = list(self.preferences)[1:] if self.cfg.detach_id else list(self.preferences)
        reg = reduce(operator.add, (preference[batch.users].pow(2).mean() for preference in penalised))
        return ranking + self.cfg.reg_weight * reg

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return inner_product_scorer(*self.embeddings())
