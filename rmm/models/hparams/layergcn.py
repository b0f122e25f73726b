"""LayerGCN's hyperparameters: the keys of a ``layergcn`` model entry (the model: :mod:`rmm.models.layergcn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least

#: ``loss_reduction`` values: the batch mean (rmm) or the batch sum (MMRec) of BPR and penalty.
LOSS_REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class LayerGCNConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.layergcn.LayerGCN`: MMRec's ``LayerGCN.yaml`` (d 64, 4 layers);
    ``reg_weight`` and ``dropout`` are values inside MMRec's grids (not tuned).

    Attributes:
        embedding_dim: d of the layer-0 (ego) embeddings (MMRec ``embedding_size`` 64).
        num_layers: refined propagation steps L (MMRec ``n_layers`` [4]).
        reg_weight: weight of the squared-norm penalty of the batch's ego rows (MMRec searches [1e-2, 1e-3, 1e-4,
            1e-5]).
        dropout: the fraction of user-item edges pruned each epoch (MMRec searches [0.0, 0.1, 0.2]); 0 trains on
            the full graph.
        reg_norm: ``squared`` in both protocols (MMRec's ``L2Loss`` is the squared norm, halved).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        alternate_pruning: ``False`` / ``True``: every epoch prunes degree-sensitively (the paper), or, as MMRec's
            ``pre_epoch_processing``, even epochs degree-sensitively and odd epochs uniformly at random.
        loss_reduction: ``mean`` / ``sum``: the batch mean of BPR plus ``reg_weight`` times
            :math:`\frac{1}{2B}\sum\lVert e^{(0)}\rVert^2`, or MMRec's batch sums (B times that: the same
            optimum, Adam steps equal up to its epsilon).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a key.
    """

    embedding_dim: int = 64
    num_layers: int = 4
    reg_weight: float = 1e-4
    dropout: float = 0.1
    alternate_pruning: bool = False
    loss_reduction: str = "mean"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "num_layers": 4, "alternate_pruning": True, "loss_reduction": "sum"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {list(LOSS_REDUCTIONS)}, got {self.loss_reduction!r}")
