"""The Recommender interface every model implements, and building a model from its config entry.

Two levels: :class:`Recommender` is the contract the training loop and evaluation rely on;
:class:`EmbeddingRecommender` implements it for the common case of inner-product scoring between final user
and item embeddings, so a model only says how it computes those embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from rmm.config import ModelConfig
from rmm.data.graph import KNNSpec, TrainGraph, UserGraphSpec
from rmm.errors import DataError
from rmm.models.layers import bpr_loss, l2_reg
from rmm.models.registry import DEFAULT_FUSION, ModelSpec, get_model_class, model_spec


@dataclass(frozen=True)
class BPRBatch:
    """One BPR step: user u prefers positive item i over sampled negative j. Shapes: (B,) int64 each."""

    users: Tensor
    pos_items: Tensor
    neg_items: Tensor

    def to(self, device: torch.device | str) -> BPRBatch:
        return BPRBatch(self.users.to(device), self.pos_items.to(device), self.neg_items.to(device))


#: A model's hyperparameter dataclass: what :class:`Recommender` is generic over, so ``self.cfg.x`` is typed.
C = TypeVar("C")


class Recommender(nn.Module, Generic[C]):
    """Base class of all recommenders, generic over ``C``, the model's hyperparameter dataclass.

    Subclasses are registered (``@register(name)``, which sets ``spec``, the model's registry line: its
    hyperparameter dataclass and the inputs it takes) and implement ``loss`` and ``scorer``. ``features`` maps a
    feature name (a modality) to a ``(num_items, dim)`` float tensor. Only a model with a single content input
    (``spec.fusions`` non-empty, VBPR) takes a ``fusion`` argument saying how to combine several modalities; a
    model with one branch per modality (``spec.fusions`` empty) takes any number of modalities >= 1 and no fusion
    choice.

    Models with an item-item kNN graph say which in ``item_graph_spec``; ``build_model`` hands them prebuilt
    graphs (``item_graphs``, e.g. from :func:`rmm.data.knn_cache.cached_knn_graph`), else they build them in
    memory. Models with per-epoch state (a pruned or re-learned graph) refresh it in ``start_epoch``. Every
    learned weight is initialised in ``reset_parameters`` (which ``__init__`` calls last), so that calling it
    again restarts the model from the same distribution.

    ``forward(batch)`` is the loss: DistributedDataParallel synchronises gradients only for computations run
    through ``forward``, so the training loop calls ``model(batch)``.
    """

    #: The model's registry line (set by ``@register``): hyperparameter class, content features, fusions.
    spec: ClassVar[ModelSpec]
    #: False for a training-free model (fitted in ``__init__``, without parameters): the loop only evaluates it.
    trainable: ClassVar[bool] = True

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: C) -> None:
        super().__init__()
        self.spec.check_inputs(list(features), DEFAULT_FUSION)
        for name, matrix in features.items():
            if matrix.ndim != 2 or matrix.shape[0] != graph.num_items:
                raise DataError(f"feature {name!r} must have shape (num_items={graph.num_items}, dim), "
                                f"got {tuple(matrix.shape)}; re-extract it for this dataset")
        if not isinstance(cfg, self.spec.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.spec.config_class.__name__}, got "
                            f"{type(cfg).__name__}")
        self.num_users = graph.num_users
        self.num_items = graph.num_items
        self.cfg: C = cfg

    @classmethod
    def item_graph_spec(cls, cfg: Any) -> KNNSpec | None:
        """The per-modality item-item kNN graph this model reads with hyperparameters ``cfg`` (None: none)."""
        return None

    @classmethod
    def user_graph_spec(cls, cfg: Any) -> UserGraphSpec | None:
        """The user-user co-occurrence graph this model reads with hyperparameters ``cfg`` (None: none)."""
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

    def reset_parameters(self) -> None:
        """(Re-)initialise every learned weight; a model without any (training-free) has nothing to do."""

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Called by the training loop before epoch ``epoch``'s batches (on every rank, with the same
        arguments); a model resamples or rebuilds per-epoch state here, deterministically in
        ``(seed, epoch)`` so that ranks agree and a resumed run replays. No-op by default."""

    def forward(self, batch: BPRBatch) -> Tensor:
        return self.loss(batch)

    def loss(self, batch: BPRBatch) -> Tensor:
        """Scalar training loss of one BPR batch (regularisation included)."""
        raise NotImplementedError

    def scorer(self) -> Callable[[Tensor], Tensor]:
        """The model's one scoring entry point: a function from user ids (B,) to the scores of every item,
        (B, num_items), for full ranking.

        Callers take one scorer per pass over many user chunks of an unchanged model, so that a graph model
        propagates once, not once per chunk; the returned function is stale after the next optimiser step.
        """
        raise NotImplementedError


class RegularisedConfig(Protocol):
    """What :class:`EmbeddingRecommender`'s loss reads of its config (every model config deriving from
    ``EmbeddingConfig`` has both)."""

    @property
    def reg_weight(self) -> float: ...

    @property
    def reg_norm(self) -> str: ...


#: The config of an :class:`EmbeddingRecommender`.
EC = TypeVar("EC", bound=RegularisedConfig)


class EmbeddingRecommender(Recommender[EC]):
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

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return inner_product_scorer(*self.embeddings())


def inner_product_scorer(user_emb: Tensor, item_emb: Tensor) -> Callable[[Tensor], Tensor]:
    r"""Scores :math:`\mathbf{e}_u^\top \mathbf{e}_i` of every item for a batch of users, from final embeddings
    computed once. Shapes: (U, D), (I, D); the function maps (B,) -> (B, I)."""
    return lambda users: user_emb[users] @ item_emb.T  # (B, num_items)


class TrainingFreeRecommender(Recommender[C]):
    """A recommender fitted in ``__init__`` from the train graph and features, with nothing to learn.

    ``trainable = False``: it holds no parameters (its fitted state is buffers), so the training loop builds no
    optimiser or DistributedDataParallel wrapper for it and evaluates it once.
    """

    trainable = False

    def loss(self, batch: BPRBatch) -> Tensor:
        raise TypeError(f"{type(self).__name__} is training-free (fitted when built): it has no loss; "
                        f"evaluate it without training")


def epoch_generator(seed: int, epoch: int, *, stream: int = 1) -> torch.Generator:
    """A CPU generator determined by ``(seed, epoch, stream)`` for a model's per-epoch randomness (``stream``
    keeps it apart from the BPR sampler's, which uses ``(seed, epoch)``)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def model_params(model_cfg: ModelConfig) -> object:
    """The hyperparameters of ``model_cfg``: its ``params``, or the model's defaults when None."""
    return model_spec(model_cfg.name).config_class() if model_cfg.params is None else model_cfg.params


def build_model(model_cfg: ModelConfig, graph: TrainGraph, features: Mapping[str, Tensor], *,
                item_graphs: Mapping[str, Tensor] | None = None,
                user_graph: Tensor | None = None) -> Recommender[Any]:
    """Instantiate the model ``model_cfg`` names; ``params=None`` means the model's defaults.

    ``item_graphs`` (feature name -> sparse (I, I)) are prebuilt graphs of the model's ``item_graph_spec``,
    e.g. read from the disk cache; None lets the model build them in memory. ``user_graph`` (sparse (U, U)) is
    likewise a prebuilt graph of the model's ``user_graph_spec`` (:func:`rmm.data.knn_cache.cached_user_graph`).
    """
    cls = get_model_class(model_cfg.name)
    cls.spec.check_inputs(list(features), model_cfg.fusion)
    params = model_params(model_cfg)
    kwargs: dict[str, Any] = {"fusion": model_cfg.fusion} if cls.spec.fusions else {}  # only a fusing model takes one
    if item_graphs is not None:
        if cls.item_graph_spec(params) is None:
            raise ValueError(f"{cls.__name__} reads no item-item graph, got item_graphs for {sorted(item_graphs)}")
        kwargs["item_graphs"] = item_graphs
    if user_graph is not None:
        if cls.user_graph_spec(params) is None:
            raise ValueError(f"{cls.__name__} reads no user-user graph, got a user_graph")
        kwargs["user_graph"] = user_graph
    return cls(graph, features, params, **kwargs)

