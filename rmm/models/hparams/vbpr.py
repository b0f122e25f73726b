"""VBPR's hyperparameters: the keys of a ``vbpr`` model entry (the model: :mod:`rmm.models.vbpr`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least

#: ``projection_init`` values: how the content projection (every linear layer of the fusion) starts.
PROJECTION_INITS = ("pytorch", "xavier_normal")


@dataclass(frozen=True)
class VBPRConfig(EmbeddingConfig):
    r"""VBPR's hyperparameters, after MMRec's ``VBPR.yaml``.

    Attributes:
        embedding_dim: d of each half of the factors, :math:`\gamma` and :math:`\theta` (MMRec's
            ``embedding_size``: 64; users have 2d).
        reg_weight: weight of the regulariser of the batch's final embeddings (MMRec searches ``reg_weight`` in
            [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``squared`` / ``frobenius``: rmm regularises :math:`\frac{1}{2B}\sum\lVert e\rVert^2` (the
            paper's squared L2); MMRec's ``EmbLoss`` uses the non-squared norms :math:`\frac{1}{B}\sum\lVert
            e\rVert_F`.
        projection_init: ``pytorch`` / ``xavier_normal``: the content projection's (every ``nn.Linear`` of the
            fusion) initial weights and biases. rmm keeps PyTorch's default (Kaiming-uniform weights, uniform
            biases), which its results so far were trained from; MMRec applies ``xavier_normal_initialization``
            (Xavier-normal weights, zero biases).
    """

    embedding_dim: int = 64
    reg_weight: float = 1e-4
    projection_init: str = "pytorch"
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's ``vbpr.py`` and ``VBPR.yaml``); explicit
    #: values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "reg_norm": "frobenius", "projection_init": "xavier_normal"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim")
        require_at_least(self, 0, "reg_weight")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init must be one of {list(PROJECTION_INITS)}, "
                             f"got {self.projection_init!r}")
