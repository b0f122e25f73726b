"""What the hyperparameters of several models share: the embedding models' base config and the value lists of
shared layers (their implementations are in :mod:`rmm.models.layers`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

#: ``reg_norm`` values of the models' configs: how :func:`rmm.models.layers.l2_reg` measures the batch's embeddings.
REG_NORMS = ("squared", "frobenius")
#: ``projection_init`` values of the models built on :func:`rmm.models.layers.projections`.
PROJECTION_INITS = ("xavier", "torch_default")
#: Content fusions of :func:`rmm.models.layers.build_fusion`: how a single-content-input model combines modalities.
FUSIONS = ("concat", "mean", "sum", "attention", "gated")


@dataclass(frozen=True)
class EmbeddingConfig:
    """What the config of every :class:`~rmm.models.base.EmbeddingRecommender` shares; a model's config derives
    from it (and its ``__post_init__`` calls this one's).

    Attributes:
        reg_norm: how the batch's embeddings are regularised, ``squared`` (rmm, LightGCN's reference code) or
            ``frobenius`` (MMRec's ``EmbLoss``); see :func:`rmm.models.layers.l2_reg`.
        protocol_defaults: ``protocol name -> {field: value}``, the defaults a config-level ``protocol:`` gives
            this model's fields (explicit values in the config win); merged along the class hierarchy, so a
            model's own table adds to and overrides this one's. Not a config key.
    """

    reg_norm: str = "squared"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __post_init__(self) -> None:
        if self.reg_norm not in REG_NORMS:
            raise ValueError(f"reg_norm must be one of {list(REG_NORMS)}, got {self.reg_norm!r}")
