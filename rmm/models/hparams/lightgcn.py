"""LightGCN's hyperparameters: the keys of a ``lightgcn`` model entry (the model: :mod:`rmm.models.lightgcn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least


@dataclass(frozen=True)
class LightGCNConfig(EmbeddingConfig):
    r"""LightGCN's hyperparameters: the paper's defaults (3 layers, :math:`\lambda` 1e-4, d 64), inside MMRec's
    ``LightGCN.yaml`` grid.

    Attributes:
        embedding_dim: d of the layer-0 embeddings (MMRec's ``embedding_size``: 64).
        num_layers: propagation steps L (MMRec searches ``n_layers`` in [1, 2, 3, 4]).
        reg_weight: weight of the regulariser of the batch's layer-0 embeddings (MMRec searches [1e-2, 1e-3,
            1e-4, 1e-5, 1e-6]).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``squared`` / ``frobenius``: rmm regularises :math:`\frac{1}{2B}\sum\lVert e^{(0)}\rVert^2`,
            as the paper and its reference code; MMRec's ``EmbLoss`` uses the non-squared norms
            :math:`\frac{1}{B}\sum\lVert e^{(0)}\rVert_F`.
        init_per_table: ``False`` / ``True``: True draws the user and the item table Xavier-uniform each with its
            own bound :math:`\sqrt{6 / (n + d)}` (``n`` = U, then I), as the reference code and MMRec; False
            draws the stacked ``(U+I, d)`` table at once, one bound :math:`\sqrt{6 / (U + I + d)}` for both, which
            is rmm's historical initialisation, kept so that strict runs stay comparable with earlier ones (the
            smaller side's rows start smaller than the reference code's: ~2x for items at 20k users, 7k items).
    """

    embedding_dim: int = 64
    num_layers: int = 3
    reg_weight: float = 1e-4
    init_per_table: bool = False
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's ``lightgcn.py`` and ``LightGCN.yaml``);
    #: explicit values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "reg_norm": "frobenius", "init_per_table": True}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")
