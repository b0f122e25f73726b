"""ItemKNN on content with degenerate feature numbers: any scale works, a non-finite row raises, a zero row is
missing."""

from __future__ import annotations

import pytest
import torch

from rmm.config import ModelConfig
from rmm.data.graph import TrainGraph, knn_graph
from rmm.models.base import build_model
from rmm.models.hparams.itemknn_content import ItemKNNContentConfig

NUM_USERS, NUM_ITEMS, MISSING = 8, 12, 2


def _graph() -> TrainGraph:
    keys = torch.unique(torch.randint(NUM_USERS * NUM_ITEMS, (35,), generator=torch.Generator().manual_seed(1)))
    return TrainGraph(NUM_USERS, NUM_ITEMS, users=keys // NUM_ITEMS, items=keys % NUM_ITEMS)


def _image() -> torch.Tensor:
    image = torch.randn(NUM_ITEMS, 6, generator=torch.Generator().manual_seed(2))
    image[MISSING] = 0.0
    return image


def _scores(features: dict[str, torch.Tensor], shrink: float) -> torch.Tensor:
    model = build_model(ModelConfig("itemknn_content", features=tuple(features),
                                    params=ItemKNNContentConfig(knn_k=3, shrink=shrink)), _graph(), features)
    return model.scorer()(torch.arange(NUM_USERS))  # (U, I)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_scores_do_not_depend_on_the_features_scale(scale: float) -> None:
    """Rows of 1e30 (float32 squares overflow) or 1e-30 (underflow) used to look missing: every score 0."""
    image = _image()
    reference = _scores({"image": image}, shrink=0.0)
    scores = _scores({"image": image * scale}, shrink=0.0)
    assert reference.abs().sum() > 0
    assert torch.allclose(scores, reference, atol=1e-6)
    assert torch.equal(scores[:, MISSING], torch.zeros(NUM_USERS))  # the zero row is still a missing item


def test_shrink_vanishes_against_large_norms() -> None:
    """x_i.x_j / (|x_i| |x_j| + 10) with norms of 1e30 is the plain cosine."""
    graph, image = _graph(), _image() * 1e30
    history = torch.zeros(NUM_USERS, NUM_ITEMS)
    history[graph.users, graph.items] = 1.0
    expected = history @ knn_graph(image / 1e30, 3).to_dense()
    assert torch.allclose(_scores({"image": image}, shrink=10.0), expected, atol=1e-6)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_feature_row_raises(value: float) -> None:
    image = _image()
    image[5, 1] = value
    with pytest.raises(ValueError, match=r"row 5 has a NaN, an infinity .*rescale the feature"):
        _scores({"image": image, "text": torch.randn(NUM_ITEMS, 3)}, shrink=10.0)
