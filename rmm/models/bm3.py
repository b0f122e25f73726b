"""BM3: self-supervised bootstrapping of latent views, with neither negative samples nor a contrastive loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.bm3 import BM3Config
from rmm.models.layers import FeatureBank, deferred_init, l2_reg, lightgcn, projections, reset_projections
from rmm.models.registry import register


def bootstrap_loss(online: Tensor, target: Tensor) -> Tensor:
    r""":math:`1 - \cos(p, z)` averaged over rows; ``target`` is detached (the stop-gradient). Shapes: (B, d)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


@register("bm3")
class BM3(EmbeddingRecommender[BM3Config]):
    r"""BM3 (Zhou et al., `Bootstrap Latent Representations for Multi-modal Recommendation
    <https://arxiv.org/abs/2207.05969>`_, WWW 2023).

    The online embeddings are LightGCN's over the user-item graph, the item ID embedding added back
    residually; every modality m is projected, :math:`\mathbf{h}^m_i = W_m \mathbf{x}^m_i + \mathbf{b}_m`:

    .. math:: [\mathbf{H}_U; \mathbf{H}_I'] = \frac{1}{L+1} \sum_{l=0}^{L} \tilde{A}^l [\mathbf{E}_U; \mathbf{E}_I],
              \quad \mathbf{H}_I = \mathbf{H}_I' + \mathbf{E}_I

    A target view is a dropout copy under stop-gradient, :math:`\dot{\mathbf{h}} = \mathrm{sg}(\mathrm{dropout}_p
    (\mathbf{h}))`, and one predictor :math:`f_p(\mathbf{h}) = W_p \mathbf{h} + \mathbf{b}_p`, shared by the ID
    and the modality views, maps online views onto target views. With :math:`C(a, b) = 1 - \cos(a, b)` averaged
    over a batch of observed pairs (u, i) (the sampled negatives are not used):

    .. math:: \mathcal{L} = \underbrace{C(f_p(\mathbf{h}_u), \dot{\mathbf{h}}_i)
                  + C(f_p(\mathbf{h}_i), \dot{\mathbf{h}}_u)}_{\text{graph reconstruction}}
              + \lambda_{cl} \sum_m \big[\underbrace{C(f_p(\mathbf{h}^m_i), \dot{\mathbf{h}}_i)}_{\text{inter-modality}}
                  + \underbrace{C(f_p(\mathbf{h}^m_i), \dot{\mathbf{h}}^m_i)}_{\text{intra-modality}}\big]
              + \lambda \, \mathcal{R}(\mathbf{H}_U, \mathbf{H}_I)

    where :math:`\mathcal{R}` regularises the whole online tables: :math:`(\lVert \mathbf{H}_U \rVert_F^2 +
    \lVert \mathbf{H}_I \rVert_F^2) / 2I`, or with ``reg_norm: frobenius`` MMRec's ``EmbLoss``
    :math:`(\lVert \mathbf{H}_U \rVert_F + \lVert \mathbf{H}_I \rVert_F) / I`. Scores are
    :math:`f_p(\mathbf{h}_u)^\top f_p(\mathbf{h}_i)`. Initialisation as MMRec's: ID embeddings Xavier-uniform,
    predictor and projection weights Xavier-normal, biases PyTorch's default.

    Differences from MMRec's code, each with its switch (``strict`` / ``mmrec``):

    - ``train_features`` (False / True): MMRec fine-tunes the content features; rmm keeps them frozen.
    - ``reg_norm`` (``squared`` / ``frobenius``): squared norms of the online tables, or MMRec's ``EmbLoss``.

    And without a switch, as they change no expected value: the targets drop out entries of the batch's rows
    (MMRec drops out the whole tables and then gathers the batch's rows, so a user or item repeated within a
    batch shares one mask there, and gets independent masks here), and only the batch's distinct positive items
    are projected (MMRec projects the whole catalogue, then gathers). MMRec's ``use_neg_sampling: False`` only saves the
    sampling: the loss never reads ``batch.neg_items``.

    Shapes:
        adj: sparse (U+I, U+I); user/item embeddings: (U, d), (I, d); predictor: d -> d; projections:
        d_m -> d per modality.
    """

    adj: Tensor  # buffer: the normalised user-item graph

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: BM3Config) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        if cfg.train_features:  # MMRec's fine-tuned feature tables, starting from the extracted features
            self.feature_tables = nn.ParameterList(nn.Parameter(x.clone()) for x in self.features.matrices())
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.predictor = deferred_init(lambda: nn.Linear(cfg.embedding_dim, cfg.embedding_dim))
        self.projections = projections(self.features.dims, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.predictor.reset_parameters()  # the bias keeps nn.Linear's initialisation
        reset_projections(self.projections)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        nn.init.xavier_normal_(self.predictor.weight)
        if self.cfg.train_features:
            with torch.no_grad():
                for table, x in zip(self.feature_tables, self.features.matrices(), strict=True):
                    table.copy_(x)

    def content(self) -> list[Tensor]:
        """Every modality's feature matrix: the trainable tables with ``train_features``, else the frozen
        inputs. Shapes: M x (I, d_m)."""
        return list(self.feature_tables) if self.cfg.train_features else self.features.matrices()

    def online(self) -> tuple[Tensor, Tensor]:
        """Online user and item embeddings (before the predictor). Shapes: (U, d), (I, d)."""
        users, items = lightgcn(self.adj, self.user_embedding.weight, self.item_embedding.weight, self.cfg.num_layers)
        return users, items + self.item_embedding.weight

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = self.online()
        return self.predictor(users), self.predictor(items)

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb = self.online()
        users, items = user_emb[batch.users], item_emb[batch.pos_items]  # (B, d)
        with torch.no_grad():
            user_target = F.dropout(users, self.cfg.dropout, training=True)
            item_target = F.dropout(items, self.cfg.dropout, training=True)
        rec = bootstrap_loss(self.predictor(users), item_target) + bootstrap_loss(self.predictor(items), user_target)
        modal = torch.zeros((), device=users.device)
        # Each distinct positive projected once (~60% of a Baby batch's rows), then spread back to the batch.
        distinct, inverse = torch.unique(batch.pos_items, return_inverse=True)
        for proj, x in zip(self.projections, self.content(), strict=True):
            content = proj(x[distinct])[inverse]  # (B, d)
            content_target = F.dropout(content.detach(), self.cfg.dropout, training=True)
            online = self.predictor(content)
            modal = modal + bootstrap_loss(online, item_target) + bootstrap_loss(online, content_target)
        # Items first: l2_reg divides by its first tensor's rows, and MMRec's EmbLoss by the number of items.
        reg = l2_reg(item_emb, user_emb, norm=self.cfg.reg_norm)
        return rec + self.cfg.reg_weight * reg + self.cfg.cl_weight * modal
