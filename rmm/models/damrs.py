"""DA-MRS: cross-modally denoised item-item graphs, a behaviour item graph, a content-weighted BPR loss and two
alignments of content with user feedback."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import (
    KNNSpec,
    TrainGraph,
    normalize_edges,
    to_csr,
    unit_rows,
    user_cooccurrence_graph,
    valid_rows,
)
from rmm.models.base import BPRBatch, Recommender, inner_product_scorer
from rmm.models.hparams.damrs import DAMRSConfig
from rmm.models.layers import block_rows, lightgcn, product_logsumexp, smooth
from rmm.models.registry import register


def _binary_sym_graph(rows: Tensor, cols: Tensor, num_items: int) -> Tensor:
    r"""The unweighted edges ``rows -> cols`` normalised :math:`D^{-1/2} A D^{-1/2}` (D the row sums).
    Shapes: (E,), (E,) -> (I, I) float32 sparse COO, coalesced."""
    index = torch.stack([rows, cols])
    values = normalize_edges(index, torch.ones(len(rows)), num_items, "sym")
    return torch.sparse_coo_tensor(index, values, (num_items, num_items), check_invariants=True).coalesce()


def _top_per_row(rows: Tensor, scores: Tensor, k: int) -> Tensor:
    """Which entries are among the ``k`` highest ``scores`` of their row. Shapes: (E,), (E,) -> (E,) bool."""
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(rows[by_score], stable=True)]  # rows ascending, scores descending within
    sorted_rows = rows[order]
    per_row = torch.bincount(sorted_rows)
    rank = torch.arange(len(order)) - (torch.cumsum(per_row, 0) - per_row)[sorted_rows]
    keep = torch.zeros(len(rows), dtype=torch.bool)
    keep[order[rank < k]] = True
    return keep


def consistent_knn_graphs(features: Sequence[Tensor], candidates: Sequence[Tensor], k: int) -> list[Tensor]:
    r"""DA-MRS's denoised item-item graphs, one per modality: item :math:`i`'s ``k`` most similar items in
    modality :math:`m` among those whose cosine reaches the mean cosine :math:`\bar{s}^{m'}` in *every*
    modality :math:`m'`, unweighted and :math:`D^{-1/2} S D^{-1/2}`-normalised.

    The mean over all pairs of the :math:`V_{m'}` items with a vector is
    :math:`\bar{s}^{m'} = \lVert\sum_i \hat{x}^{m'}_i\rVert^2 / V_{m'}^2` (no I x I matrix). Candidates are the
    edges of each modality's cosine kNN graph (``candidates[m]``, weighted, unnormalised); a pair is judged
    only by the modalities in which both items have a vector. Cosines are recomputed in float64.

    Shapes:
        features: M x (I, d_m); candidates: M x (I, I) sparse COO -> M x (I, I) float32 sparse COO.
    """
    units = [unit_rows(x.cpu().double()) for x in features]
    valid = [valid_rows(x).cpu() for x in features]
    means = [units[m].sum(0).pow(2).sum() / max(1, int(valid[m].sum())) ** 2 for m in range(len(features))]
    graphs = []
    for own, candidate in enumerate(candidates):
        rows, cols = candidate.coalesce().indices().cpu()
        keep = torch.ones(len(rows), dtype=torch.bool)
        similarity = torch.zeros(len(rows), dtype=torch.float64)
        for m, (unit, ok, mean) in enumerate(zip(units, valid, means, strict=True)):
            cosine = _edge_cosines(unit, rows, cols)
            keep &= ~(ok[rows] & ok[cols]) | (cosine >= mean)
            if m == own:
                similarity = cosine
        top = _top_per_row(rows[keep], similarity[keep], k)
        graphs.append(_binary_sym_graph(rows[keep][top], cols[keep][top], len(features[own])))
    return graphs


def _edge_cosines(unit: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``unit[rows] . unit[cols]`` per edge, in blocks of edges (never an E x d copy of a wide feature).
    Shapes: (I, d), (E,), (E,) -> (E,)."""
    step = max(1, (1 << 22) // max(1, unit.shape[1]))
    return torch.cat([(unit[rows[start:start + step]] * unit[cols[start:start + step]]).sum(1)
                      for start in range(0, len(rows), step)] or [unit.new_zeros(0)])


def behaviour_graph(graph: TrainGraph, k: int, min_count: int) -> Tensor:
    r"""DA-MRS's item-item behaviour graph: every item with itself and its ``k`` items sharing the most train users
    (at least ``min_count``; ties towards the smaller id), unweighted and :math:`D^{-1/2} S D^{-1/2}`-normalised
    (D the row sums). Built from the sparse co-occurrence :math:`R^\top R` in chunks, never a dense I x I.

    Shapes:
        -> (I, I) float32 sparse COO.
    """
    items_as_users = TrainGraph(graph.num_items, graph.num_users, users=graph.items.cpu(), items=graph.users.cpu())
    shared = user_cooccurrence_graph(items_as_users, k)  # top k by count, then by id
    rows, cols = shared.indices()
    enough = shared.values() >= min_count  # the top k of the counts >= min_count: those counts lead every row
    itself = torch.arange(graph.num_items)
    return _binary_sym_graph(torch.cat([itself, rows[enough]]), torch.cat([itself, cols[enough]]), graph.num_items)


def symmetric_bernoulli_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\sigma(a) \Vert \sigma(b)) + \mathrm{KL}(\sigma(b) \Vert \sigma(a))` of Bernoulli
    variables given by logits, elementwise, in its closed form :math:`(\sigma(a) - \sigma(b))(a - b)` (the
    log-ratio terms of the two directions combine into the difference of the logits): five elementwise passes
    instead of two KLs' twenty over the batch's users x items, and no ``log(0)`` when a probability saturates."""
    return (torch.sigmoid(logit_p) - torch.sigmoid(logit_q)) * (logit_p - logit_q)


@torch.no_grad()
def pseudo_positives(anchors: Sequence[Tensor], units: Sequence[Tensor], count: int,
                     temperature: float) -> list[tuple[Tensor, Tensor, Tensor]]:
    r"""Per view :math:`v`, each anchor's multi-view pseudo-positives :math:`N^v_i` (the top ``count`` of
    :math:`\sum_w \pi^w_i + \pi^v_i`), its single-view ones :math:`T^v_i` (the top ``count`` of :math:`\pi^v_i`
    outside :math:`N^v_i`) and :math:`\log\sum_j e^{\hat{h}^v_i \cdot \hat{h}^v_j / \tau}`, all from one pass over
    blocks of anchors: each block's V cosine matrices are made, used and dropped while in cache, where the whole
    (I_b, I) matrices would be written and re-read about ten times (softmax, their sum, two top-k, the scores).

    Shapes:
        anchors: V x (I_b, d) unit rows; units: V x (I, d) unit rows -> V x ((I_b, count), (I_b, count), (I_b,)).
    """
    # float32 even under autocast: the logsumexp is the one product_logsumexp's backward remakes in float32
    anchors = [anchor.float() for anchor in anchors]
    units = [unit.float() for unit in units]
    size = len(anchors[0])
    multi = [torch.empty(size, count, dtype=torch.long, device=a.device) for a in anchors]
    single = [torch.empty_like(m) for m in multi]
    logsumexp = [a.new_empty(size) for a in anchors]
    rows = block_rows(units[0])
    with torch.autocast(units[0].device.type, enabled=False):
        for start in range(0, size, rows):
            block = slice(start, start + rows)
            cosines = [anchor[block] @ unit.T for anchor, unit in zip(anchors, units, strict=True)]  # V x (rows, I)
            probs = [torch.softmax(cosine, dim=1) for cosine in cosines]
            every = reduce(operator.add, probs)
            for v, (cosine, prob) in enumerate(zip(cosines, probs, strict=True)):
                multi[v][block] = torch.topk(every + prob, count, dim=1).indices
                single[v][block] = torch.topk(prob.scatter_(1, multi[v][block], 0.0), count, dim=1).indices
                logsumexp[v][block] = torch.logsumexp(cosine.div_(temperature), dim=1)
    return list(zip(multi, single, logsumexp, strict=True))


@register("damrs")
class DAMRS(Recommender[DAMRSConfig]):
    r"""DA-MRS (Xu et al., `Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content
    and User Feedback <https://arxiv.org/abs/2406.12501>`_, KDD 2024), on the LightGCN backbone (MMRec's
    ``damrs.py``).

    **Denoised item graphs.** Per modality :math:`m`, :math:`S^m` links item :math:`i` to its ``knn_k`` most
    similar items among those whose cosine is at least the mean cosine in *every* modality
    (:func:`consistent_knn_graphs`); the behaviour graph :math:`S^b` links it to itself and its ``behaviour_k``
    top co-interacted items (:func:`behaviour_graph`). Both are unweighted, :math:`D^{-1/2} S D^{-1/2}`
    (row sums). With views :math:`v \in \{1..M, b\}` (:math:`V = M + 1`):

    .. math:: \mathbf{H}^v = (S^v)^{L_m} \mathbf{E}_{id}, \quad \bar{\mathbf{H}} = \tfrac{1}{V}\sum_v \mathbf{H}^v,
              \quad [\mathbf{e}_u; \mathbf{g}_i] = \tfrac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l \mathbf{E}, \quad
              \hat{y}_{ui} = \mathbf{e}_u^\top (\mathbf{g}_i + \bar{\mathbf{h}}_i)

    **Denoised BPR.** With :math:`p^v_{ui} = \sigma(\mathbf{e}_u^\top \hat{\mathbf{h}}^v_i)` (hat: unit length),
    positive weight :math:`w^+ = \mathrm{clip}(\mu_v(p^v_{ui})\, e^{-2\,\mathrm{Var}_v(p^v_{ui})})` (unbiased
    variance) and negative weight :math:`w^- = \mathrm{clip}(\max_v p^v_{ui} - \bar{n})
    [\mu_v(p^v_{ui}) < \bar{n}]`, :math:`\bar{n}` the mean of :math:`p^v_{uj}` over views *and the batch*
    (MMRec's form), both constants (no gradient), clipped to [0, 1]:

    .. math:: \mathcal{L}_{BPR} = -\tfrac{1}{B}\textstyle\sum w^+ \ln\sigma(\hat{y}_{ui} - \hat{y}_{uj})
              + w^- \ln\sigma(\hat{y}_{uj} - \hat{y}_{ui})

    **Alignment guided by user preference** (the batch's distinct users :math:`U_b` and items :math:`I_b`):
    :math:`P = \sigma(\mathbf{e}_u^\top \hat{\mathbf{g}}_i)`, :math:`Q = \sigma(\mathbf{e}_u^\top
    \hat{\bar{\mathbf{h}}}_i)`, :math:`\mathcal{L}_{AU} = \mathrm{mean}_{U_b \times I_b}\,
    \mathrm{KL}(P \Vert Q) + \mathrm{KL}(Q \Vert P)` (Bernoulli).

    **Alignment guided by graded item relations.** For anchor :math:`i \in I_b`, :math:`\pi^v_i =
    \mathrm{softmax}_j(\hat{\mathbf{h}}^v_i \cdot \hat{\mathbf{h}}^v_j)` over all items; the multi-view positives
    :math:`N^v_i` are the top n of :math:`\sum_w \pi^w_i + \pi^v_i`, the single-view ones :math:`T^v_i` the top n
    of :math:`\pi^v_i` outside :math:`N^v_i` (n = ``num_pseudo_positives``); with
    :math:`s_{ij} = \exp(\hat{\mathbf{h}}^v_i \cdot \hat{\mathbf{h}}^v_j / \tau)`,

    .. math:: \mathcal{L}_{AI} = \tfrac{1}{V}\sum_v \mathrm{mean}_i \Big[-\ln\Big(\frac{\sum_{N^v_i} s_{ij}}
              {\sum_{j} s_{ij}} + \epsilon\Big) - \ln\Big(\frac{\sum_{T^v_i} s_{ij}}
              {\sum_{j} s_{ij} - \sum_{N^v_i} s_{ij}} + \epsilon\Big)\Big], \quad \epsilon = 10^{-9}

    .. math:: \mathcal{L} = \mathcal{L}_{BPR} + \lambda_{AI}\mathcal{L}_{AI} + \lambda_{AU}\mathcal{L}_{AU}

    Differences from MMRec, each a :class:`DAMRSConfig` switch (``strict`` / ``mmrec`` value): kNN graphs without
    / with the item itself (``knn_self``). Not switched: MMRec's two hard-coded modalities become any number
    M >= 1 (the mean filter over all of them, the views averaged, the weights' variance over M + 1 views); the
    filter picks among each modality's ``knn_candidates`` nearest items (the cached graph) rather than the whole
    row; an item without a vector in a modality has no neighbours there and is judged by the other modalities
    only (MMRec's cosine is NaN); the behaviour graph is built from the train graph here, uncached (a chunked
    sparse product; MMRec reads it from ``item_graph_dict_2.npy``, made by DA-MRS's ``build_iib_graph.py`` from
    the same counts); its count ties broken towards the smaller id (MMRec: ``torch.topk``'s order); degrees carry
    no ``+1e-7``; the BPR terms use log-sigmoids and the two KLs their closed sum (:func:`symmetric_bernoulli_kl`;
    equal values, no ``log(0)`` at saturation); n is at most half the catalogue (MMRec fails on fewer than 2n
    items); MMRec's unused modality projections are not built. No per-epoch randomness.

    Shapes:
        adj: sparse (U+I, U+I); view graphs: sparse (I, I) each; user/item embeddings: (U, d), (I, d).
    """

    adj: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: DAMRSConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        candidates = self.build_item_graphs(features, item_graphs)
        views = consistent_knn_graphs(list(features.values()), candidates, cfg.knn_k)
        views.append(behaviour_graph(graph, cfg.behaviour_k, cfg.behaviour_min_count))
        self.num_views = len(views)
        for v, view in enumerate(views):  # directed: keep each transpose for the backward pass
            self.register_buffer(f"view_adj_{v}", to_csr(view), persistent=False)
            self.register_buffer(f"view_adj_t_{v}", to_csr(view.t()), persistent=False)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: DAMRSConfig) -> KNNSpec:
        """Each modality's candidate neighbours: its weighted cosine kNN graph, unnormalised."""
        return KNNSpec(k=cfg.knn_candidates, similarity="cosine", include_self=cfg.knn_self)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def propagate(self) -> tuple[Tensor, Tensor, list[Tensor]]:
        """LightGCN user and item embeddings and every view's item embeddings :math:`\\mathbf{H}^v` (modalities in
        feature order, then behaviour). Shapes: (U, d), (I, d), V x (I, d)."""
        users, items = lightgcn(self.adj, self.user_embedding.weight, self.item_embedding.weight,
                                self.cfg.num_ui_layers)
        views = [smooth(self.get_buffer(f"view_adj_{v}"), self.item_embedding.weight, self.cfg.num_mm_layers,
                        self.get_buffer(f"view_adj_t_{v}")) for v in range(self.num_views)]
        return users, items, views

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings: :math:`\\mathbf{e}_u` and :math:`\\mathbf{g}_i + \\bar{\\mathbf{h}}_i`.
        Shapes: (U, d), (I, d)."""
        users, items, views = self.propagate()
        return users, items + torch.stack(views).mean(0)

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return inner_product_scorer(*self.embeddings())

    def loss(self, batch: BPRBatch) -> Tensor:
        users, items, views = self.propagate()
        content = torch.stack(views).mean(0)  # (I, d)
        user_ids = torch.unique(batch.users)
        item_ids = torch.unique(torch.cat([batch.pos_items, batch.neg_items]))
        ranking = self.denoised_bpr(batch, users, items + content, views)
        total = ranking
        if self.cfg.kl_weight > 0:
            total = total + self.cfg.kl_weight * self.preference_alignment(users[user_ids], items[item_ids],
                                                                           content[item_ids])
        if self.cfg.neighbor_weight > 0:
            total = total + self.cfg.neighbor_weight * self.relation_alignment(item_ids, views)
        return total

    def denoised_bpr(self, batch: BPRBatch, users: Tensor, items: Tensor, views: Sequence[Tensor]) -> Tensor:
        """:math:`\\mathcal{L}_{BPR}` with the content-derived weights (constants). Shapes: users (U, d), items
        (I, d) final, views V x (I, d) -> ()."""
        u = users[batch.users]  # (B, d)
        with torch.no_grad():
            pos = torch.stack([torch.sigmoid((u * F.normalize(h[batch.pos_items], dim=1)).sum(1)) for h in views])
            neg = torch.stack([torch.sigmoid((u * F.normalize(h[batch.neg_items], dim=1)).sum(1)) for h in views])
            pos_mean = pos.mean(0)  # (B,)
            neg_mean = neg.mean()  # one value for the whole batch
            pos_weight = (pos_mean * torch.exp(-2 * pos.var(0))).clamp(0, 1)
            neg_weight = ((pos.amax(0) - neg_mean) * (pos_mean < neg_mean)).clamp(0, 1)
        gap = (u * items[batch.pos_items]).sum(1) - (u * items[batch.neg_items]).sum(1)  # (B,)
        return (pos_weight * F.softplus(-gap) + neg_weight * F.softplus(gap)).mean()

    @staticmethod
    def preference_alignment(users: Tensor, items: Tensor, content: Tensor) -> Tensor:
        """:math:`\\mathcal{L}_{AU}` over the batch's users x items. Shapes: (U_b, d), (I_b, d), (I_b, d) -> ()."""
        behaviour = users @ F.normalize(items, dim=1).T  # (U_b, I_b) logits
        modal = users @ F.normalize(content, dim=1).T
        return symmetric_bernoulli_kl(behaviour, modal).mean()

    def relation_alignment(self, item_ids: Tensor, views: Sequence[Tensor]) -> Tensor:
        """:math:`\\mathcal{L}_{AI}`: each view's anchors against pseudo-positives graded by all views. Shapes:
        item_ids (I_b,), views V x (I, d) -> ()."""
        count = max(1, min(self.cfg.num_pseudo_positives, self.num_items // 2))
        temperature = self.cfg.temperature
        units = [F.normalize(h, dim=1) for h in views]
        anchors = [unit.index_select(0, item_ids) for unit in units]  # V x (I_b, d)
        positives = pseudo_positives(anchors, units, count, temperature)
        total = anchors[0].new_zeros(())
        for anchor, unit, (multi, single, logsumexp) in zip(anchors, units, positives, strict=True):
            # sum_j s_ij, differentiated by blocks too (the (I_b, I) scores are never kept)
            everyone = product_logsumexp(anchor / temperature, unit, logsumexp).exp()  # (I_b,)
            # the pseudo-positives' scores from their rows (as MMRec): a gather from the (I_b, I) scores would
            # scatter its gradient back into a zeroed (I_b, I) matrix; index_select's backward is an index_add
            multi_sum, single_sum = (
                torch.exp(torch.einsum("bd,bnd->bn", anchor, unit.index_select(0, picked.view(-1)).view(
                    *picked.shape, -1)) / temperature).sum(1) for picked in (multi, single))
            total = total + (-torch.log(multi_sum / everyone + 1e-9)
                             - torch.log(single_sum / (everyone - multi_sum) + 1e-9)).mean()
        return total / len(views)
