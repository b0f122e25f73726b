from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmm.config import ExtractorConfig
from rmm.features.extractors import (
    EXTRACTORS,
    FAILED,
    Extractor,
    Item,
    decode_images,
    get_extractor,
    items_from_batch,
)
from tests.features.helpers import CORRUPT_ITEM, EMPTY_TEXT_ITEM, NO_IMAGE_ITEM, make_dataset


def _batch(root: Path, max_image_size: int = 224) -> dict[str, np.ndarray]:
    items = pd.read_parquet(root / "items.parquet")
    raw = {c: items[c].to_numpy(dtype=object if c != "item_id" else np.int64)
           for c in ("item_id", "title", "text", "image_path")}
    return decode_images(raw, str(root), max_image_size)


def test_registry_has_the_three_kinds_and_names_them_on_error() -> None:
    assert {"lvlm_embed", "sentence", "image_stats"} <= set(EXTRACTORS)
    with pytest.raises(KeyError, match="image_stats.*lvlm_embed.*sentence"):
        get_extractor("resnet")


def test_decode_images_records_reasons_and_resizes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", num_items=10)
    items = items_from_batch(_batch(root, max_image_size=32))
    assert items[CORRUPT_ITEM].image is None and "unreadable image" in items[CORRUPT_ITEM].image_reason
    assert items[NO_IMAGE_ITEM].image is None and items[NO_IMAGE_ITEM].image_reason == "no image"
    assert items[0].image.shape == (32, 32, 3) and items[0].image_reason == ""
    assert not items[EMPTY_TEXT_ITEM].has_text and items[0].title == "red circle"


def test_image_stats_and_sentence_extractors_mark_missing_inputs(tmp_path: Path) -> None:
    batch = _batch(make_dataset(tmp_path / "data", num_items=10))
    stats = get_extractor("image_stats")(ExtractorConfig(name="img", kind="image_stats"))(batch)
    assert stats["vector"].shape == (10, stats["vector"].shape[1])
    assert stats["status"][CORRUPT_ITEM] == "missing" and "unreadable" in stats["reason"][CORRUPT_ITEM]
    assert stats["status"][NO_IMAGE_ITEM] == "missing"
    assert not stats["vector"][CORRUPT_ITEM].any()
    text = get_extractor("sentence")(ExtractorConfig(name="txt", kind="sentence"))(batch)
    assert text["vector"].shape == (10, 384)
    assert text["status"][EMPTY_TEXT_ITEM] == "missing" and text["status"][CORRUPT_ITEM] == "done"


class _Fragile(Extractor):
    """Encodes item ids as vectors and raises on item 2, to check failure isolation."""

    dim = 2

    @classmethod
    def describe(cls, cfg: ExtractorConfig, cache_dir: str | None = None) -> dict:
        return {}

    def encode(self, items: list[Item]) -> np.ndarray:
        if any(item.item_id == 2 for item in items):
            raise RuntimeError("cannot encode item 2")
        return np.array([[item.item_id, 1.0] for item in items])


def test_an_item_that_raises_fails_alone() -> None:
    batch = {"item_id": np.arange(4), "title": np.array(["a", "b", "c", "d"], dtype=object),
             "text": np.array(["", "", "", ""], dtype=object)}
    out = _Fragile(ExtractorConfig(name="f", kind="fragile"))(batch)
    assert out["status"].tolist() == ["done", "done", FAILED, "done"]
    assert out["reason"][2] == "RuntimeError: cannot encode item 2"
    np.testing.assert_array_equal(out["vector"], [[0, 1], [1, 1], [0, 0], [3, 1]])


def test_lvlm_extractor_notes_partial_inputs(tmp_path: Path, tiny_qwen2_vl: str) -> None:
    batch = _batch(make_dataset(tmp_path / "data", num_items=8))
    cfg = ExtractorConfig(name="lvlm", kind="lvlm_embed", model="tiny:qwen2-vl", pooling="image_mean")
    info = get_extractor("lvlm_embed").describe(cfg)
    assert info["model_path"] == tiny_qwen2_vl and len(info["prompt_sha256"]) == 64
    out = get_extractor("lvlm_embed")(cfg)(batch)
    assert out["vector"].shape == (8, 64) and np.isfinite(out["vector"]).all()
    assert set(out["status"]) == {"done"}
    assert out["reason"][NO_IMAGE_ITEM] == "text only (no image); image_mean pooled all tokens"
    assert out["reason"][CORRUPT_ITEM].startswith("text only (unreadable image")
    assert out["reason"][EMPTY_TEXT_ITEM] == "image only (empty title and text)"


def test_lvlm_config_errors_surface_in_describe() -> None:
    lvlm = get_extractor("lvlm_embed")
    with pytest.raises(ValueError, match="needs a model"):
        lvlm.describe(ExtractorConfig(name="x", kind="lvlm_embed"))
    with pytest.raises(ValueError, match="valid poolings"):
        lvlm.describe(ExtractorConfig(name="x", kind="lvlm_embed", model="m", pooling="cls"))
    with pytest.raises(KeyError, match="prompt template"):
        lvlm.describe(ExtractorConfig(name="x", kind="lvlm_embed", model="m", prompt="poem"))
