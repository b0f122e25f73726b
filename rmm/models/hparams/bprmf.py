"""BPR-MF's hyperparameters: the keys of a ``bprmf`` model entry (the model: :mod:`rmm.models.bprmf`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least

#: ``init`` values: the Xavier distribution the embedding tables are drawn from.
INITS = ("xavier_uniform", "xavier_normal")


@dataclass(frozen=True)
class BPRMFConfig(EmbeddingConfig):
    r"""BPR-MF's hyperparameters, after MMRec's ``BPR.yaml``.

    Attributes:
        embedding_dim: d of the user and item factors (MMRec's ``embedding_size``: 64).
        reg_weight: weight of the regulariser of the batch's embeddings (MMRec searches ``reg_weight`` in
            [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]; rmm's default is the middle of that grid).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_norm: ``squared`` / ``frobenius``: rmm regularises :math:`\frac{1}{2B}\sum\lVert e\rVert^2` (the
            paper's Gaussian prior :math:`\lambda \lVert\Theta\rVert^2`, restricted to the batch); MMRec's
            ``EmbLoss`` uses the non-squared norms :math:`\frac{1}{B}\sum\lVert e\rVert_F`.
        init: ``xavier_uniform`` / ``xavier_normal``: the distribution of the initial factors. Both have the
            variance :math:`2 / (n + d)` of an ``(n, d)`` table; rmm draws its ID embedding tables Xavier-uniform
            throughout (as LightGCN's reference code); MMRec's BPR applies ``xavier_normal_initialization``.
    """

    embedding_dim: int = 64
    reg_weight: float = 1e-4
    init: str = "xavier_uniform"
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's ``bpr.py`` and ``BPR.yaml``); explicit
    #: values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "reg_norm": "frobenius", "init": "xavier_normal"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim")
        require_at_least(self, 0, "reg_weight")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
