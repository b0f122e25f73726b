"""LATTICE's hyperparameters: the keys of a ``lattice`` model entry (the model: :mod:`rmm.models.lattice`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import PROJECTION_INITS, EmbeddingConfig
from rmm.validation import require_at_least, require_choice

#: ``ui_normalization`` values: the user-item graph normalisations of
#: :meth:`rmm.data.graph.TrainGraph.adjacency` LATTICE's backbone can use.
UI_NORMALIZATIONS = ("sym", "row_self_loops")


@dataclass(frozen=True)
class LATTICEConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.lattice.LATTICE` (LightGCN backbone, MMRec's ``cf_model: lightgcn``).

    Attributes:
        embedding_dim: ID embedding width d (MMRec ``embedding_size`` 64).
        feat_embed_dim: width of the projected modality features the learned graph is built from (MMRec 64).
        knn_k: neighbours per item in the frozen and the learned item graphs (MMRec 10).
        lambda_coeff: weight :math:`\lambda` of the frozen graphs, ``1 - lambda`` that of the learned one
            (MMRec 0.9).
        num_layers: item-graph convolutions (MMRec ``n_layers`` 1).
        num_ui_layers: LightGCN layers over the user-item graph (MMRec ``len(weight_size)``, 2).
        reg_weight: weight of the L2 penalty on the batch's final embeddings; MMRec searches
            ``[0.0, 1e-5, 1e-4, 1e-3]`` (and the learning rate over ``[1e-4, 5e-4, 1e-3, 5e-3]``).
        graph_update: when the learned graph's edge weights carry a gradient. ``epoch`` (both protocols; the
            reference code's ``build_item_graph``): at each epoch's first step only, the weights then being held
            for the epoch's other steps, so the projections and modality weights learn once per epoch. ``step``:
            at every step (more signal for the projections, but every step then projects the whole catalogue:
            ~2x the reference's step time at Baby scale, see bench/RESULTS.md).
        knn_self: whether an item is a candidate neighbour of itself in the frozen and learned kNN graphs.
            ``strict`` False: the k nearest *other* items, the paper's neighbourhood (a self-loop adds the
            item's own ID embedding to its item-graph message, which the kNN graph is not meant to carry).
            ``mmrec`` True: MMRec's dense ``topk`` of the full similarity row keeps the item itself (cosine 1),
            so its graphs hold a self term and ``k - 1`` others.
        ui_normalization: normalisation of the user-item graph (:meth:`rmm.data.graph.TrainGraph.adjacency`).
            ``strict`` ``sym``: LightGCN's :math:`D^{-1/2} A D^{-1/2}`, the backbone the paper names. ``mmrec``
            ``row_self_loops``: :math:`(D + I)^{-1} (A + I)`, what MMRec's LATTICE builds (its NGCF-era
            ``get_adj_mat``) even with ``cf_model: lightgcn``.
        projection_init: initialisation of the modality projections :math:`W_m` (:func:`rmm.models.layers.projections`).
            ``strict`` ``xavier`` (Xavier-normal, rmm's shared projection); ``mmrec`` ``torch_default``
            (``nn.Linear``'s Kaiming-uniform).
        train_features: whether the raw modality features are trained. ``strict`` False: frozen inputs, so a
            model's features stay those of the feature store it names. ``mmrec`` True: MMRec fine-tunes them
            (``nn.Embedding.from_pretrained(..., freeze=False)``); they then get a gradient through the learned
            graph's edge weights (with ``graph_update: epoch`` at each epoch's first step only) and are saved
            with the model. The frozen graphs stay those of the initial features, in both.
        reg_norm: as :class:`~rmm.models.hparams.base.EmbeddingConfig`; both protocols ``squared``: MMRec's LATTICE
            regularises with its own :math:`\frac{1}{2B}\sum \lVert e \rVert^2`, not ``EmbLoss``.
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's ``LATTICE.yaml`` and
            code); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    feat_embed_dim: int = 64
    knn_k: int = 10
    lambda_coeff: float = 0.9
    num_layers: int = 1
    num_ui_layers: int = 2
    reg_weight: float = 1e-4
    graph_update: str = "epoch"
    knn_self: bool = False
    ui_normalization: str = "sym"
    projection_init: str = "xavier"
    train_features: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"knn_self": True, "ui_normalization": "row_self_loops", "projection_init": "torch_default",
                  "train_features": True, "reg_norm": "squared", "embedding_dim": 64, "feat_embed_dim": 64,
                  "knn_k": 10, "lambda_coeff": 0.9, "num_layers": 1, "num_ui_layers": 2, "graph_update": "epoch"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.graph_update not in ("epoch", "step"):
            raise ValueError(f"graph_update must be 'epoch' or 'step', got {self.graph_update!r}")
        require_choice(self, "ui_normalization", UI_NORMALIZATIONS)
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init must be one of {list(PROJECTION_INITS)}, got {self.projection_init!r}")
        require_at_least(self, 1, "embedding_dim", "feat_embed_dim", "knn_k", "num_layers", "num_ui_layers")
        if not 0 <= self.lambda_coeff <= 1:
            raise ValueError(f"lambda_coeff must be in [0, 1], got {self.lambda_coeff}")
        require_at_least(self, 0, "reg_weight")
