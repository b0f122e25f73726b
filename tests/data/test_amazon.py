"""Amazon 2018 and 2023 importers on tiny fixture files (plain and gzip), images included."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rmm.config import Config, ConfigError, DatasetConfig, OutputConfig
from rmm.data.prepare import prepare_dataset
from rmm.data.schema import load_dataset
from rmm.errors import DataError

ITEMS = ("A1", "A2", "A3")
USERS = ("U1", "U2", "U3")


def write_lines(path: Path, records: list[Any]) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def reviews_2018() -> list[dict[str, Any]]:
    return [{"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": 1000 + 10 * k + j}
            for k, u in enumerate(USERS) for j, i in enumerate(ITEMS)]


def meta_2018() -> list[dict[str, Any]]:
    return [{"asin": "A1", "title": "Soft bib", "description": ["Organic cotton.", "Machine washable."],
             "feature": ["Snap button"]},
            {"asin": "A2", "title": "Bottle", "description": "BPA free.", "feature": []},
            {"asin": "A3", "title": "Rattle"},
            {"asin": "A9", "title": "Never reviewed"}]


def prepare(tmp_path: Path, **dataset: Any) -> Path:
    cfg = Config(dataset=DatasetConfig(name="baby", source="amazon", user_core=0, item_core=0,
                                       split="leave_last_out", **dataset),
                 output=OutputConfig(dir=str(tmp_path / "out")))
    return prepare_dataset(cfg).root


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images_in"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "A1.jpg")
    (folder / "A2.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_amazon_2018_gzip_with_images(tmp_path: Path, images: Path):
    reviews = write_lines(tmp_path / "reviews.json.gz", reviews_2018() + [reviews_2018()[0]])
    meta = write_lines(tmp_path / "meta.json.gz", meta_2018())
    dataset = load_dataset(prepare(tmp_path, path=str(reviews), metadata_path=str(meta), images_dir=str(images)))
    items = dataset.items.set_index("source_id")
    assert list(items.index) == list(ITEMS)
    assert items.loc["A1", "text"] == "Organic cotton. Machine washable. Snap button"
    assert items.loc["A2", "text"] == "BPA free."
    assert items.loc["A3", "text"] == ""
    assert items.loc["A1", "image_path"] == "images/A1.jpg"
    assert (dataset.root / "images" / "A1.jpg").read_bytes() == (images / "A1.jpg").read_bytes()
    assert items["image_path"].isna().tolist() == [False, True, True]
    assert len(dataset.interactions) == 9
    skipped = dataset.info["skipped"]
    assert skipped["unreadable_images"] == {"count": 1, "examples": ["A2"]}
    assert skipped["duplicate_interactions"]["count"] == 1
    assert skipped["items_without_interactions"] == {"count": 1, "examples": ["A9"]}
    assert dataset.info["timestamp_unit"] == "s"


def test_amazon_2023_plain(tmp_path: Path):
    reviews = write_lines(tmp_path / "Baby.jsonl", [
        {"user_id": u, "parent_asin": i, "asin": i + "-variant", "rating": 4.0, "timestamp": 1_600_000_000_000 + k}
        for k, (u, i) in enumerate((u, i) for u in USERS for i in ITEMS)])
    meta = write_lines(tmp_path / "meta_Baby.jsonl", [
        {"parent_asin": i, "title": f"Item {i}", "description": ["Nice."], "features": ["Small", "Light"]}
        for i in ITEMS])
    dataset = load_dataset(prepare(tmp_path, path=str(reviews), metadata_path=str(meta)))
    assert dataset.items["source_id"].tolist() == list(ITEMS)
    assert dataset.items["text"].tolist() == ["Nice. Small Light"] * 3
    assert dataset.users["source_id"].tolist() == list(USERS)
    assert dataset.interactions["timestamp"].min() == 1_600_000_000_000
    assert dataset.info["timestamp_unit"] == "ms"


def test_unknown_item_errors_naming_files_and_item(tmp_path: Path):
    reviews = write_lines(tmp_path / "reviews.json", reviews_2018() + [
        {"reviewerID": "U1", "asin": "B00X", "unixReviewTime": 5}, {"reviewerID": "U2", "asin": "B00X",
                                                                    "unixReviewTime": 6}])
    meta = write_lines(tmp_path / "meta.json", meta_2018())
    with pytest.raises(DataError) as err:
        prepare(tmp_path, path=str(reviews), metadata_path=str(meta))
    assert str(err.value) == (f"{reviews}: item 'B00X' in interactions is not in {meta} (2 rows); "
                              f"set dataset.on_unknown_item: skip to drop them")
    dataset = load_dataset(prepare(tmp_path, path=str(reviews), metadata_path=str(meta), on_unknown_item="skip"))
    assert dataset.info["skipped"]["unknown_items"] == {"count": 2, "examples": ["B00X"]}
    assert len(dataset.interactions) == 9


@pytest.mark.parametrize(("lines", "message"), [
    (['{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}', '{"reviewerID": "U2", "asin": "A1", '],
     r"reviews.json: line 2 is not valid JSON"),
    (['{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}', '{"reviewerID": "U2", "asin": "A1"}'],
     r"reviews.json: line 2: missing key\(s\) \['unixReviewTime'\]"),
    (['{"reviewerID": "U1", "asin": "A1", "unixReviewTime": "yesterday"}'],
     r"reviews.json: line 1: unixReviewTime 'yesterday' is not a number"),
    (['{"user": "U1", "item": "A1"}'], r"reviews.json: line 1 is neither an Amazon 2018 nor a 2023 record"),
    (['[1, 2]'], r"reviews.json: line 1 is not a JSON object"),
])
def test_bad_review_lines_name_file_and_line(tmp_path: Path, lines: list[str], message: str):
    reviews = write_lines(tmp_path / "reviews.json", lines)
    meta = write_lines(tmp_path / "meta.json", meta_2018())
    with pytest.raises(DataError, match=message):
        prepare(tmp_path, path=str(reviews), metadata_path=str(meta))


def test_duplicate_item_in_metadata(tmp_path: Path):
    reviews = write_lines(tmp_path / "reviews.json", reviews_2018())
    meta = write_lines(tmp_path / "meta.json", meta_2018() + [{"asin": "A2", "title": "Again"}])
    with pytest.raises(DataError, match=r"meta.json: item 'A2' appears more than once"):
        prepare(tmp_path, path=str(reviews), metadata_path=str(meta))


def test_verbatim_repeated_metadata_record_is_a_counted_skip(tmp_path: Path):
    reviews = write_lines(tmp_path / "reviews.json", reviews_2018())
    meta = write_lines(tmp_path / "meta.json", meta_2018() + [meta_2018()[1]])
    dataset = load_dataset(prepare(tmp_path, path=str(reviews), metadata_path=str(meta)))
    assert sorted(dataset.items["source_id"]) == list(ITEMS)
    assert dataset.info["skipped"]["duplicate_metadata_records"] == {"count": 1, "examples": ["A2"]}


def test_metadata_missing_item_key(tmp_path: Path):
    reviews = write_lines(tmp_path / "reviews.json", reviews_2018())
    meta = write_lines(tmp_path / "meta.json", meta_2018() + [{"title": "No id"}])
    with pytest.raises(DataError, match=r"meta.json: line 5: missing key\(s\) \['asin'\]"):
        prepare(tmp_path, path=str(reviews), metadata_path=str(meta))


def test_missing_files_and_settings(tmp_path: Path):
    reviews = write_lines(tmp_path / "reviews.json", reviews_2018())
    with pytest.raises(ConfigError, match="dataset.metadata_path"):
        prepare(tmp_path, path=str(reviews))
    with pytest.raises(DataError, match=r"nope.json: JSON-lines file not found"):
        prepare(tmp_path, path=str(reviews), metadata_path=str(tmp_path / "nope.json"))
    meta = write_lines(tmp_path / "meta.json", meta_2018())
    with pytest.raises(DataError, match=r"missing_dir: dataset.images_dir is not a directory"):
        prepare(tmp_path, path=str(reviews), metadata_path=str(meta), images_dir=str(tmp_path / "missing_dir"))
