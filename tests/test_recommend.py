"""``rmm recommend``: titles for one user, seen items excluded, ``--explain`` names history items, and the Ray
Data ``--all`` job writes every user's top-K, equal to the single-user path."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rmm.config import (
    Config,
    EvalConfig,
    ModelConfig,
    OutputConfig,
    ScalingConfig,
    TrainConfig,
    TuneConfig,
    save_snapshot,
)
from rmm.data.schema import ITEMS_FILE, TEST, TRAIN, VALID, load_dataset, sha256_file, write_dataset
from rmm.features.store import load_feature, write_feature
from rmm.recommend import (
    TrainedRun,
    explain_space,
    format_recommendations,
    pick_run,
    recommend_command,
    recommend_for_user,
)
from rmm.runs import MODEL_FILE, PER_USER_FILE, RunRecord, load_results, record_runs, run_dir, write_run_record
from rmm.train.loop import fit
from tests.report.helpers import record as bare_record

NUM_USERS, NUM_ITEMS, GROUPS, PER_USER = 40, 40, 4, 6
RUN = "train-00-vbpr-image_tiny"


def write_titled_dataset(root: Path) -> Path:
    """User u likes items of group ``u % 4``; titles say the group: ``g2 item 10``."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(NUM_USERS):
        chosen = rng.choice(np.arange(user % GROUPS, NUM_ITEMS, GROUPS), PER_USER, replace=False)
        splits = [TRAIN] * (PER_USER - 2) + [VALID, TEST]
        rows += [(user, int(item), t, split) for t, (item, split) in enumerate(zip(chosen, splits, strict=True))]
    items = pd.DataFrame({"item_id": np.arange(NUM_ITEMS), "source_id": [f"i{i}" for i in range(NUM_ITEMS)],
                          "title": [f"g{i % GROUPS} item {i}" for i in range(NUM_ITEMS)], "text": "",
                          "image_path": None})
    users = pd.DataFrame({"user_id": np.arange(NUM_USERS), "source_id": [f"u{u}" for u in range(NUM_USERS)]})
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])
    return write_dataset(root, items, interactions, users, {"name": "titled", "source": "test"})


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run laid out as ``train_model`` writes it: fit in this process, then run.json, per-user metrics,
    weights and config in ``runs/<run>/``, the record in results.json."""
    out = tmp_path_factory.mktemp("recommend")
    model_cfg = ModelConfig("vbpr", features=("image_tiny",))
    cfg = Config(output=OutputConfig(dir=str(out)), model=(model_cfg,),
                 train=TrainConfig(epochs=4, batch_size=64, learning_rate=0.05,
                                   eval=EvalConfig(topk=(5, 10), metric="recall@10"),
                                   scaling=ScalingConfig(num_workers=1)))
    cfg = cfg.replace(dataset=dataclasses.replace(cfg.dataset, name="titled"))
    data = load_dataset(write_titled_dataset(cfg.dataset_dir))
    groups = np.eye(GROUPS)[np.arange(NUM_ITEMS) % GROUPS]
    write_feature(cfg.feature_root, "image_tiny", groups + np.random.default_rng(1).normal(0, 0.1, groups.shape),
                  {"kind": "test", "items_sha256": sha256_file(cfg.dataset_dir / ITEMS_FILE)})
    features = {"image_tiny": torch.from_numpy(load_feature(cfg.feature_root, "image_tiny"))}
    fitted = fit(model_cfg, cfg.train, data, features)
    directory = run_dir(out, RUN)
    directory.mkdir(parents=True)
    record = RunRecord(model="vbpr", label=model_cfg.label, features=("image_tiny",), best_epoch=fitted.best_epoch,
                       valid=fitted.valid, test=fitted.test, train_seconds=1.0, history=tuple(fitted.history),
                       run_name=RUN, run_dir=str(directory))
    fitted.test_per_user.to_parquet(directory / PER_USER_FILE, index=False)
    torch.save(fitted.best_state, directory / MODEL_FILE)
    write_run_record(directory, record)
    save_snapshot(cfg.replace(tune=TuneConfig()), directory)
    record_runs(out, [record])
    return out


def test_cli_prints_titles_and_excludes_seen_items(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rmm.cli import main

    assert main(["recommend", str(out), "--user", "5", "-k", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"user 5 — top 4 by vbpr[image_tiny] (run {RUN})" in printed
    recs = recommend_for_user(out, 5, 4)
    seen = set(recs.history["item_id"])
    assert len(seen) == PER_USER and not seen & set(recs.items["item_id"])
    for row in recs.items.itertuples():
        assert f"{row.rank:>3}. [{row.item_id}] {row.title}" in printed
        assert row.title == f"g{row.item_id % GROUPS} item {row.item_id}"
    assert list(recs.items["score"]) == sorted(recs.items["score"], reverse=True)
    # The planted taste was learnt: the best unseen item is of the user's group.
    assert recs.items["item_id"].iloc[0] % GROUPS == 5 % GROUPS


def test_default_run_is_the_best_on_validation(tmp_path: Path) -> None:
    record_runs(tmp_path, [bare_record("train-00-lightgcn", "lightgcn", valid=0.2, test=0.6),
                           bare_record("train-01-vbpr", "vbpr", ["image"], valid=0.4, test=0.3),
                           bare_record("train-02-bm3", "bm3", ["image"], valid=0.4, test=0.5)])  # tie: earlier wins
    assert pick_run(tmp_path, None).run_name == "train-01-vbpr"
    assert pick_run(tmp_path, "train-00-lightgcn").run_name == "train-00-lightgcn"
    with pytest.raises(KeyError, match="no run 'nope'"):
        pick_run(tmp_path, "nope")


def test_cli_default_run_is_the_best_on_validation(out: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A second copy of the trained run that validates better but tests worse is what ``rmm recommend``
    uses without ``--run``."""
    from rmm.cli import main

    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.copytree(run_dir(copy, RUN), run_dir(copy, "train-01-copy"))
    trained = load_results(copy)[0]
    better_on_test = dataclasses.replace(trained, valid={**trained.valid, "recall@10": 0.2},
                                         test={**trained.test, "recall@10": 0.9})
    better_on_valid = dataclasses.replace(trained, run_name="train-01-copy", valid={**trained.valid, "recall@10": 0.5},
                                          test={**trained.test, "recall@10": 0.1})
    record_runs(copy, [better_on_test, better_on_valid])
    assert main(["recommend", str(copy), "--user", "5", "-k", "2"]) == 0
    assert "(run train-01-copy)" in capsys.readouterr().out


def test_explain_names_the_closest_history_items(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(out_dir=str(out), user=6, k=3, run=None, explain=True, all=False)
    assert recommend_command(args) == 0
    printed = capsys.readouterr().out
    assert "the model's item embeddings" in printed
    trained = TrainedRun(out)
    recs = recommend_for_user(out, 6, 3, explain=True, trained=trained)
    history = set(trained.seen(6))
    vectors, space = trained.item_vectors()
    unit = torch.nn.functional.normalize(vectors.float(), dim=1)
    for row in recs.items.itertuples():
        names = [h["item_id"] for h in row.because]
        assert len(names) == 3 and set(names) <= history
        sims = (unit[list(history)] @ unit[row.item_id]).tolist()
        assert [h["similarity"] for h in row.because] == pytest.approx(sorted(sims, reverse=True)[:3], abs=1e-5)
        assert "like: " + "; ".join(f"[{h['item_id']}] {h['title']}" for h in row.because[:1]) in printed
    assert "like:" not in format_recommendations(recommend_for_user(out, 6, 3, trained=trained))


def test_explain_falls_back_to_the_content_feature() -> None:
    feature = torch.randn(5, 3)
    vectors, space = explain_space(torch.nn.Linear(2, 2), {"image_tiny": feature})
    assert vectors is feature and "image_tiny" in space
    with pytest.raises(ValueError, match="no item embeddings"):
        explain_space(torch.nn.Linear(2, 2), {})


def test_unknown_user_is_one_line(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rmm.cli import main

    assert main(["recommend", str(out), "--user", str(NUM_USERS), "-k", "3"]) == 2
    assert f"unknown user {NUM_USERS}" in capsys.readouterr().err


@pytest.mark.ray
def test_all_users_batch_job_matches_single_user_path(ray_cluster, out: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from rmm.cli import main
    from rmm.recommend_batch import output_path, recommend_all

    k = 5
    assert main(["recommend", str(out), "--all", "-k", str(k)]) == 0
    path = output_path(out, k)
    assert str(path) in capsys.readouterr().out
    table = pd.read_parquet(path).sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert len(table) == NUM_USERS * k and table.groupby("user_id").size().eq(k).all()
    assert list(table.columns) == ["user_id", "rank", "item_id", "score"]
    trained = TrainedRun(out)
    for user in range(NUM_USERS):
        rows = table[table["user_id"] == user]
        single = recommend_for_user(out, user, k, trained=trained).items
        assert list(rows["item_id"]) == list(single["item_id"]), user
        assert rows["score"].to_numpy() == pytest.approx(single["score"].to_numpy(), rel=1e-5)
        assert not set(rows["item_id"]) & set(trained.seen(user))
    # A rerun replaces the file instead of adding parts to it.
    assert recommend_all(out, k, batch_users=16) == path
    assert len(pd.read_parquet(path)) == NUM_USERS * k
