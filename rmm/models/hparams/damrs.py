"""DA-MRS's hyperparameters: the keys of a ``damrs`` model entry (the model: :mod:`rmm.models.damrs`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least, require_positive


@dataclass(frozen=True)
class DAMRSConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.damrs.DAMRS`.

    Defaults are MMRec's ``DAMRS.yaml``, whose grid entries are all single-valued (``kl_weight [1]``,
    ``neighbor_weight [0.001]``, ``n_mm_layers [1]``, ``n_ui_layers [2]``, ``learning_rate [0.001]``; its
    comments list the values the authors tried: ``kl_weight`` 10, 0.1, 0.01, 1e-3, 1e-4, 0; ``neighbor_weight``
    1, 0.1, 0.01, 1e-4, 0; ``n_mm_layers`` 1, 2; ``n_ui_layers`` 1, 2, 3; ``knn_k`` 3, 5, 10, 15, 20), plus the
    constants of MMRec's ``damrs.py`` and of the behaviour graph its ``item_graph_dict_2.npy`` holds.

    Attributes:
        embedding_dim: ID embedding width d (MMRec ``embedding_size`` 64).
        knn_k: neighbours per item in each modality's denoised kNN graph (MMRec 10).
        knn_candidates: neighbours per item of each modality's cached cosine kNN graph (the item graph spec),
            among which the cross-modal filter picks the ``knn_k`` kept ones. MMRec filters the whole similarity
            row; the two agree whenever an item's ``knn_k`` best surviving neighbours lie within its
            ``knn_candidates`` most similar items of that modality (a row with fewer survivors keeps fewer edges,
            as in MMRec).
        knn_self: whether an item is a candidate neighbour of itself. ``strict`` False: the k nearest *other*
            items. ``mmrec`` True: MMRec's ``topk`` of the whole masked row keeps the item itself (cosine 1, above
            any mean) and ``k - 1`` others.
        num_mm_layers: convolutions over each item-item graph (MMRec ``n_mm_layers`` 1).
        num_ui_layers: LightGCN layers over the user-item graph (MMRec ``n_ui_layers`` 2).
        behaviour_k: neighbours per item in the item-item behaviour graph (DA-MRS ``build_iib_graph.py
            --topk=2``, the file MMRec's ``item_graph_dict_file: item_graph_dict_2.npy`` names).
        behaviour_min_count: train users two items must share to be behaviour neighbours (that script's 2).
        kl_weight: weight of the user-preference alignment (the symmetric KL term; MMRec 1).
        neighbor_weight: weight of the graded item-relation alignment (MMRec 0.001).
        temperature: temperature of the item-relation alignment (MMRec's constant 0.2).
        num_pseudo_positives: pseudo-positives of each kind per anchor item (MMRec's constant 10); at most half
            the catalogue is used on catalogues under twice that size.
        reg_norm: unused: DA-MRS puts no penalty on the embeddings.
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a config
            key.
    """

    embedding_dim: int = 64
    knn_k: int = 10
    knn_candidates: int = 50
    knn_self: bool = False
    num_mm_layers: int = 1
    num_ui_layers: int = 2
    behaviour_k: int = 2
    behaviour_min_count: int = 2
    kl_weight: float = 1.0
    neighbor_weight: float = 1e-3
    temperature: float = 0.2
    num_pseudo_positives: int = 10
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"knn_self": True, "embedding_dim": 64, "knn_k": 10, "num_mm_layers": 1, "num_ui_layers": 2,
                  "kl_weight": 1.0, "neighbor_weight": 1e-3},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_mm_layers", "num_ui_layers", "behaviour_k",
                         "behaviour_min_count", "num_pseudo_positives")
        require_at_least(self, self.knn_k, "knn_candidates")
        require_at_least(self, 0, "kl_weight", "neighbor_weight")
        require_positive(self, "temperature")
