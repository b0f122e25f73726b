"""MGCN's hyperparameters: the keys of a ``mgcn`` model entry (the model: :mod:`rmm.models.mgcn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice

#: MMRec's ``MGCN.yaml`` values and its hard-coded contrastive temperature (``cl_weight`` is one point of its grid).
_MMREC = {"embedding_dim": 64, "knn_k": 10, "num_ui_layers": 2, "num_mm_layers": 1, "reg_weight": 1e-4,
          "cl_weight": 0.01, "temperature": 0.2}


@dataclass(frozen=True)
class MGCNConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.mgcn.MGCN`; the defaults are MMRec's ``MGCN.yaml`` and code.

    Attributes:
        embedding_dim: ID embedding width d; every modality is projected to it (MMRec ``embedding_size`` 64).
        knn_k: neighbours per item in each modality's weighted kNN graph (MMRec 10).
        num_ui_layers: LightGCN layers of the user-item view (MMRec ``n_ui_layers`` 2).
        num_mm_layers: item-item graph convolutions of the item-item view (MMRec ``n_layers`` 1).
        reg_weight: weight of the penalty on the batch's final user, positive and negative embeddings
            (MMRec 1e-4, not searched).
        cl_weight: weight :math:`\lambda_C` of the self-supervised (contrastive) task; MMRec searches
            ``cl_loss: [0.001, 0.01, 0.1]``, the default is the grid's middle (no single published value).
        temperature: of the InfoNCE (MMRec's hard-coded 0.2; its unused ``self.tau = 0.5`` is not it).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        knn_self: whether an item is a candidate neighbour of itself in the kNN graphs. False: the k nearest
            *other* items, the paper's neighbourhood. True: MMRec's dense ``topk`` of the whole similarity row
            keeps the item itself (cosine 1): a self term and ``k - 1`` others.
        projection_init: initialisation of the modality projections (:func:`rmm.models.layers.projections`).
            ``xavier`` (Xavier-normal, rmm's shared projection) / ``torch_default`` (``nn.Linear``'s
            Kaiming-uniform, MMRec's ``image_trs``/``text_trs``). The gates and the attention query keep
            ``nn.Linear``'s initialisation in both (MMRec's; the paper names none).
        train_features: whether the raw modality features are trained. False: frozen inputs, so a model's
            features stay those of the feature store it names. True: MMRec fine-tunes them
            (``nn.Embedding.from_pretrained(..., freeze=False)``) through the purifier; they are then saved with
            the model. The item graphs stay those of the initial features, in both.
        reg_norm: ``squared`` in both: MMRec's MGCN regularises with its own
            :math:`\frac{1}{2B}\sum \lVert e \rVert^2` (:func:`~rmm.models.layers.l2_reg`'s ``squared``), not
            ``EmbLoss``.
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a
            config key.
    """

    embedding_dim: int = 64
    knn_k: int = 10
    num_ui_layers: int = 2
    num_mm_layers: int = 1
    reg_weight: float = 1e-4
    cl_weight: float = 0.01
    temperature: float = 0.2
    knn_self: bool = False
    projection_init: str = "xavier"
    train_features: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {**_MMREC, "knn_self": True, "projection_init": "torch_default", "train_features": True,
                  "reg_norm": "squared"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_ui_layers", "num_mm_layers")
        require_at_least(self, 0, "reg_weight", "cl_weight")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        require_choice(self, "projection_init", PROJECTION_INITS)
