"""MMRec importer: .inter TSV, ready features re-ordered into the feature store, predefined split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmm.config import Config, ConfigError, DatasetConfig, OutputConfig, SyntheticConfig
from rmm.data.prepare import prepare_dataset
from rmm.data.schema import TEST, TRAIN, VALID, load_dataset
from rmm.errors import DataError
from rmm.features.store import NONFINITE_REASON, load_feature, read_manifest
from rmm.stages import run_data

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"


def write_mmrec(folder: Path, rows: list[tuple[int, int, int, int]], num_feature_rows: int | None = 6,
                header: str = HEADER) -> Path:
    """``rows`` are (user, item, timestamp, x_label); features have ``num_feature_rows`` rows, row r = [r, -r]."""
    folder.mkdir(exist_ok=True)
    lines = "".join(f"{u}\t{i}\t5.0\t{t}\t{x}\n" for u, i, t, x in rows)
    (folder / "baby.inter").write_text(header + lines)
    if num_feature_rows is not None:
        rows_index = np.arange(num_feature_rows, dtype=np.float32)
        np.save(folder / "image_feat.npy", np.stack([rows_index, -rows_index], axis=1))
        np.save(folder / "text_feat.npy", np.stack([rows_index * 10] * 3, axis=1))
    return folder


def config(tmp_path: Path, folder: Path, **dataset: Any) -> Config:
    return Config(dataset=DatasetConfig(name="baby", source="mmrec", path=str(folder),
                                        **{"user_core": 0, "item_core": 0, **dataset}),
                  output=OutputConfig(dir=str(tmp_path / "out")))


# (user, item, timestamp, x_label): items 0..5 have feature rows, item 3 has no interaction, user 2 no train.
ROWS = [(0, 1, 10, 0), (0, 2, 11, 0), (0, 4, 12, 1), (0, 5, 13, 2),
        (1, 0, 10, 0), (1, 2, 20, 0), (1, 1, 30, 2),
        (2, 5, 10, 1), (2, 4, 11, 2)]


def test_features_are_reordered_to_new_item_ids(tmp_path: Path):
    cfg = config(tmp_path, write_mmrec(tmp_path / "mmrec", ROWS), split="predefined")
    dataset = load_dataset(run_data(cfg))
    assert dataset.items["source_id"].tolist() == ["0", "1", "2", "4", "5"]
    assert dataset.items["title"].tolist() == dataset.items["source_id"].tolist()
    assert (dataset.items["text"] == "").all() and dataset.items["image_path"].isna().all()
    image = load_feature(cfg.feature_root, "mmrec_image")
    assert image[:, 0].tolist() == [0, 1, 2, 4, 5]
    assert load_feature(cfg.feature_root, "mmrec_text").shape == (5, 3)
    manifest = read_manifest(cfg.feature_root, "mmrec_image")
    assert manifest["kind"] == "imported" and manifest["source"].endswith("image_feat.npy")
    assert dataset.info["features"] == ["mmrec_image", "mmrec_text"]
    assert dataset.info["skipped"]["items_without_interactions"] == {"count": 1, "examples": ["3"]}
    assert dataset.info["skipped"]["non_finite_rows_in_image_feat.npy"] == {"count": 0, "examples": []}


def test_non_finite_feature_rows_are_stored_as_failed_zero_rows(tmp_path: Path):
    """As extraction does with an encoder's NaN output: the item stays, its vector becomes a zero row listed as
    failed in the manifest, and dataset.json counts the file's bad rows by itemID."""
    folder = write_mmrec(tmp_path / "mmrec", ROWS)
    image = np.load(folder / "image_feat.npy")
    image[2, 1], image[4, 0], image[3, 0] = np.nan, np.inf, -np.inf  # item 3 has no interaction: never stored
    np.save(folder / "image_feat.npy", image)
    text = np.load(folder / "text_feat.npy").astype(np.float64)
    text[5, 2] = 1e39  # finite in float64, infinite in the store's float32
    np.save(folder / "text_feat.npy", text)
    cfg = config(tmp_path, folder, split="predefined")
    dataset = load_dataset(run_data(cfg))

    assert dataset.items["source_id"].tolist() == ["0", "1", "2", "4", "5"]  # no item dropped
    skipped = dataset.info["skipped"]
    assert skipped["non_finite_rows_in_image_feat.npy"] == {"count": 3, "examples": ["2", "3", "4"]}
    assert skipped["non_finite_rows_in_text_feat.npy"] == {"count": 1, "examples": ["5"]}
    image_store, text_store = (load_feature(cfg.feature_root, name) for name in ("mmrec_image", "mmrec_text"))
    assert np.isfinite(image_store).all() and np.isfinite(text_store).all()
    assert image_store.tolist() == [[0, 0], [1, -1], [0, 0], [0, 0], [5, -5]]
    assert text_store[4].tolist() == [0, 0, 0] and text_store[3].tolist() == [40, 40, 40]
    image_manifest = read_manifest(cfg.feature_root, "mmrec_image")
    assert image_manifest["failed"] == {"2": NONFINITE_REASON, "3": NONFINITE_REASON}
    assert image_manifest["counts"]["failed"] == 2 and image_manifest["counts"]["done"] == 3
    assert read_manifest(cfg.feature_root, "mmrec_text")["failed"] == {"4": NONFINITE_REASON}


def test_predefined_split_keeps_x_label_and_drops_users_without_train(tmp_path: Path):
    dataset = load_dataset(prepare_dataset(config(tmp_path, write_mmrec(tmp_path / "mmrec", ROWS),
                                                  split="predefined")).root)
    assert dataset.users["source_id"].tolist() == ["0", "1"]
    user0 = dataset.interactions[dataset.interactions["user_id"] == 0]
    assert user0["split"].tolist() == [TRAIN, TRAIN, VALID, TEST]
    assert dataset.info["skipped"]["users_without_train_item"] == {"count": 1, "examples": ["2"]}
    assert dataset.info["skipped"]["interactions_of_users_without_train_item"]["count"] == 2
    assert dataset.info["split"] == {"strategy": "predefined", "seed": 2024}


def test_without_features_items_come_from_interactions(tmp_path: Path):
    rows = [(0, 10, 1, 0), (0, 9, 2, 0), (0, 11, 3, 0), (1, 9, 1, 0), (1, 10, 2, 0)]
    cfg = config(tmp_path, write_mmrec(tmp_path / "mmrec", rows, num_feature_rows=None), split="leave_last_out")
    dataset = load_dataset(prepare_dataset(cfg).root)
    assert dataset.items["source_id"].tolist() == ["9", "10", "11"]
    assert dataset.info["features"] == []


def test_unknown_item_beyond_feature_rows(tmp_path: Path):
    folder = write_mmrec(tmp_path / "mmrec", ROWS + [(1, 7, 40, 0)])
    with pytest.raises(DataError) as err:
        prepare_dataset(config(tmp_path, folder))
    message = str(err.value)
    assert message.startswith(f"{folder / 'baby.inter'}: item '7' in interactions is not in ")
    assert "image_feat.npy (1 rows)" in message and "on_unknown_item: skip" in message
    dataset = load_dataset(prepare_dataset(config(tmp_path, folder, on_unknown_item="skip")).root)
    assert dataset.info["skipped"]["unknown_items"] == {"count": 1, "examples": ["7"]}


@pytest.mark.parametrize(("text", "message"), [
    ("userID\titemID\trating\tx_label\n0\t1\t5\t0\n", r"baby.inter: missing column\(s\) \['timestamp'\]"),
    (HEADER + "0\t1\t5\t10\t0\n0\t2\t5\t11\t7\n", r"baby.inter: line 3: x_label 7 is not 0, 1 or 2"),
    (HEADER + "0\tx\t5\t10\t0\n", r"baby.inter: line 2: itemID 'x' is not an integer"),
])
def test_bad_inter_file(tmp_path: Path, text: str, message: str):
    folder = tmp_path / "mmrec"
    folder.mkdir()
    (folder / "baby.inter").write_text(text)
    with pytest.raises(DataError, match=message):
        prepare_dataset(config(tmp_path, folder, split="predefined"))


def test_feature_files_must_agree(tmp_path: Path):
    folder = write_mmrec(tmp_path / "mmrec", ROWS)
    np.save(folder / "text_feat.npy", np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"feature files disagree on the number of items"):
        prepare_dataset(config(tmp_path, folder))


def test_missing_inter_file_and_predefined_elsewhere(tmp_path: Path):
    with pytest.raises(DataError, match=r"baby.inter: MMRec interactions"):
        prepare_dataset(config(tmp_path, tmp_path))
    cfg = Config(dataset=DatasetConfig(split="predefined", synthetic=SyntheticConfig(num_users=20, num_items=20)),
                 output=OutputConfig(dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match="split: predefined"):
        prepare_dataset(cfg)
