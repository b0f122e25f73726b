"""MMGCN: one graph convolution branch per modality over the user-item graph, each with ID embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.validation import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingConfig, EmbeddingRecommender, register
from rmm.models.layers import FeatureBank, sparse_matmul

#: ``combination`` values: the paper's element-wise combination (its Eq. 7) or the concatenation one (Eq. 6).
COMBINATIONS = ("sum", "concat")
#: ``project_features`` values: which branches first project their features to ``latent_dim``.
PROJECT_FEATURES = ("all", "first")
#: ``combine_init`` values: Xavier-normal, or ``nn.Linear``'s own (Kaiming-uniform) initialisation.
COMBINE_INITS = ("xavier", "torch_default")
#: ``regulariser`` values of MMGCN and GRCN: rmm's ``l2_reg`` of the batch's rows, or MMRec's element mean.
REGULARISERS = ("batch", "mmrec")


def require_choice(cfg: object, name: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming field ``name``, its value and the valid ones unless it is one of ``choices``."""
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


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


@dataclass(frozen=True)
class MMGCNConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`MMGCN`.

    Attributes:
        embedding_dim: width d of the ID embeddings and of every layer after the first (MMRec
            ``embedding_size`` 64).
        latent_dim: width the features of a projected branch are mapped to before the first layer (MMRec's
            ``dim_latent`` 256, which it gives its visual branch only; see ``project_features``).
        num_layers: graph convolution layers per branch. MMRec's yaml says ``n_layers: 2`` but its code runs
            three layers whatever it says, so ``protocol: mmrec`` gives 3; rmm's default is the yaml's 2.
        reg_weight: weight of the regulariser; MMRec searches ``[0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1]`` (and the
            learning rate over ``[1e-4, 5e-4, 1e-3, 5e-3, 1e-2]``).

    Protocol switches (``strict`` value first, then ``mmrec``'s):
        combination: ``sum`` / ``concat``: how a layer combines the aggregated neighbours ``h`` with the node's
            own ``x_hat``. ``sum`` is the paper's element-wise :math:`g_{ele}` (its Eq. 7), the one rmm states;
            ``concat`` is :math:`g_{co}`, :math:`\mathrm{lrelu}(W_3 [h; \hat{x}] + b)` (Eq. 6), which MMRec and
            the authors' code run because they pass ``concate='False'``, a non-empty (true) string.
        project_features: ``all`` / ``first``: which branches map their features to ``latent_dim`` by a linear
            layer first. ``first``: only the first feature's branch (MMRec's visual one, ``dim_latent=256``);
            the others convolve the raw features at their own width, user preferences included (MMRec's text
            branch, ``dim_latent=None``), so list the features ``[image, text]`` as MMRec orders them. rmm
            projects every branch so that no branch's cost grows with a wide feature.
        freeze_embeddings: ``False`` / ``True``: whether the ID embeddings and the user preferences stay at
            their initial values. MMRec (like the authors' code) keeps them as plain tensors, outside
            ``model.parameters()``, so Adam never updates them; the paper learns them.
        combine_init: ``xavier`` / ``torch_default``: initialisation of the combination layers after the
            first; MMRec Xavier-initialises the first (``g_layer1``) and leaves the others at ``nn.Linear``'s
            default.
        regulariser: ``batch`` / ``mmrec``. ``batch``: ``reg_weight`` times
            :func:`~rmm.models.layers.l2_reg` (``reg_norm``) of the batch's ID rows and user preferences.
            ``mmrec``: MMRec's :func:`mmrec_id_reg` of the batch's ID rows plus the element mean of squares of
            the first branch's *whole* preference table (its ``v_gcn.preference``); ``reg_norm`` is then
            unused. With ``freeze_embeddings`` this adds a constant to the loss (MMRec's regulariser has no
            gradient).
        reg_norm: as :class:`~rmm.models.base.EmbeddingConfig`, for ``regulariser: batch``; ``squared`` in both
            protocols (MMRec's MMGCN does not use ``EmbLoss``).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's code and
            ``MMGCN.yaml``); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    latent_dim: int = 256
    num_layers: int = 2
    reg_weight: float = 1e-4
    combination: str = "sum"
    project_features: str = "all"
    freeze_embeddings: bool = False
    combine_init: str = "xavier"
    regulariser: str = "batch"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "latent_dim": 256, "num_layers": 3, "combination": "concat",
                  "project_features": "first", "freeze_embeddings": True, "combine_init": "torch_default",
                  "regulariser": "mmrec", "reg_norm": "squared"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "latent_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")
        require_choice(self, "combination", COMBINATIONS)
        require_choice(self, "project_features", PROJECT_FEATURES)
        require_choice(self, "combine_init", COMBINE_INITS)
        require_choice(self, "regulariser", REGULARISERS)


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
        self.mlp = None if latent_dim is None else nn.Linear(dim, latent_dim)
        widths = [width] + [embedding_dim] * (num_layers - 1)
        self.conv = nn.ModuleList(nn.Linear(w, w, bias=False) for w in widths)
        self.linear = nn.ModuleList(nn.Linear(w, embedding_dim) for w in widths)
        self.combine = nn.ModuleList(nn.Linear(w + embedding_dim if self.concat else w, embedding_dim)
                                     for w in widths)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.preference)
        for layer in [*self.conv, *self.linear, self.combine[0]]:
            nn.init.xavier_normal_(layer.weight)
        for layer in self.combine[1:]:
            if self.combine_init == "xavier":
                nn.init.xavier_normal_(layer.weight)
            else:
                layer.reset_parameters()

    def forward(self, features: Tensor, id_embedding: Tensor, adj: Tensor, inv_degree: Tensor) -> Tensor:
        projected = features if self.mlp is None else self.mlp(features)
        x = F.normalize(torch.cat([self.preference, projected]), dim=1)  # (U+I, w)
        for conv, linear, combine in zip(self.conv, self.linear, self.combine):
            h = F.leaky_relu(sparse_matmul(adj, conv(x)) * inv_degree)  # mean over neighbours
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1)) if self.concat else combine(h) + x_hat)
        return x


@register("mmgcn")
class MMGCN(EmbeddingRecommender):
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

    config_class = MMGCNConfig
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MMGCNConfig, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
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
        nn.init.xavier_normal_(self.id_embedding)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        outputs = [branch(x, self.id_embedding, self.adj, self.inv_degree)
                   for branch, x in zip(self.branches, self.features.matrices())]
        return torch.split(torch.stack(outputs).mean(0), [self.num_users, self.num_items])

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        ids = self.id_embedding
        return (ids[batch.users], ids[self.num_users + batch.pos_items], ids[self.num_users + batch.neg_items],
                *(branch.preference[batch.users] for branch in self.branches))

    def regularisation(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        if self.cfg.regulariser == "batch":
            return super().regularisation(batch, users, pos, neg)
        return mmrec_regulariser(self.id_embedding, self.branches[0].preference, batch, self.num_users)
