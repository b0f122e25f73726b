"""DRAGON's hyperparameters: the keys of a ``dragon`` model entry (the model: :mod:`rmm.models.dragon`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.dualgnn import DualGNNConfig
from rmm.validation import require_at_least


@dataclass(frozen=True)
class DRAGONConfig(DualGNNConfig):
    r"""Hyperparameters of :class:`~rmm.models.dragon.DRAGON`: DualGNN's (same meaning and defaults, MMRec's
    ``DRAGON.yaml`` and the constants of its ``dragon.py``) plus the item-item graph's. MMRec searches
    ``reg_weight`` and the learning rate over ``[0.1, 0.01, 0.001, 0.0001, 0.00001]`` each.

    Attributes:
        knn_k: neighbours per item in each modality's cosine kNN graph (MMRec 10).
        num_mm_layers: convolutions over the item-item graph (MMRec ``n_mm_layers`` 1).
        modality_weights: weights of the per-modality kNN graphs, in feature order, normalised to sum 1.
            ``strict`` None: uniform. ``mmrec`` ``[0.1, 0.9]``: MMRec's ``mm_image_weight: 0.1``, which assumes
            exactly two features, **image first, then text**; set it explicitly (or null) otherwise.
        knn_self: whether an item is a candidate neighbour of itself. ``strict`` False: the k nearest *other*
            items; ``mmrec`` True: MMRec's ``topk`` of the whole similarity row (the item itself and k - 1 others).
    """

    knn_k: int = 10
    num_mm_layers: int = 1
    modality_weights: tuple[float, ...] | None = None
    knn_self: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"modality_weights": (0.1, 0.9), "knn_self": True, "knn_k": 10, "num_mm_layers": 1},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "knn_k", "num_mm_layers")
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")
