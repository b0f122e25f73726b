"""MENTOR's hyperparameters: the keys of a ``mentor`` model entry (the model: :mod:`rmm.models.mentor`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice


@dataclass(frozen=True)
class MENTORConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.mentor.MENTOR`.

    Defaults are the official code's (``MENTOR.yaml`` and the constants of its ``mentor.py``, an MMRec fork): the
    first value of each grid it lists. Its grids: ``mask_weight_g`` ``[0.0001, 0.001]``, ``temp``
    ``[0.2, 0.4, 0.6]``; single values: learning rate ``0.0001`` (a training key), ``reg_weight`` ``0.001``,
    ``dropout`` ``0.5`` (commented grid ``[0.1, 0.3, 0.5, 0.7]``), ``mask_weight_f`` ``1.5`` (commented
    ``[1, 1.5, 2, 2.5, 3]``), ``align_weight`` ``0.1`` (commented ``[0.1, 0.2, 0.3]``).

    Attributes:
        embedding_dim: width d of every encoder's output and user preference (64).
        num_layers: weight-free convolutions over the user-item graph per encoder (the code's 2).
        knn_k: neighbours per item in each modality's cosine kNN graph (10).
        num_mm_layers: convolutions over the item-item graph (``n_mm_layers`` 1).
        modality_weights: weights of the per-modality kNN graphs, in feature order, normalised to sum 1.
            ``strict`` None: uniform. ``mmrec`` ``[0.1, 0.9]``: the code's ``mm_image_weight: 0.1``, which assumes
            exactly two features, **image first, then text**; set it explicitly (or null) otherwise.
        knn_self: whether an item is a candidate neighbour of itself. ``strict`` False: the k nearest *other*
            items; ``mmrec`` True: ``topk`` of the whole similarity row (the item itself and k - 1 others).
        reg_weight: weight of the mean squares of the batch users' preferences and of the user modality weights.
        dropout: fraction of the entries zeroed in the feature-masking target view (0.5).
        mask_weight_f: weight of the feature-masking loss (1.5).
        mask_weight_g: weight of the graph-perturbation InfoNCE loss (grid ``[0.0001, 0.001]``).
        align_weight: weight of the multi-level distribution alignment loss (0.1).
        temperature: of the InfoNCE loss (``temp``, grid ``[0.2, 0.4, 0.6]``).
        perturb_eps: magnitude of the random perturbation added after each convolution of the perturbed
            encoders (the code's constant 0.1).
        projection_init: initialisation of the encoders' linear layers and of the masking MLP. ``strict``
            ``xavier``; ``mmrec`` ``torch_default`` (``nn.Linear``'s Kaiming-uniform).
        log2_bpr: ``strict`` False: BPR with the natural log; ``mmrec`` True: the code's :math:`-\log_2\sigma`.
        mask_gradient: ``strict`` True: the feature-masking loss trains the MLP and the embeddings through it (the
            dropout view a stop-gradient target). ``mmrec`` False: the code computes both views under
            ``no_grad``, so the loss adds a constant and the MLP never trains.
        reg_norm: unused (the penalty is a mean of squares).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a
            config key.
    """

    embedding_dim: int = 64
    num_layers: int = 2
    knn_k: int = 10
    num_mm_layers: int = 1
    modality_weights: tuple[float, ...] | None = None
    knn_self: bool = False
    reg_weight: float = 1e-3
    dropout: float = 0.5
    mask_weight_f: float = 1.5
    mask_weight_g: float = 1e-4
    align_weight: float = 0.1
    temperature: float = 0.2
    perturb_eps: float = 0.1
    projection_init: str = "xavier"
    log2_bpr: bool = False
    mask_gradient: bool = True
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"modality_weights": (0.1, 0.9), "knn_self": True, "projection_init": "torch_default",
                  "log2_bpr": True, "mask_gradient": False, "embedding_dim": 64, "num_layers": 2, "knn_k": 10,
                  "num_mm_layers": 1},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers", "knn_k", "num_mm_layers")
        require_at_least(self, 0, "reg_weight", "mask_weight_f", "mask_weight_g", "align_weight", "perturb_eps")
        require_choice(self, "projection_init", PROJECTION_INITS)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")
