"""PGL's hyperparameters: the keys of a ``pgl`` model entry (the model: :mod:`rmm.models.pgl`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice, require_positive

#: ``mode`` values: how the training graph (the principal subgraph) is extracted.
PGL_MODES = ("local", "global")


@dataclass(frozen=True)
class PGLConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.pgl.PGL`. Defaults: MMRec's ``PGL.yaml`` (its grid lists one value
    per searched key: ``dropout [0.2]``, ``reg_weight [0]``, ``mode ['local']``); MMRec's ``learning_rate 0.001``
    and ``learning_rate_scheduler [0.96, 50]`` belong to the run's ``train`` section (``train.lr_decay``).

    Attributes:
        embedding_dim: width d of each modality's user embedding and item projection (MMRec ``embedding_size`` and
            ``feat_embed_dim``, 64 each, which must be equal there); the final embeddings are M * d wide for M
            modalities.
        knn_k: neighbours per item in each modality's kNN graph (MMRec 10).
        num_mm_layers: item-graph convolutions (MMRec ``n_mm_layers`` 1).
        num_ui_layers: LightGCN layers over the user-item graph (MMRec ``n_ui_layers`` 2).
        mode: the principal subgraph trained on. ``local`` (MMRec's default): each epoch keeps ``keep_ratio`` of
            the train edges, drawn with probability :math:`\propto 1/\sqrt{d_u d_i}`. ``global``: one fixed graph,
            the thresholded product of the top and bottom singular values of the normalised adjacency.
        keep_ratio: the fraction of train edges a ``local`` subgraph keeps (MMRec: the constant 0.3).
        svd_rank: ``global``: how many singular triplets k of the normalised (U+I, U+I) adjacency are computed
            (MMRec: ``embedding_size``, the default None); the subgraph pairs the top ``k // 4`` with the last
            ``k // 4`` of them. Both k and ``k // 4`` must be even (the bipartite graph's singular values come in
            equal pairs; an odd count would split a pair and make the result depend on an arbitrary basis).
        global_threshold: ``global``: entries of the low-rank product below this magnitude are dropped (MMRec
            1e-3).
        dropout: dropout rate of the two views of the contrastive term (MMRec 0.2).
        temperature: InfoNCE temperature of the contrastive term (MMRec: the constant 0.2).
        reg_weight: weight of the contrastive term (MMRec 0, so the default trains on BPR alone).
        modality_weights: weights of the per-modality kNN graphs, in feature order, normalised to sum 1.
            ``strict`` None: uniform. ``mmrec`` ``[0.1, 0.9]``: MMRec's ``mm_image_weight: 0.1``, which assumes
            the features are exactly ``[image, text]`` in that order; set it explicitly otherwise.
        knn_self: whether an item is a candidate neighbour of itself. ``strict`` False: the k nearest other
            items. ``mmrec`` True: MMRec's dense ``topk`` keeps the item itself and ``k - 1`` others.
        projection_init: initialisation of the modality projections. ``strict`` ``xavier``; ``mmrec``
            ``torch_default`` (``nn.Linear``'s own).
        train_features: whether the raw modality features are trained. ``strict`` False (frozen inputs);
            ``mmrec`` True (``nn.Embedding.from_pretrained(..., freeze=False)``). The item graph stays that of the
            initial features in both.
        reg_norm: unused: PGL puts no penalty on the embeddings.
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields. Not a config key.
    """

    embedding_dim: int = 64
    knn_k: int = 10
    num_mm_layers: int = 1
    num_ui_layers: int = 2
    mode: str = "local"
    keep_ratio: float = 0.3
    svd_rank: int | None = None
    global_threshold: float = 1e-3
    dropout: float = 0.2
    temperature: float = 0.2
    reg_weight: float = 0.0
    modality_weights: tuple[float, ...] | None = None
    knn_self: bool = False
    projection_init: str = "xavier"
    train_features: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"modality_weights": (0.1, 0.9), "knn_self": True, "projection_init": "torch_default",
                  "train_features": True, "embedding_dim": 64, "knn_k": 10, "num_mm_layers": 1,
                  "num_ui_layers": 2, "mode": "local", "keep_ratio": 0.3, "dropout": 0.2, "reg_weight": 0.0},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_mm_layers", "num_ui_layers")
        require_choice(self, "mode", PGL_MODES)
        if not 0 < self.keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_positive(self, "temperature")
        require_at_least(self, 0, "reg_weight", "global_threshold")
        rank = self.embedding_dim if self.svd_rank is None else self.svd_rank
        if self.mode == "global" and (rank % 2 or (rank // 4) % 2 or rank < 8):
            raise ValueError(f"mode: global needs an svd_rank k (default: embedding_dim) with k and k // 4 even and "
                             f"k >= 8, got {rank}; the bipartite graph's singular values come in equal pairs, which "
                             f"must not be split (e.g. 8, 16, 32, 64)")
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init must be one of {list(PROJECTION_INITS)}, got {self.projection_init!r}")

    @property
    def rank(self) -> int:
        """The number of singular triplets of ``global`` mode: ``svd_rank``, or ``embedding_dim`` when None."""
        return self.embedding_dim if self.svd_rank is None else self.svd_rank
