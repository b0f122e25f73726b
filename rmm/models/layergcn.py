"""LayerGCN: layer-refined graph convolution over a user-item graph pruned degree-sensitively each epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender, epoch_generator
from rmm.models.hparams.layergcn import LayerGCNConfig
from rmm.models.layers import EdgePruning, bpr_loss, l2_reg, sparse_matmul
from rmm.models.registry import register

#: Smallest row norm of a cosine (``F.cosine_similarity``'s default ``eps``): a zero row gets cosine 0.
COSINE_EPS = 1e-8


class _EgoCosineScale(torch.autograd.Function):
    r"""Row v of ``layer`` scaled by :math:`\cos(\mathbf{h}_v, \mathbf{e}_v)`, given the unit ego rows
    :math:`\hat{\mathbf{e}}_v`, with a hand-written backward: autograd of ``F.cosine_similarity`` times the
    layer made some 25 elementwise passes over (N, d) per layer, most of LayerGCN's step; this takes 5 forward
    and 7 backward. With :math:`\mathbf{u} = \mathbf{h}/\lVert\mathbf{h}\rVert`,
    :math:`c = \mathbf{u}^\top\hat{\mathbf{e}}` and the output's gradient :math:`\mathbf{g}`,
    :math:`t = \mathbf{g}^\top\mathbf{u}`:

    .. math:: \nabla_{\mathbf{h}} = c\,\mathbf{g} + t\,(\hat{\mathbf{e}} - c\,\mathbf{u}), \quad
              \nabla_{\hat{\mathbf{e}}} = t\,\mathbf{h}

    (a zero row: c = 0 and t = 0, so output and gradients are 0, as through ``F.cosine_similarity``).

    Shapes: layer (N, d), ego_unit (N, d) -> (N, d).
    """

    @staticmethod
    def forward(ctx: Any, layer: Tensor, ego_unit: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(layer, dim=1, keepdim=True).clamp_min_(COSINE_EPS)  # (N, 1)
        unit = layer / norm
        cosine = (unit * ego_unit).sum(1, keepdim=True)  # (N, 1)
        ctx.save_for_backward(layer, unit, ego_unit, cosine)
        return cosine * layer

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        layer, unit, ego_unit, cosine = ctx.saved_tensors
        along = (grad * unit).sum(1, keepdim=True)  # (N, 1)
        grad_layer = torch.addcmul(cosine * grad, along, ego_unit - cosine * unit)
        return grad_layer, along * layer


def refined_layers(adj: Tensor, ego: Tensor, num_layers: int) -> Tensor:
    r"""LayerGCN's readout :math:`\sum_{l=1}^{L} E^{(l)}` of the refined layers
    :math:`E^{(l)} = \mathrm{diag}(\cos(\hat{A} E^{(l-1)}, E^{(0)}))\, \hat{A} E^{(l-1)}` (row-wise cosine to the
    ego layer; a zero row gets weight 0).

    Shapes:
        adj: (N, N) sparse, symmetric; ego: (N, d) -> (N, d).
    """
    ego_unit = F.normalize(ego, dim=1, eps=COSINE_EPS)  # once for every layer
    total = torch.zeros_like(ego)
    layer = ego
    for _ in range(num_layers):
        layer = _EgoCosineScale.apply(sparse_matmul(adj, layer), ego_unit)  # (N, d)
        total = total + layer
    return total


@register("layergcn")
class LayerGCN(EmbeddingRecommender[LayerGCNConfig]):
    r"""LayerGCN (Zhou et al., `Layer-refined Graph Convolutional Networks for Recommendation
    <https://arxiv.org/abs/2207.11088>`_, ICDE 2023; MMRec's ``LayerGCN``). ID-only.

    Each propagated layer is re-weighted per node by its cosine similarity to the ego layer, and the final
    embeddings sum the refined layers (the ego layer itself is left out of the sum):

    .. math:: H^{(l)} = \hat{A} E^{(l-1)}, \quad
              E^{(l)}_v = \cos(H^{(l)}_v, E^{(0)}_v)\, H^{(l)}_v, \quad
              \mathbf{E} = \sum_{l=1}^{L} E^{(l)}, \quad \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i

    with :math:`\hat{A} = D^{-1/2} A D^{-1/2}` over users then items. Training propagates over a pruned graph:
    each epoch keeps :math:`\lfloor (1 - \text{dropout}) |E| \rfloor` train edges, drawn without replacement with
    probability :math:`\propto 1/\sqrt{d_u d_i}` (full-graph degrees), renormalised with the kept degrees;
    scoring uses the full :math:`\hat{A}`. Loss: BPR on the final embeddings plus ``reg_weight`` times
    :math:`\frac{1}{2B}(\lVert E^{(0)}_u\rVert^2 + \lVert E^{(0)}_i\rVert^2 + \lVert E^{(0)}_j\rVert^2)` of the
    batch's ego rows. Gradients flow through the cosine weights too.

    Differences from MMRec, each a :class:`LayerGCNConfig` switch (``strict`` / ``mmrec``): pruning
    degree-sensitive every epoch / alternating with uniform pruning on odd epochs (``alternate_pruning``); batch
    mean / batch sum of the loss (``loss_reduction``). Not switched: degrees carry no ``+1e-7``; BPR is
    ``softplus`` (MMRec's ``-logsigmoid``, the same function); the pruning draw comes from a CPU generator seeded
    by ``(seed, epoch)`` (MMRec: the global RNG), so ranks agree and a resumed run replays. A node without train
    edges (or without kept ones) has zero refined layers, hence a zero final embedding, as in MMRec.

    Shapes:
        adj, masked_adj: sparse (U+I, U+I); user/item embeddings: (U, d), (I, d).
    """

    # Buffers: the full and this epoch's pruned user-item graphs (the pruning draw: self.pruning).
    adj: Tensor
    masked_adj: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LayerGCNConfig) -> None:
        super().__init__(graph, features, cfg)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.register_buffer("masked_adj", None, persistent=False)
        self.pruning = EdgePruning(graph, cfg.dropout)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Edge pruning: this epoch's user-item graph."""
        if self.cfg.dropout == 0:
            self.masked_adj = self.adj
            return
        # degree-sensitive, or uniform on odd epochs under alternate_pruning
        uniform = self.cfg.alternate_pruning and epoch % 2 == 1
        self.masked_adj = self.pruning.adjacency(epoch_generator(seed, epoch), uniform=uniform)

    def embeddings(self, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings over user-item graph ``adj`` (the full graph when None, as for scoring)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])  # (U+I, d)
        final = refined_layers(self.adj if adj is None else adj, ego, self.cfg.num_layers)
        return final[: self.num_users], final[self.num_users:]

    def loss(self, batch: BPRBatch) -> Tensor:
        if self.masked_adj is None:  # a loop that never calls start_epoch still trains on a pruned graph
            self.start_epoch(0, 0)
        user_emb, item_emb = self.embeddings(self.masked_adj)
        users = user_emb[batch.users]  # (B, d)
        ranking = bpr_loss((users * item_emb[batch.pos_items]).sum(-1), (users * item_emb[batch.neg_items]).sum(-1))
        reg = l2_reg(self.user_embedding.weight.index_select(0, batch.users),
                     self.item_embedding.weight.index_select(0, batch.pos_items),
                     self.item_embedding.weight.index_select(0, batch.neg_items), norm=self.cfg.reg_norm)
        total = ranking + self.cfg.reg_weight * reg
        return total * len(batch.users) if self.cfg.loss_reduction == "sum" else total
