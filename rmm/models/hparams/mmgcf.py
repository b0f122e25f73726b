"""MMGCF's hyperparameters: the keys of a ``mmgcf`` model entry (the model: :mod:`rmm.models.mmgcf`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice

#: ``fusion_mode`` values: how the ID embedding and the projected modalities are combined.
FUSION_MODES = ("mean", "sum", "concat")
#: ``weighting`` values: how the ID embedding and the modalities are weighted before or while fusing.
WEIGHTINGS = ("equal", "alpha", "normalized")


@dataclass(frozen=True)
class MMGCFConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.mmgcf.MMGCF`.

    MMRec's ``MMGCF.yaml`` fixes only the widths (64, 64) and searches the rest; rmm's defaults are one point of
    each grid, rmm's choice (not tuned, no single published value): ``weighting`` the yaml's recommended
    ``equal``; ``fusion_mode`` the grid's first value; ``num_ui_layers`` and ``dropout`` the grid's middle value;
    ``reg_weight`` 1e-4, the grid value that is LightGCN's (the paper's and rmm's ``lightgcn`` default).

    Attributes:
        embedding_dim: width d of the user and item ID embeddings (MMRec ``embedding_size`` 64).
        feat_embed_dim: width f every modality is projected to (MMRec ``feat_embed_dim`` 64). ``mean`` and
            ``sum`` fusion add the ID and modality rows element-wise, so they need f == d; ``concat`` takes any f.
        num_ui_layers: LightGCN layers over the user-item graph (MMRec searches ``n_ui_layers`` [1, 2, 3]).
        reg_weight: weight of the penalty on the batch's layer-0 user, positive and negative ID rows (MMRec
            searches [1e-1, 1e-2, 1e-3, 1e-4]).
        fusion_mode: ``mean``, ``sum`` or ``concat`` (a linear map of the concatenation back to d); MMRec searches
            all three.
        weighting: ``equal`` (modalities fused first, then fused with the ID embedding: MMRec's recommended
            default), ``alpha`` (a learned gate :math:`\alpha = \sigma(a)` scales the ID embedding by
            :math:`\alpha` and each modality by :math:`1 - \alpha`, then all are fused at once) or ``normalized``
            (every row L2-normalised, the ID row scaled by the number of modalities M, then all fused at once);
            MMRec searches all three.
        dropout: the fraction of user-item edges pruned (degree-sensitively) each epoch; 0 trains on the full
            graph (MMRec searches [0.2, 0.5, 0.8]).
        reg_norm: ``squared`` in both protocols: MMRec's MMGCF penalises
            :math:`\frac{1}{2B}\sum \lVert e^{(0)} \rVert^2` itself, not with ``EmbLoss``.

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        projection_init: initialisation of the modality projections (:func:`rmm.models.layers.projections`):
            ``xavier`` (Xavier-normal, rmm's shared projection) / ``torch_default`` (``nn.Linear``'s
            Kaiming-uniform, MMRec's ``image_trs``/``text_trs``). The concat fusion layers keep ``nn.Linear``'s
            initialisation in both (MMRec's; the paper names none).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a
            config key.
    """

    embedding_dim: int = 64
    feat_embed_dim: int = 64
    num_ui_layers: int = 2
    reg_weight: float = 1e-4
    fusion_mode: str = "mean"
    weighting: str = "equal"
    dropout: float = 0.5
    projection_init: str = "xavier"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "feat_embed_dim": 64, "projection_init": "torch_default",
                  "reg_norm": "squared"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "feat_embed_dim", "num_ui_layers")
        require_at_least(self, 0, "reg_weight")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_choice(self, "fusion_mode", FUSION_MODES)
        require_choice(self, "weighting", WEIGHTINGS)
        require_choice(self, "projection_init", PROJECTION_INITS)
        if self.fusion_mode != "concat" and self.feat_embed_dim != self.embedding_dim:
            raise ValueError(f"fusion_mode {self.fusion_mode!r} adds ID and modality rows element-wise, so "
                             f"feat_embed_dim must equal embedding_dim, got {self.feat_embed_dim} and "
                             f"{self.embedding_dim}; set them equal or use fusion_mode: concat")
