"""DualGNN's hyperparameters: the keys of a ``dualgnn`` model entry (the model: :mod:`rmm.models.dualgnn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice

#: How a user weighs its co-occurrence neighbours: softmax of the counts (MMRec's ``user_aggr_mode``) or uniform.
USER_AGGREGATIONS = ("softmax", "mean")


@dataclass(frozen=True)
class DualGNNConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.dualgnn.DualGNN`.

    Defaults are MMRec's (``DualGNN.yaml`` and the constants of its ``dualgnn.py``); MMRec searches
    ``reg_weight`` and the learning rate over ``[0.1, 0.01, 0.001, 0.0001, 0.00001]`` each.

    Attributes:
        embedding_dim: width d of the user preferences and of the modality encoders' output (MMRec 64).
        num_layers: graph convolutions over the user-item graph per modality (MMRec's code: 2, one weight-free
            convolution applied twice; the yaml's ``n_layers: 2``).
        user_knn_k: co-occurrence neighbours per user in the user-user graph (MMRec's constant ``k = 40``).
        user_aggregation: ``softmax`` (weights the softmax of the co-occurrence counts, MMRec) or ``mean``.
        reg_weight: weight of the penalty on the batch users' preferences and the modality weights (mean
            squares); MMRec searches ``[0.1, 0.01, 0.001, 0.0001, 0.00001]``; 1e-3 is the grid's middle.
        projection_init: initialisation of the encoders' linear layers. ``strict`` ``xavier`` (Xavier-normal
            weights, rmm's shared projection); ``mmrec`` ``torch_default`` (``nn.Linear``'s Kaiming-uniform).
        log2_bpr: ``strict`` False: BPR with the natural log, :math:`-\ln\sigma`; ``mmrec`` True: MMRec's
            :math:`-\log_2\sigma` (the same loss times :math:`1/\ln 2`).
        pad_user_neighbours: ``strict`` False: a user with fewer than ``user_knn_k`` co-occurrence neighbours
            averages over those it has. ``mmrec`` True: MMRec pads its list to k each epoch by repeating randomly
            chosen entries, so repeated neighbours weigh more (drawn from ``(seed, epoch)`` in rmm).
        reg_norm: unused (the penalty is MMRec's mean of squares).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a
            config key.
    """

    embedding_dim: int = 64
    num_layers: int = 2
    user_knn_k: int = 40
    user_aggregation: str = "softmax"
    reg_weight: float = 1e-3
    projection_init: str = "xavier"
    log2_bpr: bool = False
    pad_user_neighbours: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"projection_init": "torch_default", "log2_bpr": True, "pad_user_neighbours": True,
                  "embedding_dim": 64, "num_layers": 2, "user_knn_k": 40, "user_aggregation": "softmax"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers", "user_knn_k")
        require_at_least(self, 0, "reg_weight")
        require_choice(self, "user_aggregation", USER_AGGREGATIONS)
        require_choice(self, "projection_init", PROJECTION_INITS)
