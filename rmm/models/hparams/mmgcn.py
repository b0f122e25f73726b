"""MMGCN's hyperparameters: the keys of a ``mmgcn`` model entry (the model: :mod:`rmm.models.mmgcn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least, require_choice

#: ``combination`` values: the paper's element-wise combination (its Eq. 7) or the concatenation one (Eq. 6).
COMBINATIONS = ("sum", "concat")
#: ``project_features`` values: which branches first project their features to ``latent_dim``.
PROJECT_FEATURES = ("all", "first")
#: ``combine_init`` values: Xavier-normal, or ``nn.Linear``'s own (Kaiming-uniform) initialisation.
COMBINE_INITS = ("xavier", "torch_default")
#: ``regulariser`` values of MMGCN and GRCN: rmm's ``l2_reg`` of the batch's rows, or MMRec's element mean.
REGULARISERS = ("batch", "mmrec")


@dataclass(frozen=True)
class MMGCNConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.mmgcn.MMGCN`.

    Attributes:
        embedding_dim: width d of the ID embeddings and of every layer after the first (MMRec
            ``embedding_size`` 64).
        latent_dim: width the features of a projected branch are mapped to before the first layer (MMRec's
            ``dim_latent`` 256, which it gives its visual branch only; see ``project_features``).
        num_layers: graph convolution layers per branch. MMRec's yaml says ``n_layers: 2`` but its code runs
            three layers whatever it says, so ``protocol: mmrec`` gives 3; rmm's default is the yaml's 2.
        reg_weight: weight of the regulariser; MMRec searches ``[0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1]`` (and the
            learning rate over ``[1e-4, 5e-4, 1e-3, 5e-3, 1e-2]``).

    Protocol switches (``strict`` value first, then ``mmrec``'s):
        combination: ``sum`` / ``concat``: how a layer combines the aggregated neighbours ``h`` with the node's
            own ``x_hat``. ``sum`` is the paper's element-wise :math:`g_{ele}` (its Eq. 7), the one rmm states;
            ``concat`` is :math:`g_{co}`, :math:`\mathrm{lrelu}(W_3 [h; \hat{x}] + b)` (Eq. 6), which MMRec and
            the authors' code run because they pass ``concate='False'``, a non-empty (true) string.
        project_features: ``all`` / ``first``: which branches map their features to ``latent_dim`` by a linear
            layer first. ``first``: only the first feature's branch (MMRec's visual one, ``dim_latent=256``);
            the others convolve the raw features at their own width, user preferences included (MMRec's text
            branch, ``dim_latent=None``), so list the features ``[image, text]`` as MMRec orders them. rmm
            projects every branch so that no branch's cost grows with a wide feature.
        freeze_embeddings: ``False`` / ``True``: whether the ID embeddings and the user preferences stay at
            their initial values. MMRec (like the authors' code) keeps them as plain tensors, outside
            ``model.parameters()``, so Adam never updates them; the paper learns them.
        combine_init: ``xavier`` / ``torch_default``: initialisation of the combination layers after the
            first; MMRec Xavier-initialises the first (``g_layer1``) and leaves the others at ``nn.Linear``'s
            default.
        regulariser: ``batch`` / ``mmrec``. ``batch``: ``reg_weight`` times
            :func:`~rmm.models.layers.l2_reg` (``reg_norm``) of the batch's ID rows and user preferences.
            ``mmrec``: MMRec's :func:`~rmm.models.mmgcn.mmrec_id_reg` of the batch's ID rows plus the element mean
            of squares of the first branch's *whole* preference table (its ``v_gcn.preference``); ``reg_norm`` is then
            unused. With ``freeze_embeddings`` this adds a constant to the loss (MMRec's regulariser has no
            gradient).
        reg_norm: as :class:`~rmm.models.hparams.base.EmbeddingConfig`, for ``regulariser: batch``; ``squared`` in both
            protocols (MMRec's MMGCN does not use ``EmbLoss``).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's code and
            ``MMGCN.yaml``); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    latent_dim: int = 256
    num_layers: int = 2
    reg_weight: float = 1e-4
    combination: str = "sum"
    project_features: str = "all"
    freeze_embeddings: bool = False
    combine_init: str = "xavier"
    regulariser: str = "batch"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"embedding_dim": 64, "latent_dim": 256, "num_layers": 3, "combination": "concat",
                  "project_features": "first", "freeze_embeddings": True, "combine_init": "torch_default",
                  "regulariser": "mmrec", "reg_norm": "squared"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "latent_dim", "num_layers")
        require_at_least(self, 0, "reg_weight")
        require_choice(self, "combination", COMBINATIONS)
        require_choice(self, "project_features", PROJECT_FEATURES)
        require_choice(self, "combine_init", COMBINE_INITS)
        require_choice(self, "regulariser", REGULARISERS)
