"""What the fidelity tests share: tiny hand-written train histories, their dense adjacency, seeded features and
models, and float64 comparisons.

The dense helpers here are the *reference* side (explicit loops and formulas, no rmm graph code), so that a test
compares rmm's sparse model code against them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from rmm.config import build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.base import Recommender, build_model

#: The history most fidelity tests use: 6 users, 8 items, 20 train interactions; item 7 has none (a cold item: a
#: zero row of the normalised adjacency).
NUM_USERS, NUM_ITEMS = 6, 8
HISTORY = {0: [0, 1, 2, 5], 1: [1, 3, 4], 2: [0, 2, 6], 3: [3, 4, 5, 6], 4: [0, 1], 5: [2, 4, 5, 6]}
#: The history of the MMGCN and GRCN tests: train pairs per user; item 7 has none (an isolated node).
INTERACTIONS = {0: [0, 1, 2], 1: [1, 3], 2: [0, 4, 5, 6], 3: [2, 3, 6], 4: [4, 5], 5: [0, 1, 3, 5, 6]}

R = TypeVar("R", bound=Recommender[Any])


def history_graph(history: Mapping[int, Sequence[int]], num_users: int, num_items: int) -> TrainGraph:
    """The train graph of ``history`` (each user's items in the given order)."""
    users = torch.tensor([u for u, items in history.items() for _ in items])
    items = torch.tensor([i for items in history.values() for i in items])
    return TrainGraph(num_users, num_items, users=users, items=items)


def history_pairs(history: Mapping[int, Sequence[int]]) -> list[tuple[int, int]]:
    """The (user, item) pairs of ``history``, in its order."""
    return [(user, item) for user, items in history.items() for item in items]


def dense_adjacency(pairs: Iterable[tuple[int, int]], num_users: int = NUM_USERS,
                    num_items: int = NUM_ITEMS) -> torch.Tensor:
    """The binary bipartite adjacency :math:`[0, R; R^T, 0]` of the (user, item) ``pairs``, users then items.
    Shapes: (U+I, U+I) float64."""
    n = num_users + num_items
    adj = torch.zeros(n, n, dtype=torch.float64)
    for user, item in pairs:
        adj[user, num_users + item] = adj[num_users + item, user] = 1.0
    return adj


def sym_normalized(adj: torch.Tensor, degree_eps: float = 0.0) -> torch.Tensor:
    r""":math:`D^{-1/2} A D^{-1/2}`, D the row sums plus ``degree_eps`` (MMRec adds 1e-7); a node without edges keeps
    a zero row and column."""
    degree = adj.sum(1)
    scale = torch.where(degree > 0, (degree + degree_eps).clamp_min(1e-12) ** -0.5, 0.0)
    return scale[:, None] * adj * scale[None, :]


def gaussian_features(num_items: int, seed: int, missing_image: int | None = None) -> dict[str, torch.Tensor]:
    """``image`` (num_items, 5) and ``text`` (num_items, 3) standard-normal features; ``missing_image``: an item
    without an image vector (a zero row)."""
    generator = torch.Generator().manual_seed(seed)
    features = {"image": torch.randn(num_items, 5, generator=generator),
                "text": torch.randn(num_items, 3, generator=generator)}
    if missing_image is not None:
        features["image"][missing_image] = 0.0
    return features


def seeded_model(kind: type[R], entry: dict[str, Any], protocol: str, graph: TrainGraph,
                 features: Mapping[str, torch.Tensor]) -> R:
    """The model of config entry ``entry`` (``name`` and keys, as a YAML ``model:`` entry) under ``protocol``, built
    after seeding torch with 0 so that every test of a file starts from the same weights."""
    torch.manual_seed(0)
    model = build_model(build_model_config(entry, "model[0]", protocol), graph, features)
    assert isinstance(model, kind)
    return model


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``actual`` (float32, from rmm) equals the float64 reference to float32 precision."""
    torch.testing.assert_close(actual.detach().double(), expected.detach(), atol=1e-5, rtol=1e-4)


def assert_close_grad(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Gradients to float32 precision relative to the largest entry (sharp softmaxes make some large)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, atol=5e-6 * scale, rtol=1e-4, msg=name)


def assert_same_gradients(model: torch.nn.Module, reference_params: Mapping[str, torch.Tensor],
                          no_gradient: Callable[[str], bool] = lambda name: False) -> None:
    """Every parameter of ``model`` has a gradient, and it matches the reference's copy of that parameter
    (``reference_params[name].grad``, after both losses were backpropagated); except the parameters
    ``no_gradient(name)`` names, which get none on either side (the model's may be all zeros)."""
    for name, parameter in model.named_parameters():
        reference_grad = reference_params[name].grad
        if no_gradient(name):
            assert reference_grad is None and (parameter.grad is None or not parameter.grad.any()), name
            continue
        assert parameter.grad is not None and reference_grad is not None, name
        assert_close_grad(parameter.grad, reference_grad, name)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    """Whether ``actual`` (float32, from rmm) is the float64 reference to float32 precision."""
    return torch.allclose(actual.double(), expected.detach(), atol=atol, rtol=1e-4)
