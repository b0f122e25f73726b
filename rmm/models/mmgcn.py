"""MMGCN: one graph convolution branch per modality over the user-item graph, each with ID embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.mmgcn import MMGCNConfig
from rmm.models.layers import FeatureBank, deferred_init, modules_of, sparse_matmul
from rmm.models.registry import register


def mmrec_id_reg(ids: Tensor, batch: BPRBatch, num_users: int) -> Tensor:
    r"""MMRec's (and the authors' code's) penalty on a batch's ID rows in MMGCN and GRCN: the *element mean* of
    squares over the ``(2B, D)`` stacks of user rows (each user once per item) and item rows (positive and
    negative), :math:`\frac{1}{2BD}\sum_b (2\lVert e_{u_b} \rVert^2 + \lVert e_{i_b} \rVert^2
    + \lVert e_{j_b} \rVert^2)`.

    Shapes:
        ids: (U+I, D), users then items -> ().
    """
    users = ids[batch.users]  # (B, D)
    pos, neg = ids[num_users + batch.pos_items], ids[num_users + batch.neg_items]
    return (2 * users.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()) / (2 * users.numel())


def mmrec_regulariser(ids: Tensor, visual_preference: Tensor, batch: BPRBatch, num_users: int) -> Tensor:
    """MMRec's MMGCN penalty (GRCN's adds a term to it): :func:`mmrec_id_reg` of the batch's ID rows plus the
    element mean of squares of the first (visual) branch's whole user-preference table (U, d)."""
    return mmrec_id_reg(ids, batch, num_users) + visual_preference.pow(2).mean()


class ModalityGCN(nn.Module):
    r"""One MMGCN branch: a modality's user preferences and (projected) item features, convolved ``num_layers``
    times over the user-item graph, each layer combined with the shared ID embeddings.

    .. math:: \mathbf{x}^{(0)} = \mathrm{norm}([P; W_0 F + b_0]), \quad
              \mathbf{h}^{(l)}_v = \mathrm{lrelu}\big(\tfrac{1}{|N(v)|} \textstyle\sum_{j \in N(v)}
                  W_1^{(l)} \mathbf{x}_j^{(l)}\big), \quad
              \hat{\mathbf{x}}^{(l)}_v = \mathrm{lrelu}(W_2^{(l)} \mathbf{x}^{(l)}_v + b_2^{(l)})
                  + \mathbf{e}^{id}_v,

    then ``sum``: :math:`\mathbf{x}^{(l+1)}_v = \mathrm{lrelu}(W_3^{(l)} \mathbf{h}^{(l)}_v + b_3^{(l)}
    + \hat{\mathbf{x}}^{(l)}_v)`, or ``concat``: :math:`\mathrm{lrelu}(W_3^{(l)} [\mathbf{h}^{(l)}_v;
    \hat{\mathbf{x}}^{(l)}_v] + b_3^{(l)})`. Without a projection (``latent_dim`` None), :math:`W_0 F + b_0`
    is ``F`` itself and the preferences have its width.

    Shapes:
        preference: (U, w); features (I, dim) -> x^{(0)} (U+I, w) -> (U+I, embedding_dim), with w
        ``latent_dim`` or ``dim``.
    """

    def __init__(self, num_users: int, dim: int, latent_dim: int | None, embedding_dim: int, num_layers: int, *,
                 combination: str = "sum", combine_init: str = "xavier") -> None:
        super().__init__()
        self.concat = combination == "concat"
        self.combine_init = combine_init
        width = dim if latent_dim is None else latent_dim
        self.preference = nn.Parameter(torch.empty(num_users, width))
        self.mlp = None if latent_dim is None else deferred_init(lambda: nn.Linear(dim, latent_dim))
        widths = [width] + [embedding_dim] * (num_layers - 1)
        self.conv = deferred_init(lambda: nn.ModuleList(nn.Linear(w, w, bias=False) for w in widths))
        self.linear = deferred_init(lambda: nn.ModuleList(nn.Linear(w, embedding_dim) for w in widths))
        self.combine = deferred_init(lambda: nn.ModuleList(
            nn.Linear(w + embedding_dim if self.concat else w, embedding_dim) for w in widths))

    def reset_parameters(self) -> None:
        """Called by :meth:`MMGCN.reset_parameters`, the model's one init site. Every layer starts from
        ``nn.Linear``'s own initialisation (the biases and the projection keep it), then the weights are drawn
        Xavier-normal, the later combination layers' with ``combine_init: torch_default`` drawn again from
        ``nn.Linear``'s (the random stream of rmm's earlier releases)."""
        conv, linear, combine = (modules_of(layers, nn.Linear) for layers in (self.conv, self.linear, self.combine))
        for layer in [*([] if self.mlp is None else [self.mlp]), *conv, *linear, *combine]:
            layer.reset_parameters()
        nn.init.xavier_normal_(self.preference)
        for layer in [*conv, *linear, combine[0]]:
            nn.init.xavier_normal_(layer.weight)
        for layer in combine[1:]:
            if self.combine_init == "xavier":
                nn.init.xavier_normal_(layer.weight)
            else:
                layer.reset_parameters()

    def forward(self, features: Tensor, id_embedding: Tensor, adj: Tensor, inv_degree: Tensor) -> Tensor:
        projected = features if self.mlp is None else self.mlp(features)
        x = F.normalize(torch.cat([self.preference, projected]), dim=1)  # (U+I, w)
        for conv, linear, combine in zip(self.conv, self.linear, self.combine, strict=True):
            h = F.leaky_relu(sparse_matmul(adj, conv(x)) * inv_degree)  # mean over neighbours
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1)) if self.concat else combine(h) + x_hat)
        return x


@register("mmgcn")
class MMGCN(EmbeddingRecommender[MMGCNConfig]):
    r"""MMGCN (Wei et al., `MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation of
    Micro-video <https://doi.org/10.1145/3343031.3351034>`_, ACM MM 2019).

    One :class:`ModalityGCN` per modality m, over the user-item graph with mean aggregation and the shared ID
    embeddings :math:`\mathbf{e}^{id}` added in every layer; the final representation of every user and item
    is the mean of the branches' last layers,

    .. math:: \mathbf{x}_v = \frac{1}{M} \sum_{m} \mathbf{x}^{m, (L)}_v, \qquad
              \hat{y}_{ui} = \mathbf{x}_u^\top \mathbf{x}_i, \qquad
              \mathcal{L} = \frac{1}{B} \sum_b -\ln \sigma(\hat{y}_{ui} - \hat{y}_{uj}) + \lambda R

    with :math:`R` the ``regulariser`` (see :class:`MMGCNConfig`). The input features are frozen (in MMRec
    too); the user preferences :math:`P^m`, ID embeddings and all layers learn unless ``freeze_embeddings``.

    Deviations, and the switch of each (``strict`` / ``mmrec``):

    - combination layer: the paper's element-wise Eq. 7 / MMRec's concatenation (``combination``);
    - layers: 2, MMRec's yaml / 3, what MMRec's code runs (``num_layers``);
    - feature projection: every branch / the first only (``project_features``);
    - ID embeddings and preferences: learned / frozen as in MMRec (``freeze_embeddings``);
    - later combination layers' initialisation: Xavier / ``nn.Linear``'s (``combine_init``);
    - regulariser: ``l2_reg`` of the batch's rows / MMRec's element mean (``regulariser``).

    In both, as in MMRec and the authors' code, the branches are averaged where the paper sums them
    (:math:`\mathbf{x}_v = \sum_m \mathbf{x}^m_v`: the same ranking at fixed parameters, scores scaled by
    :math:`M^2`), and the model has no dropout. MMRec ranks with the representation of the last *training*
    forward, one optimiser step stale; rmm recomputes it.

    Shapes:
        adj: binary sparse (U+I, U+I); id_embedding: (U+I, embedding_dim).
    """

    # Buffers: the binary user-item graph and 1 / degree (mean aggregation).
    adj: Tensor
    inv_degree: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MMGCNConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        self.register_buffer("adj", graph.adjacency("none"), persistent=False)
        self.register_buffer("inv_degree", 1.0 / graph.degrees().clamp_min(1).unsqueeze(1), persistent=False)
        self.id_embedding = nn.Parameter(torch.empty(self.num_users + self.num_items, cfg.embedding_dim))
        self.branches = nn.ModuleList(
            ModalityGCN(self.num_users, dim, cfg.latent_dim if m == 0 or cfg.project_features == "all" else None,
                        cfg.embedding_dim, cfg.num_layers, combination=cfg.combination,
                        combine_init=cfg.combine_init)
            for m, dim in enumerate(self.features.dims))
        if cfg.freeze_embeddings:
            self.id_embedding.requires_grad_(False)
            for branch in self.branches:
                branch.preference.requires_grad_(False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for branch in modules_of(self.branches, ModalityGCN):
            branch.reset_parameters()
        nn.init.xavier_normal_(self.id_embedding)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        outputs = [branch(x, self.id_embedding, self.adj, self.inv_degree)
                   for branch, x in zip(self.branches, self.features.matrices(), strict=True)]
        users, items = torch.split(torch.stack(outputs).mean(0), [self.num_users, self.num_items])
        return users, items

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ids = self.id_embedding
        return (ids[batch.users], ids[self.num_users + batch.pos_items], ids[self.num_users + batch.neg_items],
                *(branch.preference[batch.users] for branch in modules_of(self.branches, ModalityGCN)))

    def regularisation(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        if self.cfg.regulariser == "batch":
            return super().regularisation(batch, users, pos, neg)
        visual = modules_of(self.branches, ModalityGCN)[0]
        return mmrec_regulariser(self.id_embedding, visual.preference, batch, self.num_users)
