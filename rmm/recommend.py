"""``rmm recommend``: a trained run's top-K items for one user, with titles and, where an LVLM described the
items, their descriptions; ``--explain`` names the user's history items closest to each recommendation.

Runs in a plain process (no Ray): the run directory holds everything needed. :class:`TrainedRun` loads a run
once and ranks any batch of users; the single-user path here and the Ray Data batch job of
:mod:`rmm.recommend_batch` (``rmm recommend OUT --all``, the only Ray import of the feature, which the command
line calls directly) share it, so both give the same top-K.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from rmm.config import Config, OutputConfig, load_config
from rmm.data.graph import TrainGraph, unit_rows
from rmm.data.schema import Dataset, load_dataset
from rmm.errors import ConfigError, NotFoundError, UnknownNameError
from rmm.features.store import DESCRIPTIONS_FILE, load_feature, model_input_files
from rmm.models.base import Recommender, build_model
from rmm.report.results import best_by_validation, validation_metric
from rmm.report.tables import report_metrics
from rmm.runs import MODEL_FILE, RESULTS_FILE, RUNS_DIR, RunRecord, load_results, load_run_record, run_dir
from rmm.storage import Storage

#: How many history items ``--explain`` names per recommendation.
EXPLAIN_TOP = 3


@dataclass(frozen=True)
class Recommendations:
    run_name: str
    label: str
    user_id: int
    history: pd.DataFrame  # item_id, title of the user's interactions (all splits)
    items: pd.DataFrame    # rank, item_id, score, title[, description][, because]
    #: What ``because`` compares in (``--explain`` only), e.g. "the model's item embeddings".
    explained_by: str | None = None


def pick_run(out_dir: str | Path, run_name: str | None) -> RunRecord:
    """The named run, or the run of results.json with the best *validation* recall@K (K = 20, or the runs' own
    cut-off, as the report's headline; the earlier run wins a tie), chosen as the report chooses its cells."""
    runs = load_results(out_dir)
    if not runs:
        raise NotFoundError(f"no trained runs in {out_dir}/results.json; run `rmm train CONFIG` first")
    if run_name is None:
        best = best_by_validation(runs, validation_metric(runs, report_metrics(runs)[0][0]))
        assert best is not None  # runs is not empty
        return best
    for run in runs:
        if run.run_name == run_name:
            return run
    raise UnknownNameError(f"no run {run_name!r} in {out_dir}/results.json; runs: {sorted(r.run_name for r in runs)}")


class TrainedRun:
    """A run's model, dataset and features, loaded once; ranks batches of users with their seen items masked.

    Args:
        out_dir: the output directory holding ``results.json`` and ``runs/``: a local path, or a URI from which
            this node's mirror (:mod:`rmm.storage`) pulls just what a recommendation reads: the run's record and
            weights, the dataset's tables (no images), the model's feature matrices and LVLM descriptions.
        run_name: a run_name from results.json; None picks the best (:func:`pick_run`).
    """

    def __init__(self, out_dir: str | Path, run_name: str | None = None) -> None:
        storage = Storage(str(out_dir))
        storage.pull(RESULTS_FILE)
        out_dir = storage.local
        run = pick_run(out_dir, run_name)
        storage.pull(f"{RUNS_DIR}/{run.run_name}")
        trained = load_run_record(out_dir, run.run_name)
        weights_dir = run_dir(out_dir, run.run_name)
        cfg = load_config(weights_dir / "config.yaml")
        self.cfg: Config = cfg.replace(output=OutputConfig(dir=str(out_dir)))
        model_cfg = self.cfg.model[0]
        dataset, features = storage.relative(self.cfg.dataset_dir), storage.relative(self.cfg.feature_root)
        storage.pull(*model_input_files(dataset, features, model_cfg.features))
        storage.pull(features, include=f"*/{DESCRIPTIONS_FILE}")
        self.run_name: str = run.run_name
        self.label: str = trained.label
        self.data: Dataset = load_dataset(self.cfg.dataset_dir)
        self.features: dict[str, Tensor] = {
            name: torch.from_numpy(load_feature(self.cfg.feature_root, name)) for name in model_cfg.features}
        model = build_model(model_cfg, TrainGraph.from_dataset(self.data), self.features)
        model.load_state_dict(torch.load(weights_dir / MODEL_FILE, weights_only=True))
        self.model: Recommender[Any] = model.eval()
        with torch.inference_mode():
            self._score = model.scorer()  # propagates a graph model once, for every batch after
        frame = self.data.interactions[["user_id", "item_id"]].drop_duplicates().sort_values(["user_id", "item_id"])
        self._seen_items = frame["item_id"].to_numpy()
        self._seen_start = np.searchsorted(frame["user_id"].to_numpy(), np.arange(self.data.num_users + 1))

    @property
    def num_users(self) -> int:
        return self.data.num_users

    def seen(self, user: int) -> np.ndarray:
        """Item ids the user interacted with, in any split (sorted)."""
        return self._seen_items[self._seen_start[user]:self._seen_start[user + 1]]

    def check_user(self, user: int) -> None:
        if not 0 <= user < self.num_users:
            raise UnknownNameError(f"unknown user {user}: {self.cfg.dataset_dir} has user_id 0..{self.num_users - 1}")

    def top_k(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each user's ``k`` best-scored unseen items.

        Returns:
            ``(item_ids, scores)``, shapes (B, k) int64 and float32, best first; a user with fewer than ``k``
            unseen items gets ``-1`` items with score ``-inf`` in the remaining slots.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        users = np.asarray(users, dtype=np.int64)
        k = min(k, self.data.num_items)
        with torch.inference_mode():
            scores = self._score(torch.tensor(users)).float()  # (B, num_items)
            counts = self._seen_start[users + 1] - self._seen_start[users]
            rows = np.repeat(np.arange(len(users)), counts)
            cols = np.concatenate([self.seen(u) for u in users]) if len(users) else np.empty(0, np.int64)
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
            top = torch.topk(scores, k, dim=1)
        items, values = top.indices.numpy(), top.values.numpy()
        return np.where(np.isfinite(values), items, -1), values

    def item_vectors(self) -> tuple[Tensor, str]:
        """The item space ``--explain`` compares in: the model's item embeddings when it exposes them
        (``embeddings()``, every :class:`~rmm.models.base.EmbeddingRecommender`), else its first content
        feature. Returns the ``(num_items, D)`` matrix and a phrase naming it."""
        return explain_space(self.model, self.features)

    def explain(self, user: int, items: np.ndarray, top: int = EXPLAIN_TOP) -> tuple[list[list[dict[str, Any]]], str]:
        """For each of ``items``, the user's ``top`` history items closest to it by cosine similarity."""
        vectors, space = self.item_vectors()
        history = self.seen(user)
        titles = self.data.items["title"].to_numpy()
        unit = unit_rows(vectors.detach().float())
        sims = unit[torch.tensor(np.asarray(items, dtype=np.int64))] @ unit[torch.tensor(history)].T  # (n, |hist|)
        best = torch.topk(sims, min(top, len(history)), dim=1)  # (len(items), top)
        reasons = [[{"item_id": int(history[j]), "title": str(titles[history[j]]), "similarity": float(s)}
                    for j, s in zip(idx.tolist(), val.tolist(), strict=True)]
                   for idx, val in zip(best.indices, best.values, strict=True)]
        return reasons, space


def explain_space(model: torch.nn.Module, features: Mapping[str, Tensor]) -> tuple[Tensor, str]:
    """See :meth:`TrainedRun.item_vectors`."""
    embeddings = getattr(model, "embeddings", None)
    if callable(embeddings):
        with torch.inference_mode():
            return embeddings()[1], "the model's item embeddings"
    if features:
        name = next(iter(features))
        return features[name], f"the content feature {name!r}"
    raise ConfigError(f"cannot explain {type(model).__name__}: it exposes no item embeddings and uses no content "
                      f"feature; train a model with embeddings() or features")


def recommend_for_user(out_dir: str | Path, user: int, k: int = 10, run_name: str | None = None, *,
                       explain: bool = False, trained: TrainedRun | None = None) -> Recommendations:
    """Score every item for ``user`` with the run's best model, mask what the user already interacted with, and
    return the top ``k`` with their titles (and, with ``explain``, the closest history items of each).

    Args:
        trained: an already loaded run (``out_dir`` and ``run_name`` are then ignored).
    """
    trained = trained or TrainedRun(out_dir, run_name)
    trained.check_user(user)
    ids, scores = trained.top_k(np.array([user]), k)
    keep = ids[0] >= 0
    items = trained.data.items.set_index("item_id")
    chosen = pd.DataFrame({"rank": np.arange(1, keep.sum() + 1), "item_id": ids[0][keep],
                           "score": scores[0][keep]})
    chosen["title"] = items.loc[chosen["item_id"], "title"].to_numpy()
    descriptions = _descriptions(trained.cfg.feature_root)
    if descriptions is not None:
        chosen["description"] = chosen["item_id"].map(descriptions).fillna("")
    space = None
    if explain:
        chosen["because"], space = trained.explain(user, chosen["item_id"].to_numpy())
    seen = trained.seen(user)
    history = pd.DataFrame({"item_id": seen, "title": items.loc[seen, "title"].to_numpy()})
    return Recommendations(trained.run_name, trained.label, user, history, chosen, space)


def _descriptions(feature_root: Path) -> pd.Series | None:
    """item_id -> LVLM description text, from the first described feature in the store (None if none)."""
    for path in sorted(Path(feature_root).glob(f"*/{DESCRIPTIONS_FILE}")):
        frame = pd.read_parquet(path, columns=["item_id", "text"])
        return frame.set_index("item_id")["text"]
    return None


def format_recommendations(recs: Recommendations) -> str:
    lines = [f"user {recs.user_id} — top {len(recs.items)} by {recs.label} (run {recs.run_name})",
             f"history ({len(recs.history)} items): " + "; ".join(recs.history["title"].head(5))
             + (" …" if len(recs.history) > 5 else "")]
    if recs.explained_by:
        lines.append(f"(like: the user's history items closest to it, cosine similarity of {recs.explained_by})")
    for row in recs.items.itertuples():
        lines.append(f"{row.rank:>3}. [{row.item_id}] {row.title}  (score {row.score:.3f})")
        if getattr(row, "description", ""):
            lines.append(f"       {row.description}")
        if getattr(row, "because", None):
            lines.append("       like: " + "; ".join(f"[{h['item_id']}] {h['title']} ({h['similarity']:.2f})"
                                                     for h in row.because))
    return "\n".join(lines)


def recommend_command(args: argparse.Namespace) -> int:
    """``rmm recommend --user ID``: one user's top-K, printed (``--all`` runs
    :func:`rmm.recommend_batch.recommend_all`)."""
    if args.user is None:
        raise ConfigError("rmm recommend needs --user ID (one user) or --all (every user, to parquet)")
    recs = recommend_for_user(args.out_dir, args.user, args.k, args.run, explain=getattr(args, "explain", False))
    print(format_recommendations(recs))
    return 0
