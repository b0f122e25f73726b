"""MMGCF: LightGCN over a degree-sensitively pruned user-item graph, its item embeddings late-fused with projected
modality features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender, epoch_generator
from rmm.models.hparams.mmgcf import MMGCFConfig
from rmm.models.layers import (
    ConcatFusion,
    EdgePruning,
    FeatureBank,
    bpr_loss,
    deferred_init,
    l2_reg,
    lightgcn,
    modules_of,
    per_distinct,
    projections,
    reset_projections,
)
from rmm.models.registry import register


@register("mmgcf")
class MMGCF(EmbeddingRecommender[MMGCFConfig]):
    r"""MMGCF (Spillo et al., `Multimodal Graph Collaborative Filtering for Recommendation with Graph Convolutional
    Networks <https://dl.acm.org/doi/abs/10.1145/3774935.3806158>`_, UMAP 2026; MMRec's ``MMGCF``).

    LightGCN over the user-item graph gives the users' and items' collaborative embeddings; each item's is then
    fused (late) with its modality features, each projected to width f, :math:`\mathbf{h}^m_i = W_m x^m_i + b_m`
    (m = 1..M, in feature order; frozen features):

    .. math:: [\mathbf{e}_u; \bar{\mathbf{e}}_i] = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l
              [\mathbf{E}_U; \mathbf{E}_I], \quad
              \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i, \quad \mathbf{e}_i = \text{weighting} \circ
              \text{fuse}(\bar{\mathbf{e}}_i, \mathbf{h}^1_i, \dots, \mathbf{h}^M_i)

    with :math:`\text{fuse}(t_1, \dots, t_n)` (``fusion_mode``) the mean :math:`\frac{1}{n}\sum_k t_k`, the sum
    :math:`\sum_k t_k`, or ``concat`` :math:`C [t_1; \dots; t_n] + c` (a learned linear map), and ``weighting``:

    - ``equal``: :math:`\mathbf{e}_i = \text{fuse}(\bar{\mathbf{e}}_i, \mathbf{m}_i)`,
      :math:`\mathbf{m}_i = \text{fuse}(\mathbf{h}^1_i, \dots, \mathbf{h}^M_i)` (:math:`\mathbf{h}^1_i` itself
      when M = 1; concat uses a separate map per stage);
    - ``alpha``: :math:`\mathbf{e}_i = \text{fuse}(\alpha \bar{\mathbf{e}}_i, (1-\alpha)\mathbf{h}^1_i, \dots,
      (1-\alpha)\mathbf{h}^M_i)`, :math:`\alpha = \sigma(a)`, a learned scalar starting at :math:`a = 0`;
    - ``normalized``: :math:`\mathbf{e}_i = \text{fuse}(M\, \widehat{\bar{\mathbf{e}}}_i, \hat{\mathbf{h}}^1_i,
      \dots, \hat{\mathbf{h}}^M_i)`, :math:`\hat{v} = v / \max(\lVert v \rVert, 10^{-12})`.

    :math:`\hat{A} = D^{-1/2} A D^{-1/2}` (users first). Training propagates over a pruned graph: each epoch keeps
    :math:`\lfloor (1 - \text{dropout}) |E| \rfloor` train edges, drawn without replacement with probability
    :math:`\propto 1/\sqrt{d_u d_i}` (train degrees), renormalised with the kept degrees; scoring uses the full
    :math:`\hat{A}`. Loss: BPR on the final embeddings plus ``reg_weight`` times
    :math:`\frac{1}{2B}(\lVert E^{(0)}_u\rVert^2 + \lVert E^{(0)}_i\rVert^2 + \lVert E^{(0)}_j\rVert^2)` of the
    batch's layer-0 ID rows. Users carry no content.

    Any number M >= 1 of modalities: MMRec's code has image then text (M <= 2); this is the same maths for any M.
    Differences from MMRec, each a :class:`~rmm.models.hparams.mmgcf.MMGCFConfig` switch (``strict`` /
    ``mmrec``): projections Xavier-normal / ``nn.Linear``'s default (``projection_init``). Not switched: degrees
    carry no ``+1e-7``; only the concat layers the chosen weighting uses are built (MMRec also builds, and
    draws, the unused one, which changes its random stream, not its maths); the pruning draw comes from a CPU
    generator seeded by ``(seed, epoch)`` (MMRec: the global RNG on the device), so ranks agree and a resumed
    run replays. An item without a feature vector (zero row) gets its projection's bias.

    Shapes:
        adj, masked_adj: sparse (U+I, U+I); ID embeddings (U, d), (I, d); projections d_m -> f; concat maps
        (d + M f) -> d, or (M f) -> f and (d + f) -> d under ``equal``; final embeddings (U, d), (I, d).
    """

    # Buffers: the full and this epoch's pruned user-item graphs (the pruning draw: self.pruning).
    adj: Tensor
    masked_adj: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MMGCFConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.register_buffer("masked_adj", None, persistent=False)
        self.pruning = EdgePruning(graph, cfg.dropout)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.projections = projections(self.features.dims, cfg.feat_embed_dim)
        count, d, f = len(self.features), cfg.embedding_dim, cfg.feat_embed_dim
        # The concat maps the weighting uses: modalities then ID + modalities under `equal`, all at once otherwise.
        self.concat_layers = nn.ModuleList()
        if cfg.fusion_mode == "concat":
            if cfg.weighting != "equal":
                self.concat_layers.append(deferred_init(lambda: ConcatFusion([d] + [f] * count, d)))
            else:
                if count > 1:
                    self.concat_layers.append(deferred_init(lambda: ConcatFusion([f] * count, f)))
                self.concat_layers.append(deferred_init(lambda: ConcatFusion([d, f], d)))
        self.alpha_logit = nn.Parameter(torch.empty(())) if cfg.weighting == "alpha" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        reset_projections(self.projections, self.cfg.projection_init)
        for layer in modules_of(self.concat_layers, ConcatFusion):
            layer.proj.reset_parameters()
        if self.alpha_logit is not None:
            nn.init.zeros_(self.alpha_logit)  # alpha = sigmoid(0) = 0.5, as MMRec

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Degree-sensitive edge pruning: this epoch's user-item graph."""
        if self.cfg.dropout == 0:
            self.masked_adj = self.adj
            return
        self.masked_adj = self.pruning.adjacency(epoch_generator(seed, epoch))

    def fuse(self, rows: Sequence[Tensor], layer: ConcatFusion | None) -> Tensor:
        """``fusion_mode`` of ``rows``: their mean, their sum, or ``layer`` of their concatenation.
        Shapes: n x (I, *) -> (I, out)."""
        if self.cfg.fusion_mode == "mean":
            return torch.stack(list(rows)).mean(0)
        if self.cfg.fusion_mode == "sum":
            return torch.stack(list(rows)).sum(0)
        if layer is None:
            raise RuntimeError("concat fusion needs its linear map")
        return layer(rows)

    def fused_items(self, items: Tensor, rows: Tensor | None = None) -> Tensor:
        """The collaborative item embeddings ``items`` of catalogue rows ``rows`` (every item when None) fused
        with their projected modalities, by ``weighting`` (row-wise: any subset gives the same rows).
        Shapes: (n, d), (n,) -> (n, d)."""
        matrices = self.features.matrices()
        if rows is not None:
            matrices = [x.index_select(0, rows) for x in matrices]
        modal = [proj(x) for proj, x in zip(modules_of(self.projections, nn.Linear), matrices,
                                            strict=True)]  # M x (n, f)
        layers: list[ConcatFusion | None] = list(modules_of(self.concat_layers, ConcatFusion)) or [None, None]
        if self.cfg.weighting == "equal":
            mixed = modal[0] if len(modal) == 1 else self.fuse(modal, layers[0])  # (n, f)
            return self.fuse([items, mixed], layers[-1])
        if self.cfg.weighting == "alpha":
            if self.alpha_logit is None:
                raise RuntimeError("alpha weighting needs its gate parameter")
            alpha = torch.sigmoid(self.alpha_logit)
            return self.fuse([alpha * items] + [(1 - alpha) * h for h in modal], layers[0])
        return self.fuse([len(modal) * F.normalize(items, dim=1)] + [F.normalize(h, dim=1) for h in modal],
                         layers[0])

    def embeddings(self, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings over user-item graph ``adj`` (the full graph when None, as for scoring)."""
        users, items = lightgcn(self.adj if adj is None else adj, self.user_embedding.weight,
                                self.item_embedding.weight, self.cfg.num_ui_layers)
        return users, self.fused_items(items)

    def loss(self, batch: BPRBatch) -> Tensor:
        if self.masked_adj is None:  # a loop that never calls start_epoch still trains on a pruned graph
            self.start_epoch(0, 0)
        user_emb, collaborative = lightgcn(cast(Tensor, self.masked_adj), self.user_embedding.weight,
                                           self.item_embedding.weight, self.cfg.num_ui_layers)
        # Fusion is row-wise, so only the batch's distinct items are projected, not the catalogue: at 7k items x
        # 4,096-d image features the projections were two thirds of a step.
        items = torch.cat([batch.pos_items, batch.neg_items])
        pos, neg = per_distinct(items, lambda rows: self.fused_items(collaborative.index_select(0, rows), rows)
                                ).split(len(batch.pos_items))  # (B, d) each
        users = user_emb[batch.users]  # (B, d)
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        reg = l2_reg(self.user_embedding.weight.index_select(0, batch.users),
                     self.item_embedding.weight.index_select(0, batch.pos_items),
                     self.item_embedding.weight.index_select(0, batch.neg_items), norm=self.cfg.reg_norm)
        return ranking + self.cfg.reg_weight * reg
