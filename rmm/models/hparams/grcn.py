"""GRCN's hyperparameters: the keys of a ``grcn`` model entry (the model: :mod:`rmm.models.grcn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.models.hparams.mmgcn import REGULARISERS
from rmm.validation import require_at_least, require_choice


@dataclass(frozen=True)
class GRCNConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.grcn.GRCN`.

    Attributes:
        embedding_dim: width d of the ID embeddings (MMRec ``embedding_size`` 64).
        latent_dim: width of every modality's preferences and content representations (MMRec
            ``latent_embedding`` 64).
        num_routing: routing iterations of the user preferences (MMRec ``n_layers`` 3).
        reg_weight: weight of the regulariser; MMRec searches ``[0.1, 1e-2, 1e-3, 1e-4, 1e-5]`` (and the learning
            rate over ``[1, 0.1, 1e-2, 1e-3, 1e-4]``).

    Protocol switches (``strict`` value first, then ``mmrec``'s):
        route_preferences: ``True`` / ``False``: whether the user preferences are routed over their items'
            content before the edges are scored (the paper's neighbour routing). MMRec (like the authors' code)
            passes the routing messages along the user -> item edges only, so they reach the item rows, and then
            keeps the user rows, which received nothing: its preferences are just normalised, ``num_routing``
            being without effect.
        regulariser: ``batch`` / ``mmrec``. ``batch``: ``reg_weight`` times
            :func:`~rmm.models.layers.l2_reg` (``reg_norm``) of the batch's ID rows and user preferences.
            ``mmrec``: MMRec's :func:`~rmm.models.mmgcn.mmrec_id_reg` of the batch's ID rows, plus the element
            mean of squares of the first branch's *whole* preference table (its ``v_gcn.preference``), plus per
            modality that of the batch's preference rows; ``reg_norm`` is then unused.
        reg_norm: as :class:`~rmm.models.hparams.base.EmbeddingConfig`, for ``regulariser: batch``; ``squared`` in both
            protocols (MMRec's GRCN does not use ``EmbLoss``).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's code and
            ``GRCN.yaml``); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    latent_dim: int = 64
    num_routing: int = 3
    reg_weight: float = 1e-4
    route_preferences: bool = True
    regulariser: str = "batch"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "latent_dim": 64, "num_routing": 3, "route_preferences": False,
                  "regulariser": "mmrec", "reg_norm": "squared"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "latent_dim", "num_routing")
        require_at_least(self, 0, "reg_weight")
        require_choice(self, "regulariser", REGULARISERS)
