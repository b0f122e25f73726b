"""The ``dataset`` section: where a dataset comes from and how it is filtered and split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rmm.validation import require_at_least

SPLITS = ("temporal_ratio", "random_ratio", "mmrec_random", "leave_last_out", "global_temporal", "predefined")
SOURCES = ("synthetic", "mmrec", "amazon", "movielens")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the built-in synthetic dataset (users with attribute tastes, items with images and text)."""

    num_users: int = 400
    num_items: int = 300
    interactions_per_user: int = 20
    image_size: int = 64
    popularity_skew: float = 1.0

    def __post_init__(self) -> None:
        require_at_least(self, 1, "num_users", "num_items", "interactions_per_user", "image_size")


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset comes from and how it is filtered and split.

    ``path`` is the raw input of an importer: the MMRec folder, the Amazon reviews file, or the MovieLens
    folder. ``metadata_path`` is Amazon's item-metadata file; ``images_dir`` holds item images keyed by
    source id; ``text_path`` is MovieLens's optional overview CSV. ``split: predefined`` keeps a split the
    source ships (MMRec's ``x_label``). ``on_unknown_item``: ``error`` stops on an interaction whose item is not
    in the item file; ``skip`` drops such rows and counts them in ``dataset.json``.

    ``cold_items``: the share of items (after k-core filtering, drawn with ``seed``) held out of training
    entirely: every interaction of such a cold item goes to valid or test, split per user in the valid:test
    proportion of ``split_ratios``; the other items are split by ``split``. 0 (the default) holds out none. Not
    with ``split: predefined``, whose split is the source's.
    """

    name: str = "synthetic"
    source: str = "synthetic"
    path: str | None = None
    metadata_path: str | None = None
    images_dir: str | None = None
    text_path: str | None = None
    user_core: int = 5
    item_core: int = 5
    split: str = "temporal_ratio"
    on_unknown_item: str = "error"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    cold_items: float = 0.0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    #: ``protocol: mmrec`` splits raw data as MMRec's published datasets were split (random per user).
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {"mmrec": {"split": "mmrec_random"}}

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        ratios = list(self.split_ratios)
        if len(ratios) != 3 or not all(0 <= r <= 1 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must be three numbers in [0, 1] summing to 1 (train, valid, test), "
                             f"got {ratios}")
        if min(ratios) <= 0:
            part = ("train", "valid", "test")[ratios.index(min(ratios))]
            raise ValueError(f"split_ratios {ratios} leave the {part} part empty: every part needs a share > 0 "
                             f"(valid picks the model, test measures it)")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source {self.source!r} needs dataset.path (the raw input)")
        if self.on_unknown_item not in ("error", "skip"):
            raise ValueError(f"on_unknown_item must be error or skip, got {self.on_unknown_item!r}")
        if self.user_core < 0 or self.item_core < 0:
            raise ValueError("user_core and item_core must be >= 0")
        if not 0 <= self.cold_items < 1:  # NaN fails too
            raise ValueError(f"cold_items must be a share of items in [0, 1), got {self.cold_items}")
        if self.cold_items and self.split == "predefined":
            raise ValueError("cold_items needs a split rmm makes, got split: predefined (the source's own split); "
                             "choose another split or set cold_items: 0")

