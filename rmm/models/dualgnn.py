"""DualGNN: per-modality graph convolutions over the user-item graph, fused per user and smoothed over a
user-user co-occurrence graph."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from functools import reduce
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph, UserGraphSpec, to_csr
from rmm.models.base import BPRBatch, Recommender, epoch_generator, inner_product_scorer
from rmm.models.hparams.dualgnn import DualGNNConfig
from rmm.models.layers import (
    FeatureBank,
    bpr_loss,
    deferred_init,
    modules_of,
    reset_projections,
    segment_softmax,
    sparse_matmul,
)
from rmm.models.registry import register


def user_graph_weights(counts: Tensor, aggregation: str) -> Tensor:
    r"""The user-user aggregation matrix :math:`W` of a co-occurrence graph ``counts``
    (:func:`rmm.data.graph.user_cooccurrence_graph`): row ``u`` weighs ``u``'s neighbours by the softmax of their
    counts (``softmax``) or uniformly (``mean``); a user without neighbours has an empty row.

    Shapes:
        (U, U) sparse COO -> (U, U) float32 sparse COO, coalesced, rows summing to 1 or 0.
    """
    adj = counts.coalesce()
    index, values = adj.indices(), adj.values().float()
    num_users = adj.shape[0]
    if aggregation == "softmax":
        values = segment_softmax(values, index[0], num_users)
    else:
        values = 1.0 / torch.bincount(index[0], minlength=num_users).float()[index[0]]
    return torch.sparse_coo_tensor(index, values, adj.shape, check_invariants=True, is_coalesced=True)


def padded_user_graph_weights(counts: Tensor, k: int, aggregation: str, generator: torch.Generator) -> Tensor:
    r""":func:`user_graph_weights` with MMRec's padding: a user with ``0 < n < k`` neighbours gets a list of k,
    its n neighbours (by increasing user id) followed by ``k - n`` random repeats, slot ``n + j`` copying slot
    :math:`\lfloor r_j (n + j) \rfloor` of the list so far (:math:`r_j` uniform from ``generator``, one row of k
    draws per padded user, users ascending); the weights are the softmax of the k slots' counts (or 1/k each), a
    repeated neighbour summing its slots. Other users are as in :func:`user_graph_weights`.

    Shapes:
        (U, U) sparse COO -> (U, U) float32 sparse COO, coalesced, rows summing to 1 or 0.
    """
    adj = counts.coalesce()
    index, values = adj.indices(), adj.values().float()
    per_user = torch.bincount(index[0], minlength=adj.shape[0])
    short = ((per_user > 0) & (per_user < k)).nonzero().squeeze(1)  # (S,)
    draws = torch.rand(len(short), k, generator=generator)  # (S, k)
    if len(short) == 0:
        return user_graph_weights(adj, aggregation)
    n = per_user[short]
    slots = torch.arange(k)
    filled = slots.unsqueeze(0) < n.unsqueeze(1)  # (S, k)
    source = ((torch.cumsum(per_user, 0) - per_user)[short].unsqueeze(1) + slots)[filled]
    lists = torch.zeros(len(short), k, dtype=torch.long)
    slot_counts = torch.zeros(len(short), k)
    lists[filled], slot_counts[filled] = index[1][source], values[source]
    for j in range(k):
        length = n + j  # (S,): the list's current length; slot ``length`` is drawn next
        growing = (length < k).nonzero().squeeze(1)
        if len(growing) == 0:
            break
        at = length[growing]
        pick = (draws[growing, j] * at).floor().long().clamp_max(at - 1)
        lists[growing, at], slot_counts[growing, at] = lists[growing, pick], slot_counts[growing, pick]
    slot_weights = slot_counts.softmax(dim=1) if aggregation == "softmax" else torch.full((len(short), k), 1.0 / k)
    rest = user_graph_weights(adj, aggregation).coalesce()
    kept = ~torch.isin(rest.indices()[0], short)
    index = torch.cat([rest.indices()[:, kept], torch.stack([short.repeat_interleave(k), lists.flatten()])], dim=1)
    values = torch.cat([rest.values()[kept], slot_weights.flatten()])
    return torch.sparse_coo_tensor(index, values, adj.shape, check_invariants=True).coalesce()


#: The config of a model built on :class:`DualGraphModel`.
DC = TypeVar("DC", bound=DualGNNConfig)


class DualGraphModel(Recommender[DC]):
    r"""What DualGNN and DRAGON share: per modality m a user preference :math:`P_m` and an item encoder
    :math:`g_m(f^m) = W_2 \,\mathrm{LeakyReLU}(W_1 f^m + b_1) + b_2` (hidden width 4d), the L2-normalised rows of
    :math:`X_m = [P_m; g_m(f^m)]` convolved over the symmetric-normalised user-item graph :math:`\hat{A}` without
    a layer mean, :math:`H_m = \sum_{l=0}^{L} \hat{A}^l X_m`; free per-user modality weights :math:`\alpha_u`
    (more than one modality only); the user-user co-occurrence graph :math:`W`; the loss and the scorer.
    Subclasses implement ``embeddings``.
    """

    adj: Tensor
    user_counts: Tensor
    user_graph: Tensor | None
    user_graph_t: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: DC, *,
                 user_graph: Tensor | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        d, count = cfg.embedding_dim, len(self.features)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        if user_graph is None:
            user_graph = UserGraphSpec(cfg.user_knn_k).build(graph)
        elif not user_graph.is_sparse or tuple(user_graph.shape) != (self.num_users, self.num_users):
            raise ValueError(f"user_graph must be a sparse COO ({self.num_users}, {self.num_users}) matrix, got "
                             f"{user_graph.layout} {tuple(user_graph.shape)}")
        self.register_buffer("user_counts", user_graph.coalesce(), persistent=False)
        self.register_buffer("user_graph", None, persistent=False)  # padded each epoch (start_epoch)
        self.register_buffer("user_graph_t", None, persistent=False)
        if not cfg.pad_user_neighbours:
            self._set_user_graph(user_graph_weights(user_graph, cfg.user_aggregation))
        self.preferences = nn.ParameterList(nn.Parameter(torch.empty(self.num_users, d)) for _ in range(count))
        self.hidden = deferred_init(lambda: nn.ModuleList(nn.Linear(dim, 4 * d) for dim in self.features.dims))
        self.output = deferred_init(lambda: nn.ModuleList(nn.Linear(4 * d, d) for _ in range(count)))
        self.modality_weights = nn.Parameter(torch.empty(self.num_users, count)) if count > 1 else None
        self.reset_parameters()

    @classmethod
    def user_graph_spec(cls, cfg: DualGNNConfig) -> UserGraphSpec:
        return UserGraphSpec(cfg.user_knn_k)

    def _set_user_graph(self, weights: Tensor) -> None:
        self.user_graph = to_csr(weights).to(self.user_counts.device)
        self.user_graph_t = to_csr(weights.t()).to(self.user_counts.device)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """With ``pad_user_neighbours``: this epoch's random padding of the user-user graph."""
        if self.cfg.pad_user_neighbours:
            self._set_user_graph(padded_user_graph_weights(self.user_counts.cpu(), self.cfg.user_knn_k,
                                                           self.cfg.user_aggregation, epoch_generator(seed, epoch)))

    def reset_parameters(self) -> None:
        for preference in self.preferences:
            nn.init.xavier_normal_(preference)
        reset_projections(self.hidden, self.cfg.projection_init)
        reset_projections(self.output, self.cfg.projection_init)
        if self.modality_weights is not None:  # MMRec: softmax over modalities of Xavier-normal (U, M, 1) noise
            users, count = self.modality_weights.shape
            with torch.no_grad():
                noise = torch.randn(users, count) * math.sqrt(2.0 / (users + count))
                self.modality_weights.copy_(noise.softmax(dim=1))

    def modality_embeddings(self) -> list[Tensor]:
        """:math:`H_m` of every modality, users then items. Shapes: M x (U+I, d)."""
        x = torch.cat([F.normalize(torch.cat([preference, output(F.leaky_relu(hidden(feature)))]), dim=1)
                       for preference, hidden, output, feature in zip(
                           self.preferences, modules_of(self.hidden, nn.Linear), modules_of(self.output, nn.Linear),
                           self.features.matrices(), strict=True)], dim=1)  # (U+I, M d): one product per layer
        total = layer = x
        for _ in range(self.cfg.num_layers):
            layer = sparse_matmul(self.adj, layer)
            total = total + layer
        return list(total.split(self.cfg.embedding_dim, dim=1))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings. Shapes: (U, D), (I, D)."""
        raise NotImplementedError

    def user_graph_step(self, users: Tensor) -> Tensor:
        r""":math:`\mathbf{e}_u + \sum_{v} W_{uv} \mathbf{e}_v`. Shapes: (U, D) -> (U, D)."""
        if self.user_graph is None or self.user_graph_t is None:  # a loop that never calls start_epoch
            self.start_epoch(0, 0)
        assert self.user_graph is not None and self.user_graph_t is not None
        return users + sparse_matmul(self.user_graph, users, self.user_graph_t)

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb = self.embeddings()
        users = user_emb[batch.users]  # (B, d)
        ranking = bpr_loss((users * item_emb[batch.pos_items]).sum(-1), (users * item_emb[batch.neg_items]).sum(-1))
        if self.cfg.log2_bpr:
            ranking = ranking / math.log(2.0)
        reg = reduce(operator.add, (preference[batch.users].pow(2).mean() for preference in self.preferences))
        if self.modality_weights is not None:
            reg = reg + self.modality_weights.pow(2).mean()
        return ranking + self.cfg.reg_weight * reg

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return inner_product_scorer(*self.embeddings())


@register("dualgnn")
class DualGNN(DualGraphModel[DualGNNConfig]):
    r"""DualGNN (Wang et al., `DualGNN: Dual Graph Neural Network for Multimedia Recommendation
    <https://doi.org/10.1109/TMM.2021.3138298>`_, IEEE TMM 2021), as MMRec's ``dualgnn.py``.

    Per modality m, users get a learned preference :math:`P_m` and items the encoded feature
    :math:`g_m(f^m) = W_2 \,\mathrm{LeakyReLU}(W_1 f^m + b_1) + b_2` (hidden width 4d); the rows of
    :math:`X_m = [P_m; g_m(f^m)]` are L2-normalised and convolved over the symmetric-normalised user-item graph
    :math:`\hat{A}` (no layer mean):

    .. math:: H_m = \sum_{l=0}^{L} \hat{A}^l \,\mathrm{norm}(X_m), \quad
              \mathbf{e}_i = \sum_m H_{m,i}, \quad
              \bar{\mathbf{e}}_u = \sum_m \alpha_{um} H_{m,u}, \quad
              \mathbf{e}_u = \bar{\mathbf{e}}_u + \sum_{v \in N_k(u)} w_{uv} \bar{\mathbf{e}}_v

    :math:`\alpha_u` are free per-user modality weights (initialised to a softmax of small Gaussian noise; with a
    single modality :math:`\bar{\mathbf{e}}_u = H_{1,u}`), :math:`N_k(u)` the ``user_knn_k`` users sharing the most
    train items with u and :math:`w_{uv}` the softmax of those counts. Loss: BPR plus
    :math:`\lambda (\sum_m \overline{P_{m,B}^2} + \overline{\alpha^2})` (means of squares over the batch users'
    preferences and all modality weights). Scores :math:`\mathbf{e}_u^\top \mathbf{e}_i`.

    Differences from MMRec, as :class:`DualGNNConfig` switches (``strict`` / ``mmrec``): encoder init
    (``projection_init``), natural-log / base-2 BPR (``log2_bpr``), a user with fewer than k neighbours keeps those
    it has / is padded to k with random repeats each epoch, which changes its softmax (``pad_user_neighbours``;
    the draw from ``(seed, epoch)``, see :func:`padded_user_graph_weights`). Not switched: MMRec's item weights
    ``weight_i`` (regularised but used nowhere) and its item-dropping edge lists (built but unused) are left out.
    The user-user graph is built from the train graph (deterministic ties: smaller user id first; its
    ``user_graph_spec`` can be handed in prebuilt, e.g. from :func:`rmm.data.knn_cache.cached_user_graph`), not
    read from a preprocessed file.

    Shapes:
        adj: sparse (U+I, U+I); user_graph: sparse (U, U); preferences: M x (U, d); final embeddings (U, d), (I, d).
    """

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings. Shapes: (U, d), (I, d)."""
        modal = self.modality_embeddings()
        items = reduce(operator.add, (h[self.num_users:] for h in modal))
        if self.modality_weights is None:
            users = modal[0][: self.num_users]
        else:
            users = reduce(operator.add, (self.modality_weights[:, m:m + 1] * h[: self.num_users]
                                          for m, h in enumerate(modal)))
        return self.user_graph_step(users), items

