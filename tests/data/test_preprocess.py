"""Dedup, k-core, id remap and every split strategy on small hand-made raw data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rmm.config import ConfigError, DatasetConfig
from rmm.data.preprocess import RawData, Skips, cold_item_ids, kcore, preprocess, sorted_ids
from rmm.data.schema import TEST, TRAIN, VALID
from rmm.errors import DataError


def raw_data(rows: list[tuple[str, str, int]], split: list[int] | None = None) -> RawData:
    interactions = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    if split is not None:
        interactions["split"] = np.array(split, dtype=np.int8)
    ids = sorted_ids(interactions["item"].unique())
    items = pd.DataFrame({"source_id": ids, "title": ids, "text": "", "image_source": None})
    return RawData(items=items, interactions=interactions)


def random_raw(num_users: int = 60, num_items: int = 40, per_user: int = 15, seed: int = 0) -> RawData:
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        for item in rng.choice(num_items, size=rng.integers(per_user // 2, per_user + 1), replace=False):
            rows.append((f"u{user:02d}", f"i{item:02d}", int(rng.integers(0, 50))))  # many timestamp ties
    return raw_data(rows)


def run(raw: RawData, **cfg) -> tuple[pd.DataFrame, dict]:
    skips = Skips()
    prepared = preprocess(raw, DatasetConfig(**{"user_core": 0, "item_core": 0, **cfg}), skips)
    return prepared.interactions, {"skipped": skips.to_dict(), **prepared.info, "prepared": prepared}


def test_sorted_ids_is_numeric_for_digit_ids_else_lexicographic():
    assert sorted_ids(["10", "9", "100"]) == ["9", "10", "100"]
    assert sorted_ids(["b", "a10", "a9"]) == ["a10", "a9", "b"]


def test_dedup_keeps_earliest_and_counts():
    raw = raw_data([("u1", "a", 5), ("u1", "a", 3), ("u1", "b", 4), ("u2", "a", 1), ("u1", "a", 9)])
    frame, info = run(raw, split="leave_last_out")
    assert len(frame) == 3
    a_row = frame[(frame.user_id == 0) & (frame.item_id == 0)]
    assert a_row["timestamp"].tolist() == [3]
    assert info["skipped"]["duplicate_interactions"] == {"count": 2, "examples": ["u1/a", "u1/a"]}


def test_kcore_is_iterative():
    # u3 has 1 interaction -> dropped; that leaves item c with 1 -> dropped; that leaves u2 with 1 -> dropped.
    inter = pd.DataFrame([("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u3", "c"), ("u4", "a"),
                          ("u4", "b")], columns=["user", "item"])
    filtered, rounds = kcore(inter, user_core=2, item_core=2)
    assert sorted(map(tuple, filtered.to_numpy())) == [("u1", "a"), ("u1", "b"), ("u4", "a"), ("u4", "b")]
    assert rounds >= 2


def test_kcore_result_satisfies_both_cores():
    _, info = run(random_raw(), user_core=8, item_core=10)
    inter = info["prepared"].interactions
    assert inter.groupby("user_id").size().min() >= 8
    assert inter.groupby("item_id").size().min() >= 10
    assert info["kcore"]["before"]["interactions"] > info["kcore"]["after"]["interactions"]


def test_nothing_left_after_kcore_names_cores_and_counts():
    raw = raw_data([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)])
    with pytest.raises(DataError, match=r"user_core=5, item_core=5.*2 users, 2 items, 3 interactions"):
        preprocess(raw, DatasetConfig(user_core=5, item_core=5), Skips())


def test_ids_are_dense_and_follow_source_order():
    _, info = run(random_raw())
    prepared = info["prepared"]
    assert prepared.items["item_id"].tolist() == list(range(len(prepared.items)))
    assert prepared.items["source_id"].tolist() == sorted(prepared.items["source_id"])
    assert prepared.users["source_id"].tolist() == sorted(prepared.users["source_id"])
    assert set(prepared.interactions["user_id"]) == set(range(len(prepared.users)))


def test_temporal_ratio_has_no_leakage_and_right_ratios():
    frame, _ = run(random_raw(per_user=30), split="temporal_ratio")
    for _, group in frame.groupby("user_id"):
        train = group[group.split == TRAIN]
        assert len(train) >= 1
        later = group[group.split != TRAIN]
        assert (later["timestamp"] >= train["timestamp"].max()).all()
        test = group[group.split == TEST]
        if len(test):
            assert (test["timestamp"] >= group[group.split == VALID]["timestamp"].max()).all()
    shares = frame["split"].value_counts(normalize=True)
    assert shares[TRAIN] == pytest.approx(0.8, abs=0.05)
    assert shares[VALID] == pytest.approx(0.1, abs=0.04)
    assert shares[TEST] == pytest.approx(0.1, abs=0.04)


def test_temporal_ratio_ties_are_broken_by_item_order():
    raw = raw_data([("u1", f"i{k}", 7) for k in range(10)])
    frame, _ = run(raw, split="temporal_ratio")
    assert frame.sort_values("item_id")["split"].tolist() == [TRAIN] * 8 + [VALID, TEST]


def test_small_users_keep_a_train_item():
    raw = raw_data([("u1", "a", 1), ("u2", "a", 1), ("u2", "b", 2),
                    ("u3", "a", 1), ("u3", "b", 2), ("u3", "c", 3)])
    frame, _ = run(raw, split="temporal_ratio")
    assert frame.groupby("user_id")["split"].apply(list).tolist() == [[TRAIN], [TRAIN, TEST],
                                                                       [TRAIN, VALID, TEST]]


def test_random_ratio_is_seeded_and_differs_from_temporal():
    raw = random_raw(per_user=30)
    first, _ = run(raw, split="random_ratio", seed=3)
    again, _ = run(raw, split="random_ratio", seed=3)
    other, _ = run(raw, split="random_ratio", seed=4)
    temporal, _ = run(raw, split="temporal_ratio")
    assert first.equals(again)
    assert not first["split"].equals(other["split"])
    assert not first["split"].equals(temporal["split"])
    assert first["split"].value_counts().equals(temporal["split"].value_counts())


def test_leave_last_out_is_exact():
    frame, _ = run(random_raw(), split="leave_last_out")
    for _, group in frame.groupby("user_id"):
        labels = group.sort_values(["timestamp", "item_id"])["split"].tolist()
        assert labels == [TRAIN] * (len(labels) - 2) + [VALID, TEST]


def test_global_temporal_cuts_on_time_and_drops_users_without_train():
    rows = [("early", f"i{k}", k) for k in range(8)] + [("late", "i0", 100), ("late", "i1", 101)]
    frame, info = run(raw_data(rows), split="global_temporal")
    assert frame["split"].tolist() == [TRAIN] * 8
    assert info["skipped"]["users_without_train_item"] == {"count": 1, "examples": ["late"]}
    assert info["skipped"]["interactions_of_users_without_train_item"]["count"] == 2
    assert info["prepared"].users["source_id"].tolist() == ["early"]
    assert info["split"] == {"strategy": "global_temporal", "seed": 2024, "ratios": [0.8, 0.1, 0.1]}


def test_predefined_keeps_split_and_requires_one():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1)]
    frame, info = run(raw_data(rows, split=[0, 2, 1, 1]), split="predefined")
    assert frame["split"].tolist() == [TRAIN, TEST, VALID]
    assert info["skipped"]["users_without_train_item"]["examples"] == ["u2"]
    with pytest.raises(ConfigError, match="ships none"):
        run(raw_data(rows), split="predefined")


def test_mmrec_random_follows_mmrecs_split_rule():
    # users of 4..30 interactions: MMRec's notebook gives n-2/1/1 under 10, else int(0.2 n) split half-down valid
    rows = [(f"u{n:02d}", f"i{i:02d}", i) for n in range(4, 31) for i in range(n)]
    inter, _ = run(raw_data(rows), split="mmrec_random", seed=5)
    for n in range(4, 31):
        labels = inter[inter["user_id"] == n - 4]["split"].value_counts()
        n_eval = int(n * 0.2)
        want = (n - 2, 1, 1) if n < 10 else (n - n_eval, n_eval // 2, n_eval - n_eval // 2)
        assert (labels.get(TRAIN, 0), labels.get(VALID, 0), labels.get(TEST, 0)) == want, n
    # random within each user, not by time: some user has a valid/test item earlier than one of its train items
    last_train = inter[inter["split"] == TRAIN].groupby("user_id")["timestamp"].max()
    first_eval = inter[inter["split"] != TRAIN].groupby("user_id")["timestamp"].min()
    assert (first_eval < last_train).any()
    again, _ = run(raw_data(rows), split="mmrec_random", seed=5)
    assert inter.equals(again)


@pytest.mark.parametrize("split", ["temporal_ratio", "random_ratio", "mmrec_random", "leave_last_out",
                                   "global_temporal"])
def test_cold_items_occur_only_in_valid_and_test(split):
    raw = random_raw(per_user=30)
    frame, info = run(raw, split=split, cold_items=0.25, seed=3)
    cold = cold_item_ids(info)
    num_items = len(info["prepared"].items)
    assert len(cold) == info["cold_items"]["count"] == round(0.25 * num_items)
    on_cold = frame[frame["item_id"].isin(cold)]
    assert len(on_cold) and not (on_cold["split"] == TRAIN).any()
    # every interaction of a cold item is kept (as valid or test) unless its user had no train item left
    dropped = info["skipped"]["interactions_of_users_without_train_item"]["count"]
    raw_on_cold = raw.interactions["item"].isin(info["prepared"].items.loc[cold, "source_id"]).sum()
    assert raw_on_cold - dropped <= len(on_cold) <= raw_on_cold
    # the warm items still get train interactions, and the valid:test proportion (1:1) holds on the cold items
    assert (frame.loc[~frame["item_id"].isin(cold), "split"] == TRAIN).mean() > 0.6
    valid, test = (int((on_cold["split"] == part).sum()) for part in (VALID, TEST))
    assert abs(valid - test) <= 0.15 * len(on_cold)
    assert info["cold_items"]["interactions"] == {"valid": valid, "test": test}
    assert info["cold_items"]["users"]["test"] == on_cold.loc[on_cold["split"] == TEST, "user_id"].nunique()


def test_cold_items_are_seeded():
    raw = random_raw(per_user=30)
    first, info = run(raw, split="random_ratio", cold_items=0.3, seed=3)
    again, info_again = run(raw, split="random_ratio", cold_items=0.3, seed=3)
    _, other = run(raw, split="random_ratio", cold_items=0.3, seed=4)
    assert first.equals(again) and info["cold_items"] == info_again["cold_items"]
    assert not np.array_equal(cold_item_ids(info), cold_item_ids(other))
    plain, plain_info = run(raw, split="random_ratio", seed=3)
    assert "cold_items" not in plain_info and len(cold_item_ids(plain_info)) == 0
    assert (plain["split"] == TRAIN).sum() > (first["split"] == TRAIN).sum()


def test_cold_items_go_to_valid_before_test_in_time_under_temporal_splits():
    frame, info = run(random_raw(per_user=30), split="temporal_ratio", cold_items=0.25)
    on_cold = frame[frame["item_id"].isin(cold_item_ids(info))]
    for _, group in on_cold.groupby("user_id"):
        valid, test = group[group.split == VALID], group[group.split == TEST]
        if len(valid) and len(test):
            assert valid["timestamp"].max() <= test["timestamp"].min()


def test_users_left_without_a_train_item_by_cold_items_are_dropped():
    raw = random_raw(per_user=30)
    _, before = run(raw, split="random_ratio", cold_items=0.25)
    cold_sources = before["prepared"].items.loc[cold_item_ids(before), "source_id"].tolist()
    only_cold = pd.concat([raw.interactions, pd.DataFrame([("zz", cold_sources[0], 1), ("zz", cold_sources[1], 2)],
                                                           columns=["user", "item", "timestamp"])])
    _, info = run(RawData(items=raw.items, interactions=only_cold), split="random_ratio", cold_items=0.25)
    assert cold_item_ids(info).tolist() == cold_item_ids(before).tolist()  # same items, same draw
    assert info["skipped"]["users_without_train_item"] == {"count": 1, "examples": ["zz"]}
    assert info["skipped"]["interactions_of_users_without_train_item"]["count"] == 2
    assert "zz" not in info["prepared"].users["source_id"].tolist()


@pytest.mark.parametrize("changes, message", [
    ({"cold_items": 1.0}, r"cold_items must be a share of items in \[0, 1\), got 1.0"),
    ({"cold_items": -0.1}, r"cold_items must be a share"),
    ({"cold_items": float("nan")}, r"cold_items must be a share"),
    ({"cold_items": 0.2, "split": "predefined"}, r"cold_items needs a split rmm makes, got split: predefined"),
])
def test_cold_items_config_is_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        DatasetConfig(**changes)
