"""MovieLens importer: ml-100k and ml-latest layouts, overviews, posters, bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rmm.config import Config, DatasetConfig, OutputConfig
from rmm.data.prepare import dataset_stats, prepare_dataset
from rmm.data.schema import load_dataset
from rmm.errors import DataError

GENRE_FLAGS = {"1": [0, 0, 0, 1, 1, 1] + [0] * 13,  # Animation, Children's, Comedy
               "2": [0, 1, 1] + [0] * 16,  # Action, Adventure
               "3": [0] * 8 + [1] + [0] * 10}  # Drama


def write_100k(folder: Path, extra_ratings: str = "") -> Path:
    folder.mkdir()
    ratings = "".join(f"{u}\t{i}\t4\t{880000000 + 10 * u + i}\n" for u in (1, 2, 3) for i in (1, 2, 3))
    (folder / "u.data").write_text(ratings + extra_ratings)
    titles = {"1": "Toy Story (1995)", "2": "GoldenEye (1995)", "3": "Café Society (1995)"}
    lines = "".join(f"{i}|{title}|01-Jan-1995||http://x|{'|'.join(map(str, GENRE_FLAGS[i]))}\n"
                    for i, title in titles.items())
    (folder / "u.item").write_bytes(lines.encode("latin-1"))
    return folder


def write_latest(folder: Path, movies: str | None = None) -> Path:
    folder.mkdir()
    ratings = "".join(f"{u},{i},4.5,{1500000000 + 10 * u + i}\n" for u in (1, 2, 3) for i in (1, 2, 10))
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    (folder / "movies.csv").write_text(movies or ('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                                  '2,"Jumanji, The (1995)",Fantasy\n10,GoldenEye (1995),'
                                                  '(no genres listed)\n99,Unrated,Drama\n'))
    return folder


def prepare(tmp_path: Path, folder: Path, **dataset: Any) -> Path:
    cfg = Config(dataset=DatasetConfig(name="ml", source="movielens", path=str(folder), user_core=0, item_core=0,
                                       **dataset),
                 output=OutputConfig(dir=str(tmp_path / "out")))
    return prepare_dataset(cfg).root


def test_ml_100k_genres_and_posters(tmp_path: Path):
    posters = tmp_path / "posters"
    posters.mkdir()
    Image.new("RGB", (6, 9), (0, 0, 200)).save(posters / "2.jpg")
    root = prepare(tmp_path, write_100k(tmp_path / "ml-100k"), images_dir=str(posters), split="leave_last_out")
    dataset = load_dataset(root)
    items = dataset.items.set_index("source_id")
    assert items.loc["1", "text"] == "Animation, Children's, Comedy"
    assert items.loc["3", "title"] == "Café Society (1995)"
    assert items["image_path"].isna().tolist() == [True, False, True]
    assert items.loc["2", "image_path"] == "images/2.jpg"
    assert len(dataset.interactions) == 9
    stats = dataset_stats(root)
    assert stats["items_with_image"] == pytest.approx(1 / 3)
    assert stats["items_with_text"] == 1.0


def test_ml_latest_with_overviews(tmp_path: Path):
    overviews = tmp_path / "overviews.csv"
    overviews.write_text('movieId,overview\n1,"A cowboy doll, jealous."\n10,A spy.\n12345,Not in the catalogue.\n')
    dataset = load_dataset(prepare(tmp_path, write_latest(tmp_path / "ml-latest"), text_path=str(overviews)))
    items = dataset.items.set_index("source_id")
    assert list(items.index) == ["1", "2", "10"]
    assert items.loc["1", "text"] == "Adventure, Animation. A cowboy doll, jealous."
    assert items.loc["2", "text"] == "Fantasy"
    assert items.loc["10", "text"] == "A spy."
    assert items.loc["2", "title"] == "Jumanji, The (1995)"
    skipped = dataset.info["skipped"]
    assert skipped["overviews_of_unknown_movies"] == {"count": 1, "examples": ["12345"]}
    assert skipped["items_without_interactions"] == {"count": 1, "examples": ["99"]}


def test_unknown_movie(tmp_path: Path):
    folder = write_100k(tmp_path / "ml-100k", extra_ratings="1\t77\t3\t880000999\n")
    with pytest.raises(DataError, match=r"u.data: item '77' in interactions is not in .*u.item \(1 rows\)"):
        prepare(tmp_path, folder)
    dataset = load_dataset(prepare(tmp_path, folder, on_unknown_item="skip"))
    assert dataset.info["skipped"]["unknown_items"] == {"count": 1, "examples": ["77"]}


@pytest.mark.parametrize(("movies", "message"), [
    ("movieId,title\n1,Toy Story (1995)\n", r"movies.csv: missing column\(s\) \['genres'\]"),
    ("movieId,title,genres\n1,A,Drama\n2,B,Drama\n10,C,Drama\n2,D,Drama\n",
     r"movies.csv: movie '2' appears more than once"),
])
def test_bad_movies_file(tmp_path: Path, movies: str, message: str):
    with pytest.raises(DataError, match=message):
        prepare(tmp_path, write_latest(tmp_path / "ml-latest", movies))


def test_bad_100k_files(tmp_path: Path):
    folder = write_100k(tmp_path / "ml-100k", extra_ratings="2\tseven\t3\t880000999\n")
    with pytest.raises(DataError, match=r"u.data: line 10: item 'seven' is not an integer"):
        prepare(tmp_path, folder)
    (folder / "u.data").write_text("1\t1\t4\n")
    with pytest.raises(DataError, match=r"u.data: expected 4 tab-separated fields"):
        prepare(tmp_path, folder)


def test_not_a_movielens_folder(tmp_path: Path):
    with pytest.raises(DataError, match=r"not a MovieLens folder: expected u.data \+ u.item"):
        prepare(tmp_path, tmp_path)
