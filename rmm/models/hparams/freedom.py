"""FREEDOM's hyperparameters: the keys of a ``freedom`` model entry (the model: :mod:`rmm.models.freedom`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least


@dataclass(frozen=True)
class FREEDOMConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.freedom.FREEDOM`.

    Attributes:
        embedding_dim: ID embedding width d, also the width the modalities are projected to (MMRec
            ``embedding_size`` and ``feat_embed_dim``, 64 each, which must be equal there).
        knn_k: neighbours per item in each modality's kNN graph (MMRec 10).
        num_mm_layers: item-graph convolutions (MMRec ``n_mm_layers`` 1).
        num_ui_layers: LightGCN layers over the user-item graph (MMRec ``n_ui_layers`` 2).
        dropout: the fraction of user-item edges pruned each epoch; MMRec searches ``[0.8, 0.9]``.
        reg_weight: weight :math:`\lambda` of the modality BPR terms; MMRec searches ``[0.0, 1e-5, 1e-4, 1e-3]``.
        modality_weights: weights of the per-modality kNN graphs, in feature order (``model.features``),
            normalised to sum 1. ``strict`` None: uniform, since rmm takes any list of modalities. ``mmrec``
            ``[0.1, 0.9]``: MMRec's ``mm_image_weight: 0.1`` (image 0.1, text 0.9), which assumes the parity
            config lists exactly two features, **image first, then text**; with other feature lists set it
            explicitly (one weight per feature, or null for uniform).
        knn_self: whether an item is a candidate neighbour of itself in the kNN graphs. ``strict`` False: the k
            nearest *other* items, the paper's neighbourhood. ``mmrec`` True: MMRec's dense ``topk`` of the full
            similarity row keeps the item itself (cosine 1): a self term and ``k - 1`` others.
        projection_init: initialisation of the modality projections (:func:`rmm.models.layers.projections`).
            ``strict`` ``xavier`` (Xavier-normal, rmm's shared projection); ``mmrec`` ``torch_default``
            (``nn.Linear``'s Kaiming-uniform).
        train_features: whether the raw modality features are trained. ``strict`` False: frozen inputs, so a
            model's features stay those of the feature store it names. ``mmrec`` True: MMRec fine-tunes them
            (``nn.Embedding.from_pretrained(..., freeze=False)``) through the modality BPR terms; they are then
            saved with the model. The item graph stays that of the initial features, in both.
        reg_norm: unused: FREEDOM, like MMRec's, puts no penalty on the embeddings (its ``reg_weight`` weighs
            the modality BPR terms).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's ``FREEDOM.yaml`` and
            code); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    knn_k: int = 10
    num_mm_layers: int = 1
    num_ui_layers: int = 2
    dropout: float = 0.8
    reg_weight: float = 1e-4
    modality_weights: tuple[float, ...] | None = None
    knn_self: bool = False
    projection_init: str = "xavier"
    train_features: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"modality_weights": (0.1, 0.9), "knn_self": True, "projection_init": "torch_default",
                  "train_features": True, "embedding_dim": 64, "knn_k": 10, "num_mm_layers": 1,
                  "num_ui_layers": 2},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_mm_layers", "num_ui_layers")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_at_least(self, 0, "reg_weight")
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init must be one of {list(PROJECTION_INITS)}, got {self.projection_init!r}")
