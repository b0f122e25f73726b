"""BM3's hyperparameters: the keys of a ``bm3`` model entry (the model: :mod:`rmm.models.bm3`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least


@dataclass(frozen=True)
class BM3Config(EmbeddingConfig):
    """BM3's hyperparameters, after MMRec's ``BM3.yaml``.

    Attributes:
        embedding_dim: d of the ID embeddings; every modality is projected to it too (MMRec's
            ``embedding_size`` = ``feat_embed_dim`` = 64).
        num_layers: LightGCN layers over the user-item graph (MMRec searches ``n_layers`` in [1, 2]).
        dropout: the fraction of a target view's entries zeroed (MMRec searches [0.3, 0.5]).
        reg_weight: weight of the embedding regulariser (MMRec searches [0.1, 0.01]).
        cl_weight: weight of the modality alignment and reconstruction terms (MMRec: 2.0).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``frobenius`` in both protocols (the BM3 authors' and MMRec's ``EmbLoss``, for which
            ``reg_weight``'s default and MMRec's grid were tuned): the regulariser of the *whole* online user and
            item tables, divided by the number of items, ``(||H_U|| + ||H_I||) / I`` (non-squared norms); ``squared``
            gives the usual L2 penalty ``(||H_U||^2 + ||H_I||^2) / 2I``, whose gradient shrinks with the
            embeddings.
        train_features: ``False`` / ``True``: MMRec fine-tunes the content features as embedding tables
            (``from_pretrained(..., freeze=False)``); rmm keeps them frozen inputs, so that comparing features
            compares the extracted features (and no trainable copy of every feature matrix, with its Adam
            moments, is held).
    """

    reg_norm: str = "frobenius"
    embedding_dim: int = 64
    num_layers: int = 1
    dropout: float = 0.5
    reg_weight: float = 0.1
    cl_weight: float = 2.0
    train_features: bool = False
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's code and ``BM3.yaml``); explicit values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "cl_weight": 2.0, "reg_norm": "frobenius", "train_features": True}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_at_least(self, 0, "reg_weight", "cl_weight")
