"""MovieLens (GroupLens): ml-100k (``u.data`` + ``u.item``) or ml-latest / ml-25m style (``ratings.csv`` +
``movies.csv``), recognised by which files the folder holds.

The item text is the genres (plus an overview from ``dataset.text_path`` when given: MovieLens ships no plot
text), posters come from ``dataset.images_dir/<movieId>.jpg``. Every rating counts as an interaction.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rmm.config import DatasetConfig
from rmm.data.importers import (
    check_unique,
    drop_unknown_items,
    index_images,
    int_column,
    raw_path,
    read_csv,
    require_columns,
)
from rmm.data.preprocess import RawData, Skips
from rmm.errors import DataError

#: The 19 genre flags of ml-100k's u.item, in file order (columns 5..23).
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")


def load(cfg: DatasetConfig, skips: Skips) -> RawData:
    """Read the MovieLens folder ``dataset.path``; see the module docstring for the layouts."""
    folder = raw_path(cfg)
    if (folder / "u.data").is_file():
        inter_path, item_path = folder / "u.data", folder / "u.item"
        interactions, items = _read_100k_ratings(inter_path), _read_100k_items(item_path)
    elif (folder / "ratings.csv").is_file():
        inter_path, item_path = folder / "ratings.csv", folder / "movies.csv"
        interactions, items = _read_latest_ratings(inter_path), _read_latest_items(item_path)
    else:
        raise DataError(f"{folder}: not a MovieLens folder: expected u.data + u.item (ml-100k) or ratings.csv + "
                        f"movies.csv (ml-latest)")
    check_unique(items["source_id"], item_path, "movie")
    interactions = drop_unknown_items(interactions, items["source_id"], cfg, inter_path, item_path, skips)
    files = {"interactions": str(inter_path), "items": str(item_path)}
    if cfg.text_path:
        items["text"] = _add_overviews(items, Path(cfg.text_path), skips)
        files["text"] = cfg.text_path
    images = index_images(cfg.images_dir)
    items["image_source"] = [str(images[i]) if i in images else None for i in items["source_id"]]
    if cfg.images_dir:
        files["images"] = cfg.images_dir
    return RawData(items=items, interactions=interactions, source_files=files)


def _read_100k_ratings(path: Path) -> pd.DataFrame:
    raw = read_csv(path, "ml-100k ratings (u.data)", sep="\t", header=None)
    if raw.shape[1] != 4:
        raise DataError(f"{path}: expected 4 tab-separated fields (user item rating timestamp), "
                        f"got {raw.shape[1]}")
    raw.columns = ["user", "item", "rating", "timestamp"]
    return pd.DataFrame({"user": int_column(raw, "user", path, 1).astype(str),
                         "item": int_column(raw, "item", path, 1).astype(str),
                         "timestamp": int_column(raw, "timestamp", path, 1)})


def _read_100k_items(path: Path) -> pd.DataFrame:
    raw = read_csv(path, "ml-100k items (u.item)", sep="|", header=None, encoding="latin-1")
    if raw.shape[1] != 5 + len(GENRES_100K):
        raise DataError(f"{path}: expected {5 + len(GENRES_100K)} '|'-separated fields (id|title|release date|"
                        f"video release date|url|19 genre flags), got {raw.shape[1]}")
    flags = raw.iloc[:, 5:].to_numpy() == "1"
    genres = [", ".join(g for g, on in zip(GENRES_100K, row, strict=True) if on) for row in flags]
    raw = raw.rename(columns={0: "movie id", 1: "title"})
    return pd.DataFrame({"source_id": int_column(raw, "movie id", path, 1).astype(str), "title": raw["title"],
                         "text": genres})


def _read_latest_ratings(path: Path) -> pd.DataFrame:
    raw = read_csv(path, "ml-latest ratings (ratings.csv)")
    require_columns(raw, ["userId", "movieId", "timestamp"], path)
    return pd.DataFrame({"user": int_column(raw, "userId", path).astype(str),
                         "item": int_column(raw, "movieId", path).astype(str),
                         "timestamp": int_column(raw, "timestamp", path)})


def _read_latest_items(path: Path) -> pd.DataFrame:
    raw = read_csv(path, "ml-latest items (movies.csv)")
    require_columns(raw, ["movieId", "title", "genres"], path)
    genres = raw["genres"].str.replace("(no genres listed)", "", regex=False).str.split("|").map(
        lambda parts: ", ".join(p for p in parts if p))
    return pd.DataFrame({"source_id": int_column(raw, "movieId", path).astype(str), "title": raw["title"],
                         "text": genres})


def _add_overviews(items: pd.DataFrame, path: Path, skips: Skips) -> list[str]:
    """Genres followed by the movie's overview; overviews of movies not in the item file are counted."""
    raw = read_csv(path, "dataset.text_path (movieId,overview CSV)")
    require_columns(raw, ["movieId", "overview"], path)
    raw["movieId"] = int_column(raw, "movieId", path).astype(str)
    check_unique(raw["movieId"], path, "movie")
    skips.add("overviews_of_unknown_movies", raw.loc[~raw["movieId"].isin(items["source_id"]), "movieId"])
    overview = items["source_id"].map(raw.set_index("movieId")["overview"]).fillna("")
    return [f"{genres}. {text}" if genres and text else genres or text
            for genres, text in zip(items["text"], overview, strict=True)]
