"""COHESION's hyperparameters: the keys of a ``cohesion`` model entry (the model: :mod:`rmm.models.cohesion`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice


@dataclass(frozen=True)
class COHESIONConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.cohesion.COHESION`.

    Defaults: the official code's (``COHESION.yaml`` and the constants of its ``cohesion.py``) where it fixes a
    value. Its yaml searches the learning rate over ``[0.1, 0.01, 0.001, 0.0001]`` (rmm's ``train.learning_rate``;
    its ``overall.yaml`` default 0.001), ``reg_weight`` over ``[0.1, 0.01, 0.001, 0.0001]``, ``num_layer`` (here
    ``num_layers``) over ``[1, 2, 3, 4]`` and ``dropout`` over ``[0]`` only (so user-item edge pruning is left out).
    The paper's best per-dataset values were not at hand: ``num_layers`` 2 is the yaml's ``n_layers: 2`` (the
    DualGNN/DRAGON depth the code derives from) and ``reg_weight`` 1e-3 the middle of its grid.

    Attributes:
        embedding_dim: width d of every branch (ID and each modality; MMRec ``embedding_size`` and its constant
            ``dim_latent``, 64 each). Final embeddings are (M + 1) d wide.
        num_layers: composite (cosine-gated) convolutions over the user-item graph per branch (MMRec
            ``num_layer``).
        num_mm_layers: convolutions over the item-item graph (MMRec ``n_mm_layers`` 1).
        knn_k: neighbours per item in each modality's cosine kNN graph (MMRec 10).
        user_knn_k: co-occurrence neighbours per user in the user-user graph (MMRec's constant ``k = 40``),
            weighted by the softmax of the shared-item counts.
        reg_weight: weight of the mean-square penalty on the batch users' branch preferences.
        modality_weights: weights of the per-modality kNN graphs, in feature order, normalised to sum 1.
            ``strict`` None: uniform. ``mmrec`` ``[0.1, 0.9]``: MMRec's ``mm_image_weight: 0.1``, which assumes
            exactly two features, **image first, then text**; set it explicitly (or null) otherwise.
        knn_self: whether an item is a candidate neighbour of itself. ``strict`` False: the k nearest *other*
            items; ``mmrec`` True: MMRec's ``topk`` of the whole similarity row (the item itself and k - 1 others).
        projection_init: initialisation of the branch encoders' linear layers. ``strict`` ``xavier``;
            ``mmrec`` ``torch_default`` (``nn.Linear``'s Kaiming-uniform).
        log2_bpr: ``strict`` False: BPR with the natural log; ``mmrec`` True: MMRec's :math:`-\log_2\sigma`.
        pad_user_neighbours: ``strict`` False: a user with fewer than ``user_knn_k`` neighbours averages over
            those it has. ``mmrec`` True: its list is padded to k with random repeats each epoch (from
            ``(seed, epoch)`` in rmm), as MMRec's ``topk_sample``.
        detach_id: ``strict`` False: the ID branch's convolution output is trained like the others (its user
            preference regularised with theirs). ``mmrec`` True: MMRec uses ``id_rep.data``, so the ID branch's
            preference and encoder get no gradient (and no penalty); the item ID embeddings still learn through
            the early fusion of the modality branches.
        reg_norm: unused (the penalty is MMRec's mean of squares).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a
            config key.
    """

    embedding_dim: int = 64
    num_layers: int = 2
    num_mm_layers: int = 1
    knn_k: int = 10
    user_knn_k: int = 40
    reg_weight: float = 1e-3
    modality_weights: tuple[float, ...] | None = None
    knn_self: bool = False
    projection_init: str = "xavier"
    log2_bpr: bool = False
    pad_user_neighbours: bool = False
    detach_id: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"modality_weights": (0.1, 0.9), "knn_self": True, "projection_init": "torch_default",
                  "log2_bpr": True, "pad_user_neighbours": True, "detach_id": True, "embedding_dim": 64,
                  "num_mm_layers": 1, "knn_k": 10, "user_knn_k": 40},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers", "num_mm_layers", "knn_k", "user_knn_k")
        require_at_least(self, 0, "reg_weight")
        require_choice(self, "projection_init", PROJECTION_INITS)
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")
