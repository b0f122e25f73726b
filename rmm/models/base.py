"""The Recommender interface every model implements, and the name -> class registry.

Two levels: :class:`Recommender` is the contract the training loop and evaluation rely on;
:class:`EmbeddingRecommender` implements it for the common case of inner-product scoring between final user
and item embeddings, so a model only says how it computes those embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from rmm.config import ModelConfig
from rmm.data.graph import KNNSpec, TrainGraph
from rmm.errors import ConfigError, DataError, UnknownNameError
from rmm.models.layers import REG_NORMS, bpr_loss, l2_reg

MODELS: dict[str, type[Recommender]] = {}

#: ``ModelConfig.fusion``'s default: what a model that fuses nothing (``fusions = ()``) is given.
DEFAULT_FUSION = "concat"


@dataclass(frozen=True)
class EmbeddingConfig:
    """What the config of every :class:`EmbeddingRecommender` shares; a model's config derives from it (and its
    ``__post_init__`` calls this one's).

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


@dataclass(frozen=True)
class BPRBatch:
    """One BPR step: user u prefers positive item i over sampled negative j. Shapes: (B,) int64 each."""

    users: Tensor
    pos_items: Tensor
    neg_items: Tensor

    def to(self, device: torch.device | str) -> BPRBatch:
        return BPRBatch(self.users.to(device), self.pos_items.to(device), self.neg_items.to(device))


class Recommender(nn.Module):
    """Base class of all recommenders.

    Subclasses set ``config_class`` (a frozen dataclass of their hyperparameters) and implement ``loss`` and
    ``score_users``. ``features`` maps a feature name (a modality) to a ``(num_items, dim)`` float tensor;
    ``fusion`` says how a single-content-input model combines several of them. A model with one branch per
    modality (``fusions = ()``) takes any number of modalities >= 1 and no fusion choice.

    Models with an item-item kNN graph say which in ``item_graph_spec``; ``build_model`` hands them prebuilt
    graphs (``item_graphs``, e.g. from :func:`rmm.data.knn_cache.cached_knn_graph`), else they build them in
    memory. Models with per-epoch state (a pruned or re-learned graph) refresh it in ``start_epoch``.

    ``forward(batch)`` is the loss: DistributedDataParallel synchronises gradients only for computations run
    through ``forward``, so the training loop calls ``model(batch)``.
    """

    config_class: ClassVar[type]
    #: Whether the model reads content features (False: ID-only; features given to it are an error).
    uses_features: ClassVar[bool] = False
    #: Fusion strategies this model accepts when given several features (empty: one branch per modality).
    fusions: ClassVar[tuple[str, ...]] = ("concat",)
    #: False for a training-free model (fitted in ``__init__``): the loop need only evaluate it.
    trainable: ClassVar[bool] = True

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: object, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__()
        self.check_inputs(list(features), fusion)
        for name, matrix in features.items():
            if matrix.ndim != 2 or matrix.shape[0] != graph.num_items:
                raise DataError(f"feature {name!r} must have shape (num_items={graph.num_items}, dim), "
                                f"got {tuple(matrix.shape)}; re-extract it for this dataset")
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.num_users = graph.num_users
        self.num_items = graph.num_items
        self.cfg = cfg

    @classmethod
    def check_inputs(cls, features: Sequence[str], fusion: str) -> None:
        """Raise ValueError (a user-facing message) when the features/fusion choice cannot work."""
        name = cls.__name__
        if cls.uses_features and not features:
            raise ConfigError(f"{name} needs content features (model.features), got none; "
                              f"run `rmm extract` and list feature names")
        if not cls.uses_features and features:
            raise ConfigError(f"{name} is ID-only and takes no features, got {list(features)}")
        if cls.uses_features and len(features) > 1:
            if not cls.fusions and fusion != DEFAULT_FUSION:
                raise ConfigError(f"{name} builds one branch per modality and fuses nothing, got fusion "
                                  f"{fusion!r}; leave model.fusion unset")
            if cls.fusions and fusion not in cls.fusions:
                raise ConfigError(f"{name} fusion must be one of {list(cls.fusions)}, got {fusion!r}")

    @classmethod
    def item_graph_spec(cls, cfg: object) -> KNNSpec | None:
        """The per-modality item-item kNN graph this model reads with hyperparameters ``cfg`` (None: none)."""
        return None

    def build_item_graphs(self, features: Mapping[str, Tensor],
                          given: Mapping[str, Tensor] | None) -> list[Tensor]:
        """One ``item_graph_spec`` graph per modality, in ``features`` order: ``given[name]`` when prebuilt,
        else built in memory. Shapes: (num_items, num_items) float32 sparse COO each."""
        spec = self.item_graph_spec(self.cfg)
        if spec is None:
            raise TypeError(f"{type(self).__name__} declares no item_graph_spec")
        graphs = []
        for name, matrix in features.items():
            if given is None:
                graphs.append(spec.build(matrix, name=name))
                continue
            if name not in given:
                raise ValueError(f"item_graphs has no graph for feature {name!r}, got {sorted(given)}")
            graph = given[name]
            if not graph.is_sparse or tuple(graph.shape) != (self.num_items, self.num_items):
                raise ValueError(f"item graph of {name!r} must be a sparse COO ({self.num_items}, "
                                 f"{self.num_items}) matrix, got {graph.layout} {tuple(graph.shape)}")
            graphs.append(graph.coalesce().float())
        return graphs

    @property
    def has_unused_parameters(self) -> bool:
        """Whether some steps leave some parameters without a gradient (LATTICE's projections after an epoch's
        first step): DDP must then run with ``find_unused_parameters=True``."""
        return False

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Called by the training loop before epoch ``epoch``'s batches (on every rank, with the same
        arguments); a model resamples or rebuilds per-epoch state here, deterministically in
        ``(seed, epoch)`` so that ranks agree and a resumed run replays. No-op by default."""

    def forward(self, batch: BPRBatch) -> Tensor:
        return self.loss(batch)

    def loss(self, batch: BPRBatch) -> Tensor:
        """Scalar training loss of one BPR batch (regularisation included)."""
        raise NotImplementedError

    def score_users(self, users: Tensor) -> Tensor:
        """Scores of every item for each user, shape (B, num_items), used for full ranking."""
        raise NotImplementedError

    def scorer(self) -> Callable[[Tensor], Tensor]:
        """A ``score_users`` for many user chunks of one unchanged model.

        Evaluation calls this once per pass so that a graph model propagates once, not once per chunk; the
        returned function is stale after the next optimiser step.
        """
        return self.score_users


class EmbeddingRecommender(Recommender):
    r"""A recommender scoring :math:`\hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i` from final embeddings,
    trained with BPR plus ``cfg.reg_weight`` times :func:`~rmm.models.layers.l2_reg` of ``reg_terms``.

    Subclasses implement ``embeddings`` and may override ``reg_terms`` (which rows are penalised).
    """

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings. Shapes: (num_users, D), (num_items, D)."""
        raise NotImplementedError

    def reg_terms(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Sequence[Tensor]:
        """Tensors to L2-penalise for ``batch``; by default its final embeddings ``users, pos, neg``."""
        return users, pos, neg

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb = self.embeddings()
        users = user_emb[batch.users]  # (B, D)
        pos, neg = item_emb[batch.pos_items], item_emb[batch.neg_items]
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        return ranking + self.cfg.reg_weight * self.regularisation(batch, users, pos, neg)

    def regularisation(self, batch: BPRBatch, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """The penalty ``reg_weight`` multiplies: :func:`~rmm.models.layers.l2_reg` of ``reg_terms`` by default."""
        return l2_reg(*self.reg_terms(batch, users, pos, neg), norm=self.cfg.reg_norm)

    def score_users(self, users: Tensor) -> Tensor:
        return self.scorer()(users)

    def scorer(self) -> Callable[[Tensor], Tensor]:
        user_emb, item_emb = self.embeddings()
        return lambda users: user_emb[users] @ item_emb.T  # (B, num_items)


class TrainingFreeRecommender(Recommender):
    """A recommender fitted in ``__init__`` from the train graph and features, with nothing to learn.

    ``trainable = False`` lets the loop skip training and evaluate once. The loss is a zero that depends on
    one dummy parameter, so that a loop which trains anyway still runs: Adam, DDP and evaluation's device
    lookup all need a parameter, and the zero gradient leaves it (and the scores) unchanged.
    """

    trainable = False
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: object, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.anchor = nn.Parameter(torch.zeros(1))

    def loss(self, batch: BPRBatch) -> Tensor:
        return self.anchor.sum() * 0.0


def epoch_generator(seed: int, epoch: int, *, stream: int = 1) -> torch.Generator:
    """A CPU generator determined by ``(seed, epoch, stream)`` for a model's per-epoch randomness (``stream``
    keeps it apart from the BPR sampler's, which uses ``(seed, epoch)``)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def register(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    """Class decorator adding a model to :data:`MODELS` under ``name``; a duplicate name raises."""

    def wrap(cls: type[Recommender]) -> type[Recommender]:
        if name in MODELS:
            raise KeyError(f"Duplicate model name {name!r}: already registered by {MODELS[name].__name__}")
        MODELS[name] = cls
        return cls

    return wrap


def get_model_class(name: str) -> type[Recommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError(f"Unknown model {name!r}. Available: {sorted(MODELS)}") from None


def model_params(model_cfg: ModelConfig) -> object:
    """The hyperparameters of ``model_cfg``: its ``params``, or the model's defaults when None."""
    cls = get_model_class(model_cfg.name)
    return cls.config_class() if model_cfg.params is None else model_cfg.params


def build_model(model_cfg: ModelConfig, graph: TrainGraph, features: Mapping[str, Tensor], *,
                item_graphs: Mapping[str, Tensor] | None = None) -> Recommender:
    """Instantiate the model ``model_cfg`` names; ``params=None`` means the model's defaults.

    ``item_graphs`` (feature name -> sparse (I, I)) are prebuilt graphs of the model's ``item_graph_spec``,
    e.g. read from the disk cache; None lets the model build them in memory.
    """
    cls = get_model_class(model_cfg.name)
    params = model_params(model_cfg)
    if item_graphs is None:
        return cls(graph, features, params, fusion=model_cfg.fusion)
    if cls.item_graph_spec(params) is None:
        raise ValueError(f"{cls.__name__} reads no item-item graph, got item_graphs for {sorted(item_graphs)}")
    return cls(graph, features, params, fusion=model_cfg.fusion, item_graphs=item_graphs)

