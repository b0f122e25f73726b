from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from rmm.config import Config, ExtractorConfig, FeaturesConfig, OutputConfig
from rmm.features.encoders import IMAGE_STATS_DIM
from rmm.features.store import PART_GLOB, load_feature, read_manifest
from tests.features.helpers import CORRUPT_ITEM, EMPTY_TEXT_ITEM, NO_IMAGE_ITEM, make_dataset

NUM_ITEMS = 20


@pytest.mark.ray
def test_extract_features_end_to_end_and_rerun_is_noop(ray_cluster, tmp_path: Path) -> None:
    from rmm.features.pipeline import extract_features

    extractors = (
        ExtractorConfig(name="lvlm_tiny_mean", kind="lvlm_embed", model="tiny:qwen2-vl", batch_size=8),
        ExtractorConfig(name="text_minilm", kind="sentence", model="minilm", batch_size=16),
        ExtractorConfig(name="image_stats", kind="image_stats", batch_size=16, max_image_size=32),
    )
    cfg = Config(features=FeaturesConfig(extractors=extractors), output=OutputConfig(dir=str(tmp_path / "out")))
    make_dataset(cfg.dataset_dir, NUM_ITEMS)

    paths = extract_features(cfg)

    assert set(paths) == {e.name for e in extractors}
    assert (cfg.feature_root / "config.yaml").exists()
    expected_dims = {"lvlm_tiny_mean": 64, "text_minilm": 384, "image_stats": IMAGE_STATS_DIM}
    for name, dim in expected_dims.items():
        matrix = load_feature(cfg.feature_root, name)
        assert matrix.shape == (NUM_ITEMS, dim) and np.isfinite(matrix).all(), name
        assert list(paths[name].glob(PART_GLOB)), name
    lvlm = read_manifest(cfg.feature_root, "lvlm_tiny_mean")
    assert lvlm["kind"] == "lvlm_embed" and lvlm["model"] == "tiny:qwen2-vl"
    assert lvlm["pooling"] == "mean" and lvlm["layer"] == -1 and len(lvlm["prompt_sha256"]) == 64
    assert lvlm["counts"] == {"done": NUM_ITEMS, "missing": 0, "failed": 0}
    assert "unreadable image" in lvlm["notes"][str(CORRUPT_ITEM)]
    assert lvlm["notes"][str(EMPTY_TEXT_ITEM)] == "image only (empty title and text)"
    assert "transformers" in lvlm["library_versions"]
    text = read_manifest(cfg.feature_root, "text_minilm")
    assert text["counts"] == {"done": NUM_ITEMS - 1, "missing": 1, "failed": 0}
    assert text["missing"] == {str(EMPTY_TEXT_ITEM): "empty title and text"}
    image = read_manifest(cfg.feature_root, "image_stats")
    assert set(image["missing"]) == {str(CORRUPT_ITEM), str(NO_IMAGE_ITEM)}
    assert not load_feature(cfg.feature_root, "image_stats")[CORRUPT_ITEM].any()
    norms = np.linalg.norm(load_feature(cfg.feature_root, "text_minilm"), axis=1)
    np.testing.assert_allclose(np.delete(norms, EMPTY_TEXT_ITEM), 1.0, atol=1e-5)

    stamps = {name: (path / "matrix.npy").stat().st_mtime_ns for name, path in paths.items()}
    start = time.perf_counter()
    faster = tuple(dataclasses.replace(e, batch_size=4, num_cpus=0.25) for e in extractors)  # runtime only
    assert extract_features(cfg.replace(features=FeaturesConfig(extractors=faster))) == paths
    assert time.perf_counter() - start < 5
    assert stamps == {name: (path / "matrix.npy").stat().st_mtime_ns for name, path in paths.items()}


def test_fingerprint_ignores_runtime_fields_only() -> None:
    from rmm.features.pipeline import feature_fingerprint

    base = ExtractorConfig(name="f", kind="lvlm_embed", model="tiny:qwen2-vl")
    same = feature_fingerprint(dataclasses.replace(base, batch_size=64, concurrency=2, num_gpus=1.0), "sha")
    assert same == feature_fingerprint(base, "sha")
    assert feature_fingerprint(dataclasses.replace(base, pooling="last"), "sha") != feature_fingerprint(base, "sha")
    assert feature_fingerprint(base, "other items") != feature_fingerprint(base, "sha")
