"""The synthetic dataset: deterministic, modality-split attributes, and content that predicts preference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rmm.config import Config, DatasetConfig, OutputConfig, SyntheticConfig
from rmm.data import synthetic
from rmm.data.prepare import prepare_dataset
from rmm.data.schema import TEST, TRAIN, VALID, Dataset, load_dataset


def synthetic_config(out: Path, **sizes: int) -> Config:
    return Config(dataset=DatasetConfig(synthetic=SyntheticConfig(**sizes)), output=OutputConfig(dir=str(out)))


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Dataset]:
    """The default 400 users x 300 items x ~20 interactions/user, temporal 8:1:1 split."""
    cfg = synthetic_config(tmp_path_factory.mktemp("synthetic"))
    return cfg, load_dataset(prepare_dataset(cfg).root)


def test_same_config_gives_identical_bytes(tmp_path: Path):
    roots = [prepare_dataset(synthetic_config(tmp_path / name, num_users=40, num_items=30)).root for name in "ab"]
    files = sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*") if p.is_file())
    assert Path("images") in {f.parent for f in files}
    assert files == sorted(p.relative_to(roots[1]) for p in roots[1].rglob("*") if p.is_file())
    for name in files:
        assert (roots[0] / name).read_bytes() == (roots[1] / name).read_bytes(), name


def test_other_seed_gives_other_data():
    first = synthetic.generate(DatasetConfig(seed=1)).interactions
    second = synthetic.generate(DatasetConfig(seed=2)).interactions
    assert not first.equals(second)


def test_every_item_has_a_png_title_and_text(default_dataset: tuple[Config, Dataset]):
    cfg, dataset = default_dataset
    assert dataset.items["image_path"].notna().all()
    for path in dataset.items["image_path"].head(5):
        assert path.startswith("images/") and path.endswith(".png")
        with Image.open(dataset.root / path) as image:
            assert image.size == (cfg.dataset.synthetic.image_size,) * 2
    assert (dataset.items["title"].str.len() > 0).all()
    assert (dataset.items["text"].str.len() > 0).all()


def test_colour_and_pattern_are_never_written_material_and_style_always(default_dataset):
    _, dataset = default_dataset
    words = (dataset.items["title"] + " " + dataset.items["text"]).str.lower()
    for attribute in ("colour", "pattern"):
        for value in synthetic.ATTRIBUTES[attribute]:
            assert not words.str.contains(rf"\b{value}\b").any(), value
    for attribute in synthetic.TEXT_ATTRIBUTES:
        assert all(value in text for value, text in zip(dataset.items[attribute], words, strict=True))


def test_images_show_the_colour(default_dataset):
    _, dataset = default_dataset
    for row in dataset.items.head(20).itertuples():
        with Image.open(dataset.root / row.image_path) as image:
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
        distance = np.abs(pixels - np.array(synthetic.RGB[row.colour])).sum(axis=1)
        assert (distance < 40).mean() > 0.05, row.source_id


def test_interactions_are_roughly_as_configured(default_dataset):
    cfg, dataset = default_dataset
    per_user = dataset.interactions.groupby("user_id").size()
    assert per_user.mean() == pytest.approx(cfg.dataset.synthetic.interactions_per_user, rel=0.15)
    assert not dataset.interactions.duplicated(["user_id", "item_id"]).any()
    assert dataset.info["skipped"]["duplicate_interactions"]["count"] == 0


def _recall_at(scores: np.ndarray, dataset: Dataset, k: int = 20) -> float:
    """Mean test Recall@k with train and valid items masked."""
    inter = dataset.interactions
    known = inter[inter["split"] != TEST]
    scores = scores.astype(float).copy()
    scores[known["user_id"], known["item_id"]] = -np.inf
    truth = np.zeros(scores.shape, dtype=bool)
    test = inter[inter["split"] == TEST]
    truth[test["user_id"], test["item_id"]] = True
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    has_test = truth.sum(axis=1) > 0
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    return float((hits[has_test] / truth.sum(axis=1)[has_test]).mean())


def test_content_predicts_preference(default_dataset):
    """The oracle (true taste) beats popularity; a content profile reading both modalities beats one reading
    either modality alone and an ID-only item-kNN: multimodality is what the dataset rewards."""
    cfg, dataset = default_dataset
    world = synthetic.sample_world(cfg.dataset.synthetic, cfg.dataset.seed)
    users = dataset.users["source_id"].str[1:].astype(int).to_numpy()
    items = dataset.items["source_id"].str[1:].astype(int).to_numpy()
    train = np.zeros((dataset.num_users, dataset.num_items))
    rows = dataset.interactions[dataset.interactions["split"] == TRAIN]
    train[rows["user_id"], rows["item_id"]] = 1.0
    popularity = np.broadcast_to(train.sum(axis=0), train.shape)

    def profile(attributes: tuple[str, ...]) -> np.ndarray:
        onehot = np.concatenate([np.eye(len(synthetic.ATTRIBUTES[a]))[world.codes[a][items]] for a in attributes],
                                axis=1)  # (I, sum of values)
        return (train @ onehot) @ onehot.T + 1e-3 * popularity  # (U, I), ties broken by popularity

    cosine = train / np.maximum(np.linalg.norm(train, axis=0), 1e-9)
    item_knn = train @ (cosine.T @ cosine - np.eye(dataset.num_items))
    recall = {
        "oracle": _recall_at(world.affinity()[users][:, items] + 1e-3 * popularity, dataset),
        "popularity": _recall_at(popularity, dataset),
        "image": _recall_at(profile(synthetic.IMAGE_ATTRIBUTES), dataset),
        "text": _recall_at(profile(synthetic.TEXT_ATTRIBUTES), dataset),
        "both": _recall_at(profile(tuple(synthetic.ATTRIBUTES)), dataset),
        "id_only": _recall_at(item_knn, dataset),
    }
    assert recall["oracle"] > 2 * recall["popularity"], recall
    assert recall["both"] > 1.2 * max(recall["image"], recall["text"]), recall
    assert recall["both"] > 1.1 * recall["id_only"], recall
    assert min(recall["image"], recall["text"]) > recall["popularity"], recall


def test_splits_of_default_are_temporal(default_dataset):
    _, dataset = default_dataset
    inter = dataset.interactions
    last_train = inter[inter["split"] == TRAIN].groupby("user_id")["timestamp"].max()
    first_eval = inter[inter["split"].isin([VALID, TEST])].groupby("user_id")["timestamp"].min()
    assert (first_eval >= last_train[first_eval.index]).all()
