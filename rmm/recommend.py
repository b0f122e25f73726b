"""``rmm recommend``: a trained run's top-K items for one user, with titles and, where an LVLM described the
items, their descriptions. Runs in a plain process (no Ray): the run directory holds everything needed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rmm.config import OutputConfig, load_config
from rmm.data.graph import TrainGraph
from rmm.data.schema import load_dataset
from rmm.features.store import load_feature
from rmm.models.base import build_model
from rmm.report.results import load_results, load_run_record, run_dir
from rmm.train.ray_trainer import MODEL_FILE

DESCRIPTIONS_FILE = "descriptions.parquet"


@dataclass(frozen=True)
class Recommendations:
    run_name: str
    label: str
    user_id: int
    history: pd.DataFrame  # item_id, title of the user's interactions (all splits)
    items: pd.DataFrame    # rank, item_id, score, title[, description]


def pick_run(out_dir: str | Path, run_name: str | None) -> dict:
    """The named run, or the run with the best test recall@20 in results.json."""
    runs = load_results(out_dir)
    if not runs:
        raise FileNotFoundError(f"no trained runs in {out_dir}/results.json; run `rmm train CONFIG` first")
    if run_name is None:
        return max(runs, key=lambda r: r["test"].get("recall@20", 0.0))
    for run in runs:
        if run["run_name"] == run_name:
            return run
    raise KeyError(f"no run {run_name!r} in {out_dir}/results.json; runs: {sorted(r['run_name'] for r in runs)}")


def recommend_for_user(out_dir: str | Path, user: int, k: int = 10, run_name: str | None = None) -> Recommendations:
    """Score every item for ``user`` with the run's best model, mask what the user already interacted with, and
    return the top ``k`` with their titles."""
    run = pick_run(out_dir, run_name)
    # A sweep's record points at its best trial, whose directory holds the weights.
    trained = load_run_record(out_dir, run.get("best_trial") or run["run_name"])
    weights_dir = run_dir(out_dir, trained["run_name"])
    cfg = load_config(weights_dir / "config.yaml")
    cfg = cfg.replace(output=dataclasses.replace(OutputConfig(), dir=str(out_dir)))
    data = load_dataset(cfg.dataset_dir)
    if not 0 <= user < data.num_users:
        raise KeyError(f"unknown user {user}: {cfg.dataset_dir} has user_id 0..{data.num_users - 1}")
    model_cfg = cfg.model[0]
    features = {name: torch.from_numpy(load_feature(cfg.feature_root, name)) for name in model_cfg.features}
    model = build_model(model_cfg, TrainGraph.from_dataset(data), features)
    model.load_state_dict(torch.load(weights_dir / MODEL_FILE, weights_only=True))
    model.eval()
    seen = data.interactions.loc[data.interactions["user_id"] == user, "item_id"].to_numpy()
    with torch.inference_mode():
        scores = model.score_users(torch.tensor([user]))[0]
        scores[torch.tensor(seen)] = -torch.inf
    top = torch.topk(scores, min(k, data.num_items - len(seen)))
    items = data.items.set_index("item_id")
    chosen = pd.DataFrame({"rank": range(1, len(top.indices) + 1), "item_id": top.indices.numpy(),
                           "score": top.values.numpy()})
    chosen["title"] = items.loc[chosen["item_id"], "title"].to_numpy()
    descriptions = _descriptions(cfg.feature_root)
    if descriptions is not None:
        chosen["description"] = chosen["item_id"].map(descriptions).fillna("")
    history = pd.DataFrame({"item_id": seen, "title": items.loc[seen, "title"].to_numpy()})
    return Recommendations(run["run_name"], trained.get("label", trained["model"]), user, history, chosen)


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
    for row in recs.items.itertuples():
        lines.append(f"{row.rank:>3}. [{row.item_id}] {row.title}  (score {row.score:.3f})")
        if getattr(row, "description", ""):
            lines.append(f"       {row.description}")
    return "\n".join(lines)
