"""SLMRec's hyperparameters: the keys of a ``slmrec`` model entry (the model: :mod:`rmm.models.slmrec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least

#: ``ssl_task`` values: fine and coarse-grained alignment, feature dropout, feature masking, both augmentations.
SSL_TASKS = ("fac", "fd", "fm", "fd+fm")


@dataclass(frozen=True)
class SLMRecConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.slmrec.SLMRec` (defaults: MMRec's ``SLMRec.yaml``).

    Attributes:
        embedding_dim: width d of the ID embeddings and of every projected modality (MMRec ``recdim`` 64).
        num_layers: LightGCN layers of every branch (MMRec ``layer_num`` 3).
        temperature: :math:`\tau` of the in-batch InfoNCE main task (MMRec ``temp`` 0.2).
        ssl_task: the self-supervised task: ``fac`` (fine and coarse-grained modality alignment, MMRec's
            default and the only task that runs there on two modalities), ``fd`` (feature dropout), ``fm`` (feature
            masking) or ``fd+fm`` (masking and dropout).
        ssl_weight: :math:`\alpha`, weight of the self-supervised loss (MMRec ``ssl_alpha``, searched over
            ``[0.01, 0.05, 0.1, 0.5, 1.0]``; 0.1 here).
        ssl_temperature: :math:`\tau_{ssl}` of the self-supervised InfoNCE (MMRec ``ssl_temp``, searched over
            ``[0.1, 0.2, 0.5, 1.0]``; 0.2 here).
        dropout: feature-dropout rate of ``fd`` and ``fd+fm`` (MMRec ``dropout_rate`` 0.3).
        reg_weight: L2 penalty (:func:`rmm.models.layers.l2_reg`, ``reg_norm``) on the batch's layer-0 user and
            item ID embeddings; 0 as in MMRec, whose searched ``reg`` is read nowhere in its SLMRec (its
            ``weight_decay: 1e-4`` is an optimiser setting: rmm's ``train.weight_decay``).
        audio_level: whether the ``fac`` chain keeps MMRec's unaligned audio space. ``strict`` False: one space
            per given modality, ID and first modality in the finest. ``mmrec`` True: with two or more modalities
            the ID chain also passes through MMRec's ``g_iv_iva`` (d -> d) before the last (text) space, although
            no modality is aligned there (MMRec comments the audio term out).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's ``SLMRec.yaml`` and
            code); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    num_layers: int = 3
    temperature: float = 0.2
    ssl_task: str = "fac"
    ssl_weight: float = 0.1
    ssl_temperature: float = 0.2
    dropout: float = 0.3
    reg_weight: float = 0.0
    audio_level: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"audio_level": True, "embedding_dim": 64, "num_layers": 3, "temperature": 0.2,
                  "ssl_task": "fac", "dropout": 0.3},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "num_layers")
        require_at_least(self, 2, "embedding_dim")
        require_at_least(self, 0, "ssl_weight", "reg_weight")
        if self.temperature <= 0 or self.ssl_temperature <= 0:
            raise ValueError(f"temperature and ssl_temperature must be > 0, got {self.temperature} and "
                             f"{self.ssl_temperature}")
        if self.ssl_task not in SSL_TASKS:
            raise ValueError(f"ssl_task must be one of {list(SSL_TASKS)}, got {self.ssl_task!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
