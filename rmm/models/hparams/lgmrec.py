"""LGMRec's hyperparameters: the keys of a ``lgmrec`` model entry (the model: :mod:`rmm.models.lgmrec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least

#: MMRec's ``LGMRec.yaml`` (its Baby settings; every entry there is a one-value list) and its hard-coded ``tau``.
_MMREC = {"embedding_dim": 64, "num_ui_layers": 2, "num_mm_layers": 2, "num_hyper_layers": 1, "num_hyperedges": 4,
          "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 1e-4, "reg_weight": 1e-6, "temperature": 0.2}


@dataclass(frozen=True)
class LGMRecConfig(EmbeddingConfig):
    """LGMRec's hyperparameters; the defaults are MMRec's ``LGMRec.yaml`` (its Baby settings).

    Attributes:
        embedding_dim: d of the ID embeddings; the modalities are projected to it too (MMRec's ``embedding_size``
            = ``feat_embed_dim`` = 64).
        num_ui_layers: LightGCN layers of the collaborative graph embedding (``n_ui_layers``, 2).
        num_mm_layers: graph convolutions of the modality graph embeddings (``n_mm_layers``, 2).
        num_hyper_layers: hypergraph layers (``n_hyper_layer``, 1; MMRec's comments give 2 for Clothing).
        num_hyperedges: hyperedges per modality (``hyper_num``, 4; 64 for Clothing).
        keep_rate: the fraction of hyperedge memberships kept by dropout in training (0.5; Sports 0.4,
            Clothing 0.2).
        alpha: weight of the global (hypergraph) embeddings (0.3; Sports 0.6, Clothing 0.2).
        cl_weight: weight of the hypergraph contrastive loss (1e-4).
        reg_weight: weight of the regulariser of the batch's final embeddings (1e-6).
        temperature: of both the Gumbel-softmax and the contrastive loss (MMRec's hard-coded ``tau`` 0.2).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``frobenius`` in both protocols (MMRec's non-squared norms, for which ``reg_weight``'s default,
            MMRec's 1e-6, was tuned): the regulariser of the batch's final user, positive and negative embeddings
            over the batch size; ``squared`` gives rmm's squared L2 form (:func:`~rmm.models.layers.l2_reg`).
        eval_gumbel: ``False`` / ``True``: whether scoring samples Gumbel noise into the hyperedge memberships.
            MMRec's ``forward`` always does (its ``full_sort_predict`` too, only the dropout being off in eval
            mode), so its scores change from one evaluation to the next; rmm scores with the noise-free
            ``softmax(h / tau)``, so that evaluating (and serving) the same weights gives the same
            ranking.
    """

    reg_norm: str = "frobenius"
    embedding_dim: int = 64
    num_ui_layers: int = 2
    num_mm_layers: int = 2
    num_hyper_layers: int = 1
    num_hyperedges: int = 4
    keep_rate: float = 0.5
    alpha: float = 0.3
    cl_weight: float = 1e-4
    reg_weight: float = 1e-6
    temperature: float = 0.2
    eval_gumbel: bool = False
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's code and ``LGMRec.yaml``); explicit values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {**_MMREC, "reg_norm": "frobenius", "eval_gumbel": True}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_ui_layers", "num_mm_layers", "num_hyper_layers",
                         "num_hyperedges")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        require_at_least(self, 0, "alpha", "cl_weight", "reg_weight")
