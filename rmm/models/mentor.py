"""MENTOR: DRAGON-style modality graphs plus multi-level self-supervision (distribution alignment to the ID view,
feature masking, graph perturbation)."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import KNNSpec, TrainGraph
from rmm.models.base import BPRBatch, Recommender, epoch_generator, inner_product_scorer
from rmm.models.freedom import register_mixed_item_graph
from rmm.models.hparams.mentor import MENTORConfig
from rmm.models.layers import (
    FeatureBank,
    all_pairs_info_nce,
    bpr_loss,
    deferred_init,
    modules_of,
    reset_projections,
    smooth,
    sparse_matmul,
)
from rmm.models.registry import register


class GraphEncoders(nn.Module):
    r"""One user-item graph encoder per input m: a user preference :math:`P_m` (U, d) and an item encoder
    :math:`g_m(x) = W_2 \,\mathrm{LeakyReLU}(W_1 x + b_1) + b_2` (hidden width 4d); :meth:`inputs` gives the
    L2-normalised rows of :math:`[P_m; g_m(x_m)]`, the inputs side by side. Weights are drawn by
    :meth:`reset_parameters` only (the owning model's calls it).

    Shapes:
        inputs: M x (I, dims[m]) -> (U+I, M d).
    """

    def __init__(self, num_users: int, dims: Sequence[int], embedding_dim: int) -> None:
        super().__init__()
        d = embedding_dim
        self.preferences = nn.ParameterList(nn.Parameter(torch.empty(num_users, d)) for _ in dims)
        self.hidden = deferred_init(lambda: nn.ModuleList(nn.Linear(dim, 4 * d) for dim in dims))
        self.output = deferred_init(lambda: nn.ModuleList(nn.Linear(4 * d, d) for _ in dims))

    def reset_parameters(self, init: str = "xavier") -> None:
        for preference in self.preferences:
            nn.init.xavier_normal_(preference)
        reset_projections(self.hidden, init)
        reset_projections(self.output, init)

    def inputs(self, items: Sequence[Tensor]) -> Tensor:
        return torch.cat([F.normalize(torch.cat([preference, output(F.leaky_relu(hidden(x)))]), dim=1)
                          for preference, hidden, output, x in zip(
                              self.preferences, modules_of(self.hidden, nn.Linear),
                              modules_of(self.output, nn.Linear), items, strict=True)], dim=1)


def _stats(x: Tensor, copies: int = 1) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance of all entries of ``x`` repeated ``copies`` times side by side (without the
    copy). Shapes: (N, D) -> (), ()."""
    mean = x.mean()
    count = x.numel() * copies
    return mean, (x - mean).pow(2).sum() * copies / (count - 1)


@register("mentor")
class MENTOR(Recommender[MENTORConfig]):
    r"""MENTOR (Xu et al., `MENTOR: Multi-level Self-supervised Learning for Multimodal Recommendation
    <https://arxiv.org/abs/2402.19407>`_, AAAI 2025), as its official code (an MMRec fork, ``mentor.py``).

    Encoders (:class:`GraphEncoders`) convolve the normalised rows of :math:`X = [P; g(x)]` over the
    symmetric-normalised user-item graph :math:`\hat{A}` without a layer mean, :math:`H = \sum_{l=0}^{L}\hat{A}^l X`:
    one per modality m on its features :math:`f^m` (:math:`H_m`), one on learned ID item features
    :math:`E_{id}` (I, d) (the guide :math:`G`), and two more sets per modality, :math:`\tilde{H}^{(1)}_m,
    \tilde{H}^{(2)}_m`, each adding :math:`\epsilon\,\mathrm{sign}(h) \odot \mathrm{norm}(\Delta)`,
    :math:`\Delta \sim \mathcal{U}[0, 1)^{d}` per row, after every convolution (graph perturbation). A view
    concatenates M blocks (width M d); its items add the frozen item-item graph's smoothing
    :math:`S^{L_m}` (:math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`, each modality's unweighted cosine kNN graph,
    ``modality_weights``):

    .. math:: \mathbf{e}_u = \Vert_m \alpha_{um} H_{m,u}, \quad \bar{\mathbf{e}}_i = \Vert_m H_{m,i}, \quad
              \mathbf{e}_i = \bar{\mathbf{e}}_i + (S^{L_m} \bar{E}_I)_i

    with free per-user modality weights :math:`\alpha_u` (none with one modality). The other views: the guide
    :math:`G` and each modality :math:`H_m` repeated M times (users unweighted), the perturbed
    :math:`\tilde{H}^{(v)}` fused as the main view. Loss, on a BPR batch B:

    .. math:: \mathcal{L} = \mathrm{BPR} + \lambda\big(\textstyle\sum_m \overline{P_{m,B}^2} + \overline{\alpha^2}
              \big) + \lambda_a \sum_{a < b} \big(|\sigma^2_a - \sigma^2_b| + |\mu_a - \mu_b|\big)
              + \lambda_f \sum_{X \in \{E_U, E_I\}} \big(1 - \overline{\cos}(\mathrm{sg}(\mathrm{drop}_p(X)),
              \mathrm{MLP}(X))\big) + \lambda_g \big(\mathrm{NCE}_\tau(\tilde{E}^{(1)}_U, \tilde{E}^{(2)}_U)
              + \mathrm{NCE}_\tau(\tilde{E}^{(1)}_I, \tilde{E}^{(2)}_I)\big)

    :math:`\mu_a, \sigma^2_a` are the mean and unbiased variance of all entries of view a's users and items;
    the pairs run over the views {fused, guide, each modality} (the code's six level pairs for image and text:
    generalised to M modalities as all pairs of the M + 2 views); the InfoNCE runs over all users (items), each
    against its own row of the other view (:func:`~rmm.models.layers.all_pairs_info_nce`, block by block, no
    (U, U) matrix); the masking MLP is one linear (M d, M d). Scores :math:`\mathbf{e}_u^\top \mathbf{e}_i`.

    Randomness: each step draws a seed from the ``(seed, epoch)`` generator of ``start_epoch``; a generator on
    the model's device seeded with it draws, in order, for each convolution l = 1..L one ``rand(U+I, 2, M, d)``
    (perturbed view, modality; only when ``mask_weight_g > 0``), then the masking keep masks ``rand(U, M d)``,
    ``rand(I, M d)`` (an entry kept when < 1 - p, scaled by 1 / (1 - p); only when ``mask_weight_f > 0`` and
    ``dropout > 0``).

    Differences from the code, as :class:`~rmm.models.hparams.mentor.MENTORConfig` switches (``strict`` /
    ``mmrec``): kNN graphs without / with the item itself (``knn_self``), modality weights uniform / image 0.1,
    text 0.9 (``modality_weights``), encoder init (``projection_init``), natural-log / base-2 BPR
    (``log2_bpr``), the masking loss trains the MLP and the embeddings / is a constant, both views under
    ``no_grad`` (``mask_gradient``). Not switched: what the code builds but never reads is left out (the
    user-user graph it resamples each epoch, item-dropped edge lists, ``weight_i``, ``MLP_user``, trainable
    feature copies); the kNN degrees carry no ``+1e-7``; items without a feature vector get no kNN neighbours;
    the noise and dropout come from rmm's generators, not the global RNG.

    Shapes:
        adj: sparse (U+I, U+I); mm_adj: sparse (I, I); final embeddings (U, M d), (I, M d).
    """

    adj: Tensor
    mm_adj: Tensor
    mm_adj_t: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MENTORConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        d, count = cfg.embedding_dim, len(self.features)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        register_mixed_item_graph(self, features, item_graphs, cfg.modality_weights)
        self.modal = GraphEncoders(self.num_users, self.features.dims, d)
        self.guide = GraphEncoders(self.num_users, [d], d)
        self.id_features = nn.Parameter(torch.empty(self.num_items, d))
        self.perturbed = nn.ModuleList(GraphEncoders(self.num_users, self.features.dims, d) for _ in range(2))
        self.modality_weights = nn.Parameter(torch.empty(self.num_users, count)) if count > 1 else None
        self.mask_mlp = deferred_init(lambda: nn.ModuleList([nn.Linear(count * d, count * d)]))
        self.generator: torch.Generator | None = None
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: MENTORConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym", include_self=cfg.knn_self)

    @property
    def has_unused_parameters(self) -> bool:
        """The masking MLP trains only with ``mask_gradient``; a zero loss weight leaves its encoders idle."""
        cfg = self.cfg
        return not cfg.mask_gradient or min(cfg.mask_weight_f, cfg.mask_weight_g, cfg.align_weight) == 0

    def reset_parameters(self) -> None:
        init = self.cfg.projection_init
        self.modal.reset_parameters(init)
        self.guide.reset_parameters(init)
        nn.init.xavier_normal_(self.id_features)
        for encoders in modules_of(self.perturbed, GraphEncoders):
            encoders.reset_parameters(init)
        if self.modality_weights is not None:  # the code: softmax over modalities of Xavier-normal (U, M, 1) noise
            users, count = self.modality_weights.shape
            with torch.no_grad():
                noise = torch.randn(users, count) * math.sqrt(2.0 / (users + count))
                self.modality_weights.copy_(noise.softmax(dim=1))
        reset_projections(self.mask_mlp, init)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """This epoch's generator of the per-step perturbation noise and masking dropout."""
        self.generator = epoch_generator(seed, epoch)

    # ------------------------------------------------------------------------------------------------ views

    def _propagate(self, x: Tensor, noise: Callable[[], Tensor] | None = None) -> Tensor:
        r""":math:`\sum_{l=0}^{L} h_l`, :math:`h_l = \hat{A} h_{l-1}` (plus ``eps sign(h_l) norm(noise())`` per
        d-block when given). Shapes: (U+I, D) -> (U+I, D)."""
        total = layer = x
        for _ in range(self.cfg.num_layers):
            layer = sparse_matmul(self.adj, layer)
            if noise is not None:
                delta = F.normalize(noise(), dim=-1).reshape(layer.shape)  # (U+I, D / d, d) -> (U+I, D)
                layer = layer + self.cfg.perturb_eps * torch.sign(layer) * delta
            total = total + layer
        return total

    def _fuse_users(self, h: Tensor) -> Tensor:
        """Users of a view: the M d-blocks of ``h`` (U, M d) scaled by the user modality weights."""
        if self.modality_weights is None:
            return h
        d = self.cfg.embedding_dim
        return (h.unflatten(1, (-1, d)) * self.modality_weights.unsqueeze(2)).flatten(1)  # (U, M, d) -> (U, M d)

    def _smooth_items(self, items: Tensor) -> Tensor:
        """Items plus their item-item smoothing. Shapes: (I, D) -> (I, D)."""
        return items + smooth(self.mm_adj, items, self.cfg.num_mm_layers, self.mm_adj_t)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings (the fused view). Shapes: (U, M d), (I, M d)."""
        h = self._propagate(self.modal.inputs(self.features.matrices()))
        return self._fuse_users(h[: self.num_users]), self._smooth_items(h[self.num_users:])

    def _perturbed_views(self, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        """Users and items of both perturbed views. Shapes: 2 x ((U, M d), (I, M d))."""
        encoders = modules_of(self.perturbed, GraphEncoders)
        x = torch.cat([e.inputs(self.features.matrices()) for e in encoders], dim=1)  # (U+I, 2 M d)
        count, d = len(self.features), self.cfg.embedding_dim

        def noise() -> Tensor:
            return torch.rand(len(x), 2, count, d, generator=generator, device=x.device, dtype=x.dtype)

        h = self._propagate(x, noise)
        users, items = h[: self.num_users], self._smooth_items(h[self.num_users:])
        width = count * d
        return [(self._fuse_users(users[:, v * width:(v + 1) * width]), items[:, v * width:(v + 1) * width])
                for v in range(2)]

    # ------------------------------------------------------------------------------------------------- loss

    def _step_generator(self) -> torch.Generator:
        generator = self.generator = self.generator if self.generator is not None else epoch_generator(0, 0)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return torch.Generator(device=self.adj.device).manual_seed(seed)

    def _alignment(self, users: Tensor, items: Tensor) -> Tensor:
        r""":math:`\sum_{a<b} |\sigma^2_a - \sigma^2_b| + |\mu_a - \mu_b|` over the fused, guide and per-modality
        views, from the main and guide encoders' propagated users (U, (M+1) d) and smoothed items (I, (M+1) d)
        (smoothing is linear: smoothing a block once serves all its repeats)."""
        count, d = len(self.features), self.cfg.embedding_dim
        width = count * d
        views = [(self._fuse_users(users[:, :width]), items[:, :width], 1)]
        views += [(users[:, m * d:(m + 1) * d], items[:, m * d:(m + 1) * d], count) for m in range(count + 1)]
        stats = [_stats(torch.cat([u, i]), copies) for u, i, copies in views]
        return reduce(operator.add, ((var_a - var_b).abs() + (mean_a - mean_b).abs()
                                     for (mean_a, var_a), (mean_b, var_b) in itertools.combinations(stats, 2)))

    def _masking(self, users: Tensor, items: Tensor, generator: torch.Generator) -> Tensor:
        r""":math:`\sum_X 1 - \overline{\cos}(\mathrm{sg}(\mathrm{drop}_p(X)), \mathrm{MLP}(X))` over all users and
        all items (a constant without ``mask_gradient``)."""
        mlp = modules_of(self.mask_mlp, nn.Linear)[0]
        keep = 1.0 - self.cfg.dropout
        total = users.new_zeros(())
        with torch.set_grad_enabled(self.cfg.mask_gradient and torch.is_grad_enabled()):
            for x in (users, items):
                target = x.detach()
                if self.cfg.dropout > 0:
                    mask = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < keep
                    target = target * mask / keep
                total = total + 1.0 - F.cosine_similarity(target, mlp(x), dim=1).mean()
        return total

    def loss(self, batch: BPRBatch) -> Tensor:
        cfg, count, d = self.cfg, len(self.features), self.cfg.embedding_dim
        generator = self._step_generator()
        x = torch.cat([self.modal.inputs(self.features.matrices()), self.guide.inputs([self.id_features])], dim=1)
        h = self._propagate(x)  # (U+I, (M+1) d): the modalities then the guide
        all_users, all_items = h[: self.num_users], self._smooth_items(h[self.num_users:])
        users, items = self._fuse_users(all_users[:, : count * d]), all_items[:, : count * d]
        u = users[batch.users]  # (B, M d)
        ranking = bpr_loss((u * items[batch.pos_items]).sum(-1), (u * items[batch.neg_items]).sum(-1))
        if cfg.log2_bpr:
            ranking = ranking / math.log(2.0)
        reg = reduce(operator.add, (preference[batch.users].pow(2).mean() for preference in self.modal.preferences))
        if self.modality_weights is not None:
            reg = reg + self.modality_weights.pow(2).mean()
        total = ranking + cfg.reg_weight * reg
        if cfg.mask_weight_g > 0:
            (users_1, items_1), (users_2, items_2) = self._perturbed_views(generator)
            total = total + cfg.mask_weight_g * (all_pairs_info_nce(users_1, users_2, cfg.temperature)
                                                 + all_pairs_info_nce(items_1, items_2, cfg.temperature))
        if cfg.mask_weight_f > 0:
            total = total + cfg.mask_weight_f * self._masking(users, items, generator)
        if cfg.align_weight > 0:
            total = total + cfg.align_weight * self._alignment(all_users, all_items)
        return total

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return inner_product_scorer(*self.embeddings())
