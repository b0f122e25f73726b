"""MVGAE: one variational graph encoder per modality plus a collaborative one, fused by a product of experts."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, Recommender, epoch_generator, inner_product_scorer
from rmm.models.hparams.mvgae import MVGAEConfig
from rmm.models.layers import FeatureBank, deferred_init, modules_of, sparse_matmul
from rmm.models.registry import register

#: Upper clamp of a log-variance before it is exponentiated (the authors' ``MAX_LOGVAR``).
MAX_LOGVAR = 10.0
#: Variance added to every expert's before taking precisions (the authors' product-of-experts ``eps``).
POE_EPS = 1e-8


def product_of_experts(mus: list[Tensor], logvars: list[Tensor]) -> tuple[Tensor, Tensor]:
    r"""The Gaussian product of independent experts: precisions :math:`T_k = 1 / (\sigma_k^2 + 10^{-8})` add,
    :math:`\mu = \sum_k T_k \mu_k / \sum_k T_k`, :math:`\log \sigma^2 = -\log \sum_k T_k`.

    Shapes: K tensors (N, d) each -> (N, d), (N, d)."""
    precisions = [1.0 / (logvar.exp() + POE_EPS) for logvar in logvars]
    total = torch.stack(precisions).sum(0)
    mu = torch.stack([m * t for m, t in zip(mus, precisions, strict=True)]).sum(0) / total
    return mu, -total.log()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mathcal{N}(\mu, \sigma^2) \Vert \mathcal{N}(0, I))`, summed over dimensions and
    averaged over nodes, the log-variance clamped at ``MAX_LOGVAR``. Shapes: (N, d), (N, d) -> ()."""
    logvar = logvar.clamp(max=MAX_LOGVAR)
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()


class VariationalGCN(nn.Module):
    r"""One MVGAE expert: a user-preference table and the (projected) item input, convolved over the user-item
    graph into a Gaussian per node.

    With :math:`\bar{A} = (D + I)^{-1}(A + I)` (each node's mean over its neighbours and itself) and
    :math:`c(x) = \mathrm{drop}(\mathrm{norm}(\bar{A}(x W + b)))`:

    .. math:: x^{(0)} = \mathrm{norm}([P; F W_0 + b_0]), \quad
              x^{(l+1)} = \mathrm{lrelu}(G_l\, \mathrm{lrelu}(c_l(x^{(l)}))), \\
              \mu = G_\mu\, \mathrm{lrelu}(c_\mu(x^{(L)})) + \mathrm{lrelu}(x^{(L)} W_\mu + b_\mu), \quad
              \log\sigma^2 = G_\sigma\, \mathrm{lrelu}(c_\sigma(x^{(L)})) + \mathrm{lrelu}(x^{(L)} W_\sigma + b_\sigma)

    (``G`` affine maps, ``norm`` row L2 normalisation.)

    Shapes:
        preference: (U, latent_dim); item input (I, dim) -> mu, logvar: (U+I, embedding_dim) each.
    """

    def __init__(self, num_users: int, dim: int, latent_dim: int, embedding_dim: int, num_layers: int) -> None:
        super().__init__()
        self.preference = nn.Parameter(torch.empty(num_users, latent_dim))
        widths = [latent_dim] + [embedding_dim] * num_layers  # inputs of the hidden layers, then of the heads
        self.mlp = deferred_init(lambda: nn.Linear(dim, latent_dim))
        # Hidden layers then the mean and log-variance heads: convolutions, skips (heads only), combinations.
        self.conv = deferred_init(lambda: nn.ModuleList(
            [nn.Linear(w, embedding_dim) for w in widths[:-1]] + [nn.Linear(widths[-1], embedding_dim)
                                                                   for _ in range(2)]))
        self.skip = deferred_init(lambda: nn.ModuleList(nn.Linear(widths[-1], embedding_dim) for _ in range(2)))
        self.combine = deferred_init(lambda: nn.ModuleList(
            nn.Linear(embedding_dim, embedding_dim) for _ in range(num_layers + 2)))

    def reset_parameters(self) -> None:
        """Called by :meth:`MVGAE.reset_parameters`: Xavier-normal weights and preferences, ``nn.Linear``'s
        biases (the authors' initialisation; a convolution's bias :math:`\\mathcal{U}(\\pm 1/\\sqrt{fan_{in}})`
        is ``nn.Linear``'s too)."""
        for layer in [self.mlp, *(layer for group in (self.conv, self.skip, self.combine)
                                  for layer in modules_of(group, nn.Linear))]:
            layer.reset_parameters()
            nn.init.xavier_normal_(layer.weight)
        nn.init.xavier_normal_(self.preference)

    def forward(self, items: Tensor, adj: Tensor, adj_t: Tensor,
                drop: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        x = F.normalize(torch.cat([self.preference, self.mlp(items)]), dim=1)  # (U+I, latent_dim)
        convs, combines = modules_of(self.conv, nn.Linear), modules_of(self.combine, nn.Linear)

        def conv(layer: nn.Linear, h: Tensor) -> Tensor:
            return F.leaky_relu(drop(F.normalize(sparse_matmul(adj, layer(h), adj_t), dim=1)))

        for layer, combine in zip(convs[:-2], combines[:-2], strict=True):
            x = F.leaky_relu(combine(conv(layer, x)))  # (U+I, embedding_dim)
        skips = modules_of(self.skip, nn.Linear)
        mu = combines[-2](conv(convs[-2], x)) + F.leaky_relu(skips[0](x))
        logvar = combines[-1](conv(convs[-1], x)) + F.leaky_relu(skips[1](x))
        return mu, logvar


@register("mvgae")
class MVGAE(Recommender[MVGAEConfig]):
    r"""MVGAE (Yi & Chen, `Multi-modal Variational Graph Auto-encoder for Recommendation Systems
    <https://doi.org/10.1109/TMM.2021.3111487>`_, IEEE TMM 2021).

    One :class:`VariationalGCN` expert per modality m (item input: its features) and a collaborative one c
    (item input: a learned ID table), each a Gaussian :math:`\mathcal{N}(\mu_k, \sigma_k^2)` per user and item
    node; the modality experts are fused by a product of experts (:func:`product_of_experts`), which is then
    fused with c the same way:

    .. math:: (\mu, \sigma^2) = \mathrm{PoE}(\mathrm{PoE}(\{(\mu_m, \sigma_m^2)\}_m), (\mu_c, \sigma_c^2)), \quad
              z_k = \mu_k + s\,\epsilon_k \sigma_k, \ \epsilon_k \sim \mathcal{N}(0, I), \\
              \mathcal{R}(z) = -\sum_b \log_2 \sigma\big(\sigma(\tilde{z}_{u_b}^\top \tilde{z}_{i_b})
                  - \sigma(\max_{b'} \tilde{z}_{u_b}^\top \tilde{z}_{j_{b'}})\big), \\
              \mathcal{L} = \sum_{k \in \{\mathrm{fused}, m\ldots, c\}} \mathcal{R}(z_k)
                  + \beta\, \mathrm{KL}(\mathcal{N}(\mu_k, \sigma_k^2) \Vert \mathcal{N}(0, I)), \quad
              \hat{y}_{ui} = \tilde{\mu}_u^\top \tilde{\mu}_i

    with :math:`\tilde{z} = z` (``sigmoid_latents`` off) or :math:`\sigma(z)` (on). The decoder (the hardest
    negative of the batch, ``negatives``; ``log2``; a sum over the batch), ``s`` (``noise_scale``) and the
    dropout after every convolution are the authors' code's, in both protocols.
    Dropout masks and the noise :math:`\epsilon` come from a generator seeded by ``(seed, epoch)`` in
    :meth:`start_epoch` (MMRec: the global RNG): per training step, every expert's masks (modalities in feature
    order, then c; each encoder's layers in order), then :math:`\epsilon` of the fused latent, of each modality
    and of c, each drawn (U+I, d) on the CPU. Scoring uses the means, without dropout (MMRec ranks with the
    sigmoid of the fused mean of the last training forward, with its dropout, one step stale).

    Differences from MMRec, each a :class:`MVGAEConfig` switch (``strict`` / ``mmrec``): preferences and the
    collaborative input learned / fixed random tensors (``train_embeddings``); the loss reads item i at its own
    node / at node row i, a user's row for i < U (``loss_item_rows``); latents decoded and scored as they are /
    through a sigmoid, the authors' "amazon" branch (``sigmoid_latents``). Not switched: any number of modalities
    (MMRec: exactly image and text); every combination layer is Xavier-initialised (MMRec leaves its second
    hidden layer's, used only with ``num_layers`` 2, at ``nn.Linear``'s default); more than 2 hidden layers are
    allowed (MMRec runs at most 2). The input features are frozen, as in MMRec.

    Shapes:
        adj: (U+I, U+I) sparse, row-normalised with self loops; latents (U+I, embedding_dim).
    """

    # Buffers: the mean-with-self-loop user-item graph and its transpose.
    adj: Tensor
    adj_t: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MVGAEConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        self.register_buffer("adj", graph.adjacency("row_self_loops"), persistent=False)
        self.register_buffer("adj_t", graph.adjacency("row_self_loops", transpose=True), persistent=False)
        self.collaborative = nn.Parameter(torch.empty(self.num_items, cfg.embedding_dim))
        dims = [*self.features.dims, cfg.embedding_dim]  # the modality experts, then the collaborative one
        self.experts = nn.ModuleList(VariationalGCN(self.num_users, dim, cfg.latent_dim, cfg.embedding_dim,
                                                    cfg.num_layers) for dim in dims)
        if not cfg.train_embeddings:
            self.collaborative.requires_grad_(False)
            for expert in modules_of(self.experts, VariationalGCN):
                expert.preference.requires_grad_(False)
        self.generator: torch.Generator | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for expert in modules_of(self.experts, VariationalGCN):
            expert.reset_parameters()
        nn.init.xavier_normal_(self.collaborative)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """This epoch's generator of dropout masks and reparameterisation noise."""
        self.generator = epoch_generator(seed, epoch)

    def _draw(self, like: Tensor, *, uniform: bool) -> Tensor:
        if self.generator is None:  # a loop that never calls start_epoch still draws reproducibly
            self.generator = epoch_generator(0, 0)
        draw = torch.rand if uniform else torch.randn
        return draw(like.shape, generator=self.generator).to(like.device)  # CPU: the same draw on every device

    def encode(self, *, sample: bool) -> list[tuple[Tensor, Tensor]]:
        """Every expert's (mu, logvar), modalities in feature order then the collaborative one; with ``sample``
        (training) the convolutions' dropout masks come from the epoch generator."""
        p = self.cfg.dropout

        def drop(x: Tensor) -> Tensor:
            if not sample or p == 0:
                return x
            return x * (self._draw(x, uniform=True) >= p).to(x.dtype) / (1 - p)

        inputs = [*self.features.matrices(), self.collaborative]
        return [expert(x, self.adj, self.adj_t, drop)
                for expert, x in zip(modules_of(self.experts, VariationalGCN), inputs, strict=True)]

    @staticmethod
    def fuse(gaussians: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The product of the modality experts, then of that with the collaborative (last) expert."""
        modal = product_of_experts([mu for mu, _ in gaussians[:-1]], [lv for _, lv in gaussians[:-1]])
        return product_of_experts([modal[0], gaussians[-1][0]], [modal[1], gaussians[-1][1]])

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """The fused means (their sigmoid with ``sigmoid_latents``), without dropout. Shapes: (U, d), (I, d)."""
        mu, _ = self.fuse(self.encode(sample=False))
        users, items = torch.split(torch.sigmoid(mu) if self.cfg.sigmoid_latents else mu,
                                   [self.num_users, self.num_items])
        return users, items

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return inner_product_scorer(*self.embeddings())

    def reconstruction(self, z: Tensor, batch: BPRBatch) -> Tensor:
        """The authors' ranking decoder on latents ``z`` (U+I, d): each positive against the batch's hardest
        negative for that user (or its own, ``negatives: paired``), in bits, summed over the batch."""
        offset = self.num_users if self.cfg.loss_item_rows == "items" else 0
        squashed = torch.sigmoid(z) if self.cfg.sigmoid_latents else z
        users = squashed[batch.users]  # (B, d)
        pos = torch.sigmoid((users * squashed[offset + batch.pos_items]).sum(1))
        negatives = squashed[offset + batch.neg_items]  # (B, d)
        if self.cfg.negatives == "batch_hardest":
            neg = torch.sigmoid((users @ negatives.T).max(1).values)  # (B, B) -> (B,)
        else:
            neg = torch.sigmoid((users * negatives).sum(1))
        return -torch.log2(torch.sigmoid(pos - neg)).sum()

    def loss(self, batch: BPRBatch) -> Tensor:
        gaussians = self.encode(sample=self.training)
        total = torch.zeros((), device=self.adj.device)
        for mu, logvar in [self.fuse(gaussians), *gaussians]:
            z = mu
            if self.training:
                noise = self._draw(mu, uniform=False)
                z = mu + self.cfg.noise_scale * noise * (0.5 * logvar.clamp(max=MAX_LOGVAR)).exp()
            total = total + self.reconstruction(z, batch) + self.cfg.beta * gaussian_kl(mu, logvar)
        return total
