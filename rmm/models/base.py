"""The Recommender interface every model implements, and the name -> class registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from rmm.data.graph import TrainGraph

MODELS: dict[str, type[Recommender]] = {}


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
    ``score_users``. ``features`` maps a feature name (a modality) to a ``(num_items, dim)`` float tensor.
    """

    config_class: ClassVar[type]
    #: Whether the model reads content features (False: ID-only; features given to it are an error).
    uses_features: ClassVar[bool] = False
    #: Fusion strategies this model accepts when given several features (empty: one branch per modality).
    fusions: ClassVar[tuple[str, ...]] = ("concat",)

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: object) -> None:
        super().__init__()
        self.num_users = graph.num_users
        self.num_items = graph.num_items
        self.cfg = cfg

    @classmethod
    def check_inputs(cls, features: Sequence[str], fusion: str) -> None:
        """Raise ValueError (a user-facing message) when the features/fusion choice cannot work."""
        name = cls.__name__
        if cls.uses_features and not features:
            raise ValueError(f"{name} needs content features (model.features), got none; "
                             f"run `rmm extract` and list feature names")
        if not cls.uses_features and features:
            raise ValueError(f"{name} is ID-only and takes no features, got {list(features)}")
        if cls.uses_features and len(features) > 1 and fusion not in cls.fusions:
            raise ValueError(f"{name} fusion must be one of {list(cls.fusions)}, got {fusion!r}")

    def loss(self, batch: BPRBatch) -> Tensor:
        """Scalar training loss of one BPR batch (regularisation included)."""
        raise NotImplementedError

    def score_users(self, users: Tensor) -> Tensor:
        """Scores of every item for each user, shape (B, num_items), used for full ranking."""
        raise NotImplementedError


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
        raise KeyError(f"Unknown model {name!r}. Available: {sorted(MODELS)}") from None
