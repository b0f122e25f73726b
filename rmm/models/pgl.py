"""PGL: train on a principal subgraph of the user-item graph, score on the full graph, over a frozen item kNN graph."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import KNNSpec, TrainGraph, to_csr
from rmm.models.base import BPRBatch, EmbeddingRecommender, epoch_generator
from rmm.models.freedom import register_mixed_item_graph
from rmm.models.hparams.pgl import PGLConfig
from rmm.models.layers import (
    EdgePruning,
    FeatureBank,
    bpr_loss,
    info_nce,
    lightgcn,
    modules_of,
    projections,
    reset_projections,
    smooth,
)
from rmm.models.registry import register

#: Entries of the dense (rows, I) blocks in which the global subgraph's low-rank product is thresholded.
_BLOCK_ELEMENTS = 2**22


def global_principal_graph(graph: TrainGraph, rank: int, threshold: float) -> Tensor:
    r"""PGL's global principal subgraph: with :math:`\hat{A} = \sum_i s_i u_i v_i^\top` the SVD of the normalised
    adjacency (singular values descending), its top ``rank`` triplets and :math:`n = \text{rank} / 4`,

    .. math:: G = \sum_{i < n} s_i\, s_{\text{rank} - n + i}\, u_i v_i^\top,
              \quad \text{entries with } |G_{xy}| < \text{threshold} \text{ dropped.}

    Computed from the (U, I) block :math:`\hat{R} = D_U^{-1/2} R D_I^{-1/2} = \sum_j \sigma_j p_j q_j^\top`
    (``scipy.sparse.linalg.svds`` of the top ``rank / 2`` triplets, float64): :math:`\hat{A}` is bipartite, so its
    singular values are the :math:`\sigma_j`, each twice (eigenvalues :math:`\pm\sigma_j`), and the two triplets of
    a pair sum to :math:`[0, p_j q_j^\top; q_j p_j^\top, 0]` (the user-user and item-item parts cancel). With
    ``rank`` and ``n`` even no pair is split, so
    :math:`G = [0, G_R; G_R^\top, 0]`, :math:`G_R = \sum_{j < n/2} \sigma_j \sigma_{\text{rank}/2 - n/2 + j}\,
    p_j q_j^\top`, thresholded by (rows, I) blocks: never a dense (U+I, U+I) matrix.

    Shapes:
        -> (U+I, U+I) float32 sparse CSR, symmetric.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    num_users, num_items = graph.num_users, graph.num_items
    half, pairs = rank // 2, rank // 8
    if half >= min(num_users, num_items):
        raise ValueError(f"PGL mode: global needs svd_rank / 2 < min(num_users, num_items) = "
                         f"{min(num_users, num_items)}, got svd_rank {rank}; lower svd_rank (or embedding_dim)")
    degree = graph.degrees().double().numpy()
    users, items = graph.users.numpy(), graph.items.numpy()
    values = 1.0 / np.sqrt(degree[users] * degree[num_users + items])
    norm = csr_matrix((values, (users, items)), shape=(num_users, num_items))
    start = np.random.default_rng(0).standard_normal(min(num_users, num_items))  # deterministic ARPACK start
    left, sigma, right = svds(norm, k=half, v0=start, tol=0)
    order = np.argsort(-sigma)  # svds answers ascending
    left, sigma, right = left[:, order], sigma[order], right[order]
    weights = sigma[:pairs] * sigma[half - pairs:half]  # (pairs,)
    scaled = torch.from_numpy(left[:, :pairs] * weights)  # (U, pairs)
    basis = torch.from_numpy(right[:pairs])  # (pairs, I)
    rows, cols, kept = [], [], []
    step = max(1, _BLOCK_ELEMENTS // max(1, num_items))
    for s in range(0, num_users, step):
        block = scaled[s:s + step] @ basis  # (rows, I)
        r, c = (block.abs() >= threshold).nonzero(as_tuple=True)
        rows.append(r + s)
        cols.append(c)
        kept.append(block[r, c])
    user_index, item_index = torch.cat(rows), torch.cat(cols) + num_users
    index = torch.stack([torch.cat([user_index, item_index]), torch.cat([item_index, user_index])])
    value = torch.cat(kept).float().repeat(2)
    n = num_users + num_items
    return to_csr(torch.sparse_coo_tensor(index, value, (n, n), check_invariants=True).coalesce())


@register("pgl")
class PGL(EmbeddingRecommender[PGLConfig]):
    r"""PGL (Yu, Tan, Lu & Bao, `Mind Individual Information! Principal Graph Learning for Multimedia
    Recommendation <https://doi.org/10.1609/aaai.v39i12.33429>`_, AAAI 2025), as MMRec's ``pgl.py``.

    Items have no ID embedding: an item's m-th modality block is its L2-normalised projection
    :math:`\bar{f}^m_i = \mathrm{norm}(W_m f^m_i + b_m)`; users have one free d-wide embedding per modality. Both are
    concatenated over the M modalities, :math:`\mathbf{E}_I = [\bar{f}^1 \| \dots \| \bar{f}^M]`,
    :math:`\mathbf{E}_U = [\mathbf{E}_U^1 \| \dots \| \mathbf{E}_U^M]` (M * d wide). The item-item graph
    :math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}` (``modality_weights``) is FREEDOM's: unweighted cosine kNN
    per modality of the initial features, built once and frozen. With :math:`A` a user-item graph,

    .. math:: \tilde{h} = S^{L_m} \mathbf{E}_I, \quad
              [\mathbf{e}_u; \bar{\mathbf{e}}_i] = \frac{1}{L+1}\sum_{l=0}^{L} A^l [\mathbf{E}_U; \mathbf{E}_I],
              \quad \mathbf{e}_i = \bar{\mathbf{e}}_i + \tilde{h}_i

    Training propagates over a *principal subgraph* :math:`A_P`, scoring over the full :math:`\hat{A} =
    D^{-1/2} A D^{-1/2}`. ``mode: local`` (MMRec's default): each epoch keeps
    :math:`\lfloor \text{keep\_ratio} \cdot |E| \rfloor` train edges, drawn without replacement with probability
    :math:`\propto 1/\sqrt{d_u d_i}`, :math:`D^{-1/2} A D^{-1/2}`-normalised with the kept degrees.
    ``mode: global``: the fixed :func:`global_principal_graph`. The loss, on a batch of B triples,

    .. math:: \mathcal{L} = \mathcal{L}_{BPR} + \frac{\lambda}{2} \big(\mathrm{NCE}(\delta(\mathbf{e}_u),
              \delta'(\mathbf{e}_u)) + \mathrm{NCE}(\delta(\mathbf{e}_i), \delta'(\mathbf{e}_i))\big),

    NCE the batch-mean InfoNCE (``temperature``, MMRec 0.2; the batch's second views the candidates) between two dropout
    views :math:`\delta, \delta'` of the batch's users and of its positive items; :math:`\lambda` is
    ``reg_weight`` (MMRec 0: plain BPR). No embedding penalty.

    Differences from MMRec, each a :class:`PGLConfig` switch (``strict`` / ``mmrec``): kNN graphs without / with the
    item itself (``knn_self``); modality weights uniform / image 0.1, text 0.9 (``modality_weights``); projections
    Xavier-normal / ``nn.Linear``'s default (``projection_init``); features frozen / fine-tuned
    (``train_features``). Not switched: any M >= 1 modalities (MMRec needs image and text); items without a
    feature vector get no kNN neighbours; degrees carry no ``+1e-7``; the local draw comes from a CPU generator
    seeded by ``(seed, epoch)`` (MMRec: the global RNG on the device); the dropout masks are ``torch.rand`` draws
    of the global generator (view 1 then 2 of the users, then of the items). ``global`` takes the SVD of the
    bipartite block (see :func:`global_principal_graph`; MMRec: ``sparsesvd`` of the whole adjacency, the same
    matrix) and needs ``svd_rank`` and ``svd_rank // 4`` even. MMRec's unused ``lambda_coeff`` is left out.

    Shapes:
        mm_adj: sparse (I, I); adj, masked_adj, global_adj: sparse (U+I, U+I); embeddings: (U, M d), (I, M d).
    """

    # Buffers: the item graph and its transpose, the full graph, this epoch's local subgraph (drawn by
    # self.pruning) and the global subgraph (None unless mode: global).
    mm_adj: Tensor
    mm_adj_t: Tensor
    adj: Tensor
    masked_adj: Tensor | None
    global_adj: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: PGLConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features, trainable=cfg.train_features)
        register_mixed_item_graph(self, features, item_graphs, cfg.modality_weights)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.register_buffer("masked_adj", None, persistent=False)
        global_adj = (global_principal_graph(graph, cfg.rank, cfg.global_threshold) if cfg.mode == "global"
                      else None)
        self.register_buffer("global_adj", global_adj, persistent=False)
        self.pruning = EdgePruning(graph, 1.0 - cfg.keep_ratio)
        self.user_embeddings = nn.ModuleList(nn.Embedding(self.num_users, cfg.embedding_dim)
                                             for _ in range(len(self.features)))
        self.projections = projections(self.features.dims, cfg.embedding_dim)
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: PGLConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym", include_self=cfg.knn_self)

    def reset_parameters(self) -> None:
        self.features.reset_parameters()
        reset_projections(self.projections, self.cfg.projection_init)
        for table in modules_of(self.user_embeddings, nn.Embedding):
            nn.init.xavier_uniform_(table.weight)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """``local``: this epoch's principal subgraph (``global``'s is fixed)."""
        if self.cfg.mode == "local":
            self.masked_adj = self.local_subgraph(seed, epoch)

    def local_subgraph(self, seed: int, epoch: int) -> Tensor:
        """The ``local`` principal subgraph of epoch ``epoch`` (the full graph when ``keep_ratio`` is 1)."""
        return self.adj if self.cfg.keep_ratio == 1 else self.pruning.adjacency(epoch_generator(seed, epoch))

    def train_adjacency(self) -> Tensor:
        """The principal subgraph the loss propagates over."""
        if self.global_adj is not None:
            return self.global_adj
        if self.masked_adj is None:  # a loop that never calls start_epoch still trains on a subgraph
            self.masked_adj = self.local_subgraph(0, 0)
        return self.masked_adj

    def embeddings(self, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings over user-item graph ``adj`` (the full graph when None, as for scoring).
        Shapes: (U, M d), (I, M d)."""
        items = torch.cat([F.normalize(proj(x), dim=1) for proj, x in
                           zip(modules_of(self.projections, nn.Linear), self.features.matrices(), strict=True)],
                          dim=1)  # (I, M d)
        users = torch.cat([table.weight for table in modules_of(self.user_embeddings, nn.Embedding)], dim=1)
        item_graph = smooth(self.mm_adj, items, self.cfg.num_mm_layers, self.mm_adj_t)
        users, items = lightgcn(self.adj if adj is None else adj, users, items, self.cfg.num_ui_layers)
        return users, items + item_graph

    def dropout_view(self, x: Tensor) -> Tensor:
        """Inverted dropout with a ``torch.rand`` mask from the global generator (rate ``dropout``)."""
        if self.cfg.dropout == 0:
            return x
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= self.cfg.dropout
        return x * keep / (1.0 - self.cfg.dropout)

    def contrastive(self, x: Tensor) -> Tensor:
        """Batch-mean InfoNCE between two dropout views of ``x``, the second views the candidates. (B, D) -> ()."""
        first = self.dropout_view(x)
        second = self.dropout_view(x)
        return info_nce(first, second, second, self.cfg.temperature) / len(x)

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb = self.embeddings(self.train_adjacency())
        users, pos = user_emb[batch.users], item_emb[batch.pos_items]  # (B, M d)
        ranking = bpr_loss((users * pos).sum(-1), (users * item_emb[batch.neg_items]).sum(-1))
        if self.cfg.reg_weight == 0:
            return ranking
        return ranking + self.cfg.reg_weight * (self.contrastive(users) + self.contrastive(pos)) / 2
