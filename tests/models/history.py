"""The tiny hand-written graphs of the fidelity tests: ``{user: [items]}`` -> a TrainGraph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rmm.data.graph import TrainGraph


def history_graph(history: Mapping[int, Sequence[int]], num_users: int, num_items: int) -> TrainGraph:
    """The train graph of ``history`` (each user's items in the given order)."""
    users = torch.tensor([u for u, items in history.items() for _ in items])
    items = torch.tensor([i for items in history.values() for i in items])
    return TrainGraph(num_users, num_items, users=users, items=items)


def gaussian_features(num_items: int, seed: int, missing_image: int | None = None) -> dict[str, torch.Tensor]:
    """``image`` (num_items, 5) and ``text`` (num_items, 3) standard-normal features; ``missing_image``: an item
    without an image vector (a zero row)."""
    generator = torch.Generator().manual_seed(seed)
    features = {"image": torch.randn(num_items, 5, generator=generator),
                "text": torch.randn(num_items, 3, generator=generator)}
    if missing_image is not None:
        features["image"][missing_image] = 0.0
    return features
