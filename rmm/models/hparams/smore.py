"""SMORE's hyperparameters: the keys of a ``smore`` model entry (the model: :mod:`rmm.models.smore`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least


@dataclass(frozen=True)
class SMOREConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.smore.SMORE`.

    Defaults are MMRec's ``SMORE.yaml`` (the first value of each searched list).

    Attributes:
        embedding_dim: ID embedding width d, also the width the modalities are projected to and filtered at
            (MMRec ``embedding_size`` 64).
        knn_k: neighbours per item in every modality's kNN graph (MMRec ``image_knn_k`` / ``text_knn_k``, each
            searched over ``[10, 15, 20, 40]``; rmm takes one k for all modalities).
        num_mm_layers: item-item graph convolutions of each modality and the fusion view (MMRec ``n_layers`` 1).
        num_ui_layers: LightGCN layers over the user-item graph (MMRec ``n_ui_layers``, searched ``[3, 4]``).
        dropout: dropout rate on the behaviour-driven preference gates in training (MMRec ``dropout_rate``,
            searched ``[0, 0.1]``).
        reg_weight: weight of the squared L2 penalty on the batch's final embeddings (MMRec searches
            ``[1e-5, 1e-4]``).
        cl_weight: weight of the InfoNCE terms between the side (modality) and behavioural embeddings (MMRec
            ``cl_loss`` 0.01).
        temperature: InfoNCE temperature (MMRec 0.2, hard-coded in its ``calculate_loss``).
        knn_self: whether an item is a candidate neighbour of itself in the kNN graphs. ``strict`` False: the k
            nearest *other* items. ``mmrec`` True: MMRec's dense ``topk`` of the full similarity row keeps the
            item itself (cosine 1): a self edge and ``k - 1`` others.
        projection_init: initialisation of the modality projections (:func:`rmm.models.layers.projections`).
            ``strict`` ``xavier``; ``mmrec`` ``torch_default`` (``nn.Linear``'s Kaiming-uniform).
        train_features: whether the raw modality features are trained. ``strict`` False: frozen inputs.
            ``mmrec`` True: MMRec fine-tunes them (``nn.Embedding.from_pretrained(..., freeze=False)``). The item
            graphs stay those of the initial features, in both.
        reg_norm: ``squared`` in both protocols: MMRec's SMORE computes :math:`\frac{1}{2B}\sum \lVert e
            \rVert^2` itself (not ``EmbLoss``).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's ``SMORE.yaml`` and
            code); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    knn_k: int = 10
    num_mm_layers: int = 1
    num_ui_layers: int = 3
    dropout: float = 0.0
    reg_weight: float = 1e-5
    cl_weight: float = 0.01
    temperature: float = 0.2
    knn_self: bool = False
    projection_init: str = "xavier"
    train_features: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"knn_self": True, "projection_init": "torch_default", "train_features": True,
                  "reg_norm": "squared", "embedding_dim": 64, "knn_k": 10, "num_mm_layers": 1,
                  "num_ui_layers": 3, "cl_weight": 0.01, "temperature": 0.2},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_mm_layers", "num_ui_layers")
        require_at_least(self, 0, "reg_weight", "cl_weight")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init must be one of {list(PROJECTION_INITS)}, got {self.projection_init!r}")
