"""SelfCF's hyperparameters: the keys of a ``selfcf`` model entry (the model: :mod:`rmm.models.selfcf`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least

#: ``reg_reduction`` values: the penalty divided by the batch size (rmm) or summed (MMRec's ``L2Loss``).
REG_REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class SelfCFConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.selfcf.SelfCF` (the SELFCF\ :sub:`ed` variant with a LightGCN
    encoder): MMRec's ``SELFCFED_LGN.yaml`` (d 64); ``num_layers``, ``dropout`` and ``reg_weight`` are values
    inside MMRec's grids (not tuned).

    Attributes:
        embedding_dim: d of the layer-0 embeddings, also the predictor's width (MMRec ``embedding_size`` 64).
        num_layers: LightGCN propagation steps of the encoder (MMRec searches ``n_layers`` [1, 2]).
        dropout: embedding dropout rate p of the target views (MMRec searches [0.1, 0.2, 0.5]).
        reg_weight: weight of the squared-norm penalty of the batch's final (encoder) embeddings (MMRec searches
            [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 0.0]).
        reg_norm: ``squared`` in both protocols (MMRec's ``L2Loss`` is the squared norm, halved).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        reg_reduction: ``mean`` / ``sum``: the penalty :math:`\frac{1}{2B}(\lVert U_B\rVert^2 + \lVert
            I_B\rVert^2)` of the batch's B user and B item rows, on the scale of the batch-mean alignment loss,
            or MMRec's ``L2Loss`` :math:`\frac{1}{2}(\ldots)` (B times larger: MMRec's ``reg_weight`` values
            equal rmm's times the batch size).
        edge_dropout: ``0.0`` / ``1.0``: the largest rate of the encoder's per-step edge dropout. MMRec's
            LightGCN encoder (BUIR's) draws a rate :math:`r \sim \mathcal{U}[0, \text{edge\_dropout})` every
            training step, drops each stored entry of :math:`\hat{A}` with probability r and rescales the kept
            ones by :math:`1/(1-r)`; the paper describes no graph dropout, so strict propagates on
            :math:`\hat{A}`.
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a key.
    """

    embedding_dim: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    reg_weight: float = 1e-4
    reg_reduction: str = "mean"
    edge_dropout: float = 0.0
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "reg_reduction": "sum", "edge_dropout": 1.0}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.edge_dropout <= 1:
            raise ValueError(f"edge_dropout must be in [0, 1], got {self.edge_dropout}")
        if self.reg_reduction not in REG_REDUCTIONS:
            raise ValueError(f"reg_reduction must be one of {list(REG_REDUCTIONS)}, got {self.reg_reduction!r}")
