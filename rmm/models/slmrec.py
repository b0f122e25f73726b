"""SLMRec: one LightGCN branch per modality, concat-fused, with in-batch InfoNCE and a self-supervised task."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender, epoch_generator
from rmm.models.hparams.slmrec import SLMRecConfig
from rmm.models.layers import FeatureBank, deferred_init, info_nce, l2_reg, modules_of, sparse_matmul
from rmm.models.registry import register


def fac_levels(num_modalities: int, dim: int, audio_level: bool) -> list[tuple[int, int | None]]:
    """The ``fac`` chain's spaces, finest first: ``(width, aligned modality or None)``. One per modality, width
    ``dim`` except the last (``dim // 2`` when there are two or more); ``audio_level`` inserts an unaligned
    ``dim``-wide space before the last (MMRec's ``g_iv_iva``)."""
    levels: list[tuple[int, int | None]] = [(dim, m) for m in range(num_modalities)]
    if num_modalities >= 2:
        levels[-1] = (dim // 2, num_modalities - 1)
        if audio_level:
            levels.insert(num_modalities - 1, (dim, None))
    return levels


def in_batch_cross_entropy(anchor: Tensor, positive: Tensor, temperature: float) -> Tensor:
    r"""Mean cross-entropy of raw dot products: row b's positive is column b,
    :math:`-\overline{\log \mathrm{softmax}_c(a_b^\top p_c / \tau)_b}`. Shapes: (B, D), (B, D) -> ()."""
    logits = anchor @ positive.T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


@register("slmrec")
class SLMRec(EmbeddingRecommender[SLMRecConfig]):
    r"""SLMRec (Tao et al., `Self-supervised Learning for Multimedia Recommendation
    <https://doi.org/10.1109/TMM.2022.3187556>`_, IEEE TMM 2022).

    Branch 0 is the ID branch (item input :math:`\mathbf{E}_I`), branch m+1 modality m (item input
    :math:`\mathbf{X}^m_I = W_m \bar{x}^m_i + b_m`, :math:`\bar{x}` the L2-normalised feature row). Every branch
    runs LightGCN over :math:`\hat{A} = D^{-1/2} A D^{-1/2}` from the shared user table :math:`\mathbf{E}_U`, and
    the branches are concatenated and mapped by one linear layer for users and one for items:

    .. math:: [\mathbf{U}^b; \mathbf{V}^b] = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l [\mathbf{E}_U; \mathbf{X}^b_I],
              \quad \mathbf{u} = W_U [\mathbf{U}^0 \| \dots \| \mathbf{U}^M] + b_U, \quad
              \mathbf{v} = W_V [\mathbf{V}^0 \| \dots \| \mathbf{V}^M] + b_V, \quad \hat{y}_{ui} = \mathbf{u}^\top
              \mathbf{v}

    **Main task**: in-batch InfoNCE of the batch's (user, positive item) pairs, cosine / :math:`\tau`, mean over
    the batch (negatives unused). **Self-supervised task** (weight :math:`\alpha`, ``ssl_task``):

    - ``fac``, fine and coarse-grained alignment, on the batch's positive items: the ID branch's item rows climb a
      chain of linear spaces (:func:`fac_levels`), :math:`h_0 = g_0(\mathbf{V}^0)`, :math:`h_k = g_k(h_{k-1})`;
      in the space of modality m, :math:`h_k` and :math:`f_m(\mathbf{V}^{m+1})` are aligned by the mean
      cross-entropy of the raw dot products / :math:`\tau_{ssl}` (:func:`in_batch_cross_entropy`), summed over
      the modalities.
    - ``fd`` / ``fm`` / ``fd+fm``: two views of the fused embeddings, each propagating with dropout (rate
      ``dropout``, after every layer, user and item rows) and/or with the item input of one branch zeroed (two
      distinct branches drawn uniformly among the M+1, one per view); in-batch InfoNCE (cosine /
      :math:`\tau_{ssl}`, mean) between the views for the batch's users plus for its positive items.

    :math:`\mathcal{L} = \mathcal{L}_{main} + \alpha \mathcal{L}_{ssl} + \lambda\,\mathrm{reg}(\mathbf{E}_U,
    \mathbf{E}_I)` (batch rows; :math:`\lambda = 0` by default, as MMRec). All weights are Xavier-uniform,
    biases ``nn.Linear``'s default; features frozen. Any number of modalities >= 1, in feature order.

    Differences from MMRec's code: ``audio_level`` (``strict`` False / ``mmrec`` True) is MMRec's unaligned audio
    space in the ``fac`` chain. Not switched: the ``fd``/``fm`` tasks, which crash in MMRec without audio and
    with two modalities, follow its code's intent over the given branches (any M); ``fm``'s two branches come
    from one ``randperm`` instead of rejection sampling (the same distribution); the draws come from the
    ``(seed, epoch)`` generator of ``start_epoch`` (the dropout masks from a device generator seeded by it each
    step), not the global RNG; scores are the raw inner products (MMRec's sigmoid ranks the same).

    Shapes:
        adj: sparse (U+I, U+I); user/item embeddings (U, d), (I, d); fused: (U, d), (I, d).
    """

    adj: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: SLMRecConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank({name: F.normalize(x.detach().float(), dim=1) for name, x in features.items()})
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        d, branches = cfg.embedding_dim, len(self.features) + 1
        self.user_embedding = nn.Embedding(self.num_users, d)
        self.item_embedding = nn.Embedding(self.num_items, d)
        self.projections = deferred_init(lambda: nn.ModuleList(nn.Linear(n, d) for n in self.features.dims))
        self.user_fusion = deferred_init(lambda: nn.Linear(branches * d, d))
        self.item_fusion = deferred_init(lambda: nn.Linear(branches * d, d))
        self.levels = fac_levels(len(self.features), d, cfg.audio_level) if cfg.ssl_task == "fac" else []
        widths = [d] + [width for width, _ in self.levels]
        self.id_heads = deferred_init(lambda: nn.ModuleList(nn.Linear(widths[k], widths[k + 1])
                                                            for k in range(len(self.levels))))
        self.modality_heads = deferred_init(lambda: nn.ModuleList(nn.Linear(d, width) for width, m in self.levels
                                                                  if m is not None))
        self.generator: torch.Generator | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        linears = [*modules_of(self.projections, nn.Linear), self.user_fusion, self.item_fusion,
                   *modules_of(self.id_heads, nn.Linear), *modules_of(self.modality_heads, nn.Linear)]
        for layer in linears:
            layer.reset_parameters()
            nn.init.xavier_uniform_(layer.weight)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """This epoch's generator of the ``fd``/``fm`` augmentations (nothing is drawn for ``fac``)."""
        self.generator = epoch_generator(seed, epoch)

    def branch_inputs(self) -> list[Tensor]:
        """Layer-0 item rows of each branch: the ID table, then each projected modality. Shapes: (I, d) each."""
        return [self.item_embedding.weight, *(proj(x) for proj, x in zip(modules_of(self.projections, nn.Linear),
                                                                          self.features.matrices(), strict=True))]

    def encode(self, inputs: list[Tensor],
               drop: Callable[[Tensor], Tensor] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """LightGCN of every branch from the shared user table (``drop`` after each layer): per-branch user and
        item embeddings. Shapes: (U, d), (I, d) per branch."""
        users, items = [], []
        for x in inputs:
            total = layer = torch.cat([self.user_embedding.weight, x])  # (U+I, d)
            for _ in range(self.cfg.num_layers):
                layer = sparse_matmul(self.adj, layer)
                if drop is not None:
                    layer = drop(layer)
                total = total + layer
            final = total / (self.cfg.num_layers + 1)
            users.append(final[: self.num_users])
            items.append(final[self.num_users:])
        return users, items

    def fuse(self, users: list[Tensor], items: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The fused embeddings of the concatenated branches. Shapes: (U, d), (I, d)."""
        return self.user_fusion(torch.cat(users, dim=1)), self.item_fusion(torch.cat(items, dim=1))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.fuse(*self.encode(self.branch_inputs()))

    def loss(self, batch: BPRBatch) -> Tensor:
        inputs = self.branch_inputs()
        branch_users, branch_items = self.encode(inputs)
        user_emb, item_emb = self.fuse(branch_users, branch_items)
        users, pos = user_emb[batch.users], item_emb[batch.pos_items]  # (B, d)
        main = info_nce(users, pos, pos, self.cfg.temperature) / len(users)
        if self.cfg.ssl_task == "fac":
            ssl = self.alignment([items[batch.pos_items] for items in branch_items])
        else:
            ssl = self.augmentation(inputs, batch)
        reg = l2_reg(self.user_embedding(batch.users), self.item_embedding(batch.pos_items), norm=self.cfg.reg_norm)
        return main + self.cfg.ssl_weight * ssl + self.cfg.reg_weight * reg

    def alignment(self, items: list[Tensor]) -> Tensor:
        """``fac``: the batch's ID rows ``items[0]`` climb the chain, aligned with each modality in its space."""
        heads = iter(modules_of(self.modality_heads, nn.Linear))
        h, total = items[0], items[0].new_zeros(())
        for head, (_, modality) in zip(modules_of(self.id_heads, nn.Linear), self.levels, strict=True):
            h = head(h)
            if modality is not None:
                total = total + in_batch_cross_entropy(h, next(heads)(items[modality + 1]), self.cfg.ssl_temperature)
        return total

    def augmentation(self, inputs: list[Tensor], batch: BPRBatch) -> Tensor:
        """``fd``/``fm``/``fd+fm``: InfoNCE between two augmented views of the batch's users and positive items.

        Draws, from this epoch's generator: for ``fm`` the two masked branches (``randperm(M+1)[:2]``, view 0
        then 1); for ``fd`` then a seed of the device generator whose ``rand`` draws each dropout mask, view by
        view, branch by branch, layer by layer."""
        # A loop that never calls start_epoch still draws reproducibly.
        generator = self.generator = self.generator if self.generator is not None else epoch_generator(0, 0)
        masked: list[int | None] = [None, None]
        if "fm" in self.cfg.ssl_task:
            masked = [int(b) for b in torch.randperm(len(inputs), generator=generator)[:2]]
        drop: Callable[[Tensor], Tensor] | None = None
        if "fd" in self.cfg.ssl_task and self.cfg.dropout > 0:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            device_generator = torch.Generator(device=self.adj.device).manual_seed(seed)
            keep = 1.0 - self.cfg.dropout

            def drop(x: Tensor) -> Tensor:
                mask = torch.rand(x.shape, generator=device_generator, device=x.device, dtype=x.dtype) < keep
                return x * mask / keep

        views = []
        for branch in masked:
            view_inputs = [torch.zeros_like(x) if b == branch else x for b, x in enumerate(inputs)]
            user_emb, item_emb = self.fuse(*self.encode(view_inputs, drop))
            views.append((user_emb[batch.users], item_emb[batch.pos_items]))
        (users_1, items_1), (users_2, items_2) = views
        t, n = self.cfg.ssl_temperature, len(batch.users)
        return (info_nce(users_1, users_2, users_2, t) + info_nce(items_1, items_2, items_2, t)) / n
