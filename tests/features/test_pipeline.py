from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmm.config import (
    EXTRACTOR_CONFIGS,
    CLIPImageConfig,
    CLIPTextConfig,
    Config,
    ExtractorConfig,
    FeaturesConfig,
    ImageStatsConfig,
    LVLMDescribeConfig,
    LVLMEmbedConfig,
    OutputConfig,
    SentenceConfig,
    TorchvisionConfig,
    ViTConfig,
)
from rmm.data.schema import ITEMS_FILE
from rmm.features.encoders import IMAGE_STATS_DIM
from rmm.features.store import (
    DESCRIPTIONS_FILE,
    PART_GLOB,
    PROGRESS_FILE,
    feature_dir,
    load_feature,
    read_manifest,
    read_parts,
)
from tests.features.helpers import CORRUPT_ITEM, EMPTY_TEXT_ITEM, NO_IMAGE_ITEM, make_dataset

NUM_ITEMS = 20
# One group: a single actor loads the tiny Qwen2-VL once for embed and describe, MiniLM once for the text feature
# and the description embedding, CLIP once for both towers.
EMBED = LVLMEmbedConfig(name="lvlm_tiny", model="tiny:qwen2-vl", poolings=("mean", "last"),
                        batch_size=4, bucket_window=1, group="all")
STATS = ImageStatsConfig(name="image_stats", max_image_size=32, batch_size=4, bucket_window=1, group="all")
EXTRACTORS = tuple(dataclasses.replace(e, batch_size=4, bucket_window=1, group="all") for e in (
    EMBED,
    LVLMDescribeConfig(name="lvlm_tiny", model="tiny:qwen2-vl", prompt="synthetic", max_new_tokens=8, batch_size=4,
                       bucket_window=1, group="all"),
    SentenceConfig(name="text_minilm", model="minilm", group="all"),
    STATS,
    TorchvisionConfig(name="image_resnet50", model="resnet50", max_image_size=32, group="all"),
    ViTConfig(name="image_vit", model="tiny:vit", pooling="cls", group="all"),
    CLIPImageConfig(name="image_clip", model="tiny:clip", group="all"),
    CLIPTextConfig(name="text_clip", model="tiny:clip", group="all"),
))  # 4 items per Ray batch: several part files per feature
DIMS = {"lvlm_tiny_mean": 64, "lvlm_tiny_last": 64, "lvlm_tiny_desc_minilm": 384, "text_minilm": 384,
        "image_stats": IMAGE_STATS_DIM, "image_resnet50": 2048, "image_vit": 32, "image_clip": 16, "text_clip": 16}


def _config(out: Path, extractors: tuple[ExtractorConfig, ...]) -> Config:
    return Config(features=FeaturesConfig(extractors=extractors), output=OutputConfig(dir=str(out)))


@pytest.fixture(scope="module")
def extracted(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict[str, Path]]:
    from rmm.features.pipeline import extract_features

    cfg = _config(tmp_path_factory.mktemp("full"), EXTRACTORS)
    make_dataset(cfg.dataset_dir, NUM_ITEMS)
    return cfg, extract_features(cfg)


@pytest.mark.ray
def test_one_group_writes_every_feature_with_manifests(extracted: tuple[Config, dict[str, Path]]) -> None:
    cfg, paths = extracted
    assert set(paths) == {*DIMS, "lvlm_tiny_keywords"}
    assert (cfg.feature_root / "config.yaml").exists()
    for name, dim in DIMS.items():
        matrix = load_feature(cfg.feature_root, name)
        assert matrix.shape == (NUM_ITEMS, dim) and np.isfinite(matrix).all(), name
        assert len(list(paths[name].glob(PART_GLOB))) >= 2, name  # written batch by batch
        assert not (paths[name] / PROGRESS_FILE).exists()
    mean, last = (read_manifest(cfg.feature_root, f"lvlm_tiny_{p}") for p in ("mean", "last"))
    assert mean["kind"] == "lvlm_embed" and mean["model"] == "tiny:qwen2-vl" and mean["attn_implementation"] == "sdpa"
    assert (mean["pooling"], last["pooling"]) == ("mean", "last") and mean["fingerprint"] == last["fingerprint"]
    assert mean["layer"] == -1 and len(mean["prompt_sha256"]) == 64
    assert mean["counts"] == {"done": NUM_ITEMS, "missing": 0, "failed": 0}
    assert "unreadable image" in mean["notes"][str(CORRUPT_ITEM)]
    assert mean["notes"][str(EMPTY_TEXT_ITEM)] == "image only (empty title and text)"
    assert "transformers" in mean["library_versions"]
    text = read_manifest(cfg.feature_root, "text_minilm")
    assert text["counts"] == {"done": NUM_ITEMS - 1, "missing": 1, "failed": 0}
    assert text["missing"] == {str(EMPTY_TEXT_ITEM): "empty title and text"}
    for image_feature in ("image_stats", "image_resnet50", "image_vit", "image_clip"):
        manifest = read_manifest(cfg.feature_root, image_feature)
        assert set(manifest["missing"]) == {str(CORRUPT_ITEM), str(NO_IMAGE_ITEM)}, image_feature
        assert not load_feature(cfg.feature_root, image_feature)[CORRUPT_ITEM].any()
    assert read_manifest(cfg.feature_root, "image_resnet50")["weights"] == "random"
    assert set(read_manifest(cfg.feature_root, "text_clip")["missing"]) == {str(EMPTY_TEXT_ITEM)}
    norms = np.linalg.norm(load_feature(cfg.feature_root, "text_minilm"), axis=1)
    np.testing.assert_allclose(np.delete(norms, EMPTY_TEXT_ITEM), 1.0, atol=1e-5)


@pytest.mark.ray
def test_ray_batches_are_cut_from_the_items_longest_text_first(extracted: tuple[Config, dict[str, Path]]) -> None:
    """The catalogue interleaves short and long texts; each part (one Ray batch) must hold one band of lengths."""
    cfg, paths = extracted
    items = pd.read_parquet(cfg.dataset_dir / ITEMS_FILE)
    lengths = (items["title"].str.len() + items["text"].str.len()).to_numpy()
    assert len(set(lengths[:4])) > 1  # the first four items in catalogue order mix lengths
    parts = [pd.read_parquet(part)["item_id"].to_numpy() for part in paths["text_minilm"].glob(PART_GLOB)]
    bands = sorted((lengths[ids].min(), lengths[ids].max()) for ids in parts)
    assert len(bands) >= 2
    assert all(high <= next_low for (_, high), (next_low, _) in zip(bands, bands[1:], strict=False))


def test_longest_text_first_orders_by_title_and_text_length_keeping_ties_in_order() -> None:
    from rmm.features.pipeline import longest_text_first

    items = pd.DataFrame({"title": ["ab", None, "abc", "", "abcd"], "text": ["cd", "xyz", None, "", "e"]},
                         index=[10, 11, 12, 13, 14])
    assert longest_text_first(items).tolist() == [4, 0, 1, 2, 3]  # lengths 4, 3, 3, 0, 5: the two 3s in input order


@pytest.mark.ray
def test_describe_writes_descriptions_and_keywords(extracted: tuple[Config, dict[str, Path]]) -> None:
    cfg, paths = extracted
    descriptions = pd.read_parquet(paths["lvlm_tiny_desc_minilm"] / DESCRIPTIONS_FILE)
    assert descriptions["item_id"].tolist() == list(range(NUM_ITEMS))
    assert all(isinstance(json.loads(fields), dict) for fields in descriptions["fields"])
    manifest = read_manifest(cfg.feature_root, "lvlm_tiny_desc_minilm")
    assert manifest["kind"] == "lvlm_describe" and manifest["prompt"] == "synthetic"
    assert manifest["slots"] == ["Category", "Colour", "Pattern", "Material", "Style"]
    assert manifest["decoding"] == {"max_new_tokens": 8, "do_sample": False}
    parse = manifest["parse"]  # a random model writes gibberish: parse failures, counted
    assert parse["parsed"] + parse["partial"] + parse["unparsed"] == NUM_ITEMS
    assert parse["failures"] == parse["partial"] + parse["unparsed"] == (descriptions["parse"] != "parsed").sum()
    keywords = read_manifest(cfg.feature_root, "lvlm_tiny_keywords")
    matrix = load_feature(cfg.feature_root, "lvlm_tiny_keywords")
    assert keywords["derived_from"] == "lvlm_tiny_desc_minilm" and list(keywords["vocabulary"]) == manifest["slots"]
    assert matrix.shape == (NUM_ITEMS, len(keywords["columns"])) == (NUM_ITEMS, keywords["dim"])
    np.testing.assert_array_equal(matrix.sum(axis=1), 5.0)  # one-hot per slot


@pytest.mark.ray
def test_rerun_is_noop_and_ignores_runtime_fields(extracted: tuple[Config, dict[str, Path]]) -> None:
    from rmm.features.pipeline import extract_features

    cfg, paths = extracted
    stamps = {name: (path / "matrix.npy").stat().st_mtime_ns for name, path in paths.items()}
    start = time.perf_counter()
    faster = tuple(dataclasses.replace(e, batch_size=2, num_cpus=0.25, group=None) for e in EXTRACTORS)
    assert extract_features(cfg.replace(features=FeaturesConfig(extractors=faster))) == paths
    assert time.perf_counter() - start < 5
    assert stamps == {name: (path / "matrix.npy").stat().st_mtime_ns for name, path in paths.items()}


@pytest.mark.ray
def test_a_stopped_run_resumes_to_the_uninterrupted_result(extracted: tuple[Config, dict[str, Path]],
                                                            tmp_path: Path) -> None:
    """Simulate a run killed mid-way: two whole batches written, a third half-written (one of the embed
    extractor's two outputs, plus a temp file), no manifest. The rerun keeps the written batches, drops the
    half-written one, extracts only the rest, and ends with the matrices of the uninterrupted run."""
    from rmm.features.pipeline import extract_features

    full, _ = extracted
    cfg = _config(tmp_path / "out", (EMBED, STATS))
    shutil.copytree(full.dataset_dir, cfg.dataset_dir)
    kept: dict[str, list[str]] = {}
    for extractor, outputs in ((EMBED, ("lvlm_tiny_mean", "lvlm_tiny_last")), (STATS, ("image_stats",))):
        parts = sorted(p.name for p in feature_dir(full.feature_root, outputs[0]).glob(PART_GLOB))
        assert len(parts) >= 4
        fingerprint = read_manifest(full.feature_root, outputs[0])["fingerprint"]
        for name in outputs:
            target = feature_dir(cfg.feature_root, name)
            target.mkdir(parents=True)
            (target / PROGRESS_FILE).write_text(json.dumps({"fingerprint": fingerprint}))
            for part in parts[:2]:
                shutil.copy(feature_dir(full.feature_root, name) / part, target / part)
        kept[extractor.name] = parts[:2]
    half = sorted(p.name for p in feature_dir(full.feature_root, "lvlm_tiny_mean").glob(PART_GLOB))[2]
    shutil.copy(feature_dir(full.feature_root, "lvlm_tiny_mean") / half,
                feature_dir(cfg.feature_root, "lvlm_tiny_mean"))
    (feature_dir(cfg.feature_root, "lvlm_tiny_last") / ".part-x.parquet.tmp").write_bytes(b"partial")
    already = set(read_parts(cfg.feature_root, "image_stats")["item_id"])

    extract_features(cfg)

    for name in ("lvlm_tiny_mean", "lvlm_tiny_last", "image_stats"):
        parts = read_parts(cfg.feature_root, name, ["item_id"])
        assert sorted(parts["item_id"]) == list(range(NUM_ITEMS)), name  # every item once: no duplicates
        np.testing.assert_allclose(load_feature(cfg.feature_root, name), load_feature(full.feature_root, name),
                                   atol=1e-4, err_msg=name)
        resumed, uninterrupted = read_manifest(cfg.feature_root, name), read_manifest(full.feature_root, name)
        for key in ("counts", "missing", "failed", "notes", "fingerprint"):
            assert resumed[key] == uninterrupted[key], (name, key)
        names = {p.name for p in feature_dir(cfg.feature_root, name).glob(PART_GLOB)}
        assert set(kept["lvlm_tiny" if name.startswith("lvlm") else "image_stats"]) <= names
        assert half not in names and not list(feature_dir(cfg.feature_root, name).glob(".part-*"))
    new_parts = [p for p in feature_dir(cfg.feature_root, "image_stats").glob(PART_GLOB)
                 if p.name not in kept["image_stats"]]
    assert not already & set(pd.concat([pd.read_parquet(p) for p in new_parts])["item_id"])  # only the rest ran


@pytest.mark.ray
def test_an_actor_holding_every_cpu_still_decodes_images_and_writes(extracted: tuple[Config, dict[str, Path]],
                                                                     tmp_path: Path) -> None:
    """An image extractor whose actor reserves every CPU of the cluster (the fastest way to run one model on a CPU
    box): image decoding and the sink reserve none, so they run beside it instead of waiting forever, and the
    result is the one of the small actors (num_cpus is a runtime field)."""
    import ray

    from rmm.features.pipeline import extract_features

    full, _ = extracted
    whole_node = dataclasses.replace(STATS, num_cpus=ray.cluster_resources()["CPU"])
    cfg = _config(tmp_path / "out", (whole_node,))
    shutil.copytree(full.dataset_dir, cfg.dataset_dir)
    extract_features(cfg)
    np.testing.assert_array_equal(load_feature(cfg.feature_root, "image_stats"),
                                  load_feature(full.feature_root, "image_stats"))
    assert len(list(feature_dir(cfg.feature_root, "image_stats").glob(PART_GLOB))) >= 4  # one per Ray batch


@pytest.mark.ray
def test_an_actor_runs_torch_on_the_cpus_it_reserved(ray_cluster) -> None:
    """Whatever torch would pick by itself (every core of the machine), an extractor actor uses as many threads
    as CPUs it reserved, one at least."""
    import torch

    from rmm.features.extractors import ExtractorGroup, actor_threads

    assert [actor_threads(cpus) for cpus in (0.25, 1, 2.5, 4)] == [1, 1, 2, 4]
    minilm = SentenceConfig(name="text_minilm", model="minilm")
    actor = ray_cluster.remote(ExtractorGroup).options(num_cpus=2).remote((minilm,), None, actor_threads(2))
    assert ray_cluster.get(actor.__ray_call__.remote(lambda group: torch.get_num_threads())) == 2
    ray_cluster.kill(actor)


def test_fingerprint_ignores_runtime_fields_only() -> None:
    from rmm.features.pipeline import feature_fingerprint

    base = LVLMEmbedConfig(name="f", model="tiny:qwen2-vl")
    runtime = dataclasses.replace(base, batch_size=64, bucket_window=2, concurrency=(1, 4), num_gpus=1.0, group="g")
    assert feature_fingerprint(runtime, "sha") == feature_fingerprint(base, "sha")
    assert feature_fingerprint(dataclasses.replace(base, pooling="last"), "sha") != feature_fingerprint(base, "sha")
    assert feature_fingerprint(base, "other items") != feature_fingerprint(base, "sha")


def test_jobs_follow_groups_and_feature_names_must_be_unique() -> None:
    from rmm.features.extractors import get_extractor
    from rmm.features.pipeline import Plan, _check_unique_features, group_jobs

    def plan(name: str, group: str | None, kind: str = "sentence", **kw: object) -> Plan:
        cfg = EXTRACTOR_CONFIGS[kind](name=name, group=group, **kw)
        return Plan(cfg, get_extractor(kind), {})

    jobs = group_jobs([plan("a", "g"), plan("b", None), plan("c", "g"), plan("d", "h")])
    assert [[p.cfg.name for p in job] for job in jobs] == [["a", "c"], ["b"], ["d"]]
    clash = [plan("x_mean", None), plan("x", None, "lvlm_embed", model="m", poolings=("mean", "last"))]
    with pytest.raises(ValueError, match="both write feature 'x_mean'"):
        _check_unique_features(clash)
