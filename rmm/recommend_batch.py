"""``rmm recommend OUT --all``: every user's top-K written to parquet by a Ray Data batch job.

The only Ray import of ``rmm recommend``. User ids are cut into batches; a pool of actors each loads the run
once (:class:`rmm.recommend.TrainedRun`: model, dataset, a graph model's propagation) and ranks batch after
batch with the same code as the single-user path. Rows: ``user_id``, ``rank`` (1 = best), ``item_id``, ``score``;
join ``item_id`` with the dataset's ``items.parquet`` for titles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
from pyarrow.fs import FileType
from ray.data import ActorPoolStrategy

from rmm.cluster import init_ray
from rmm.config import OutputConfig, load_config
from rmm.data.schema import USERS_FILE
from rmm.errors import ConfigError, NotFoundError
from rmm.recommend import TrainedRun, pick_run
from rmm.runs import RESULTS_FILE, RUNS_DIR, run_dir
from rmm.storage import Storage, filesystem

log = logging.getLogger(__name__)

RECOMMENDATIONS_DIR = "recommendations"


def output_path(out_dir: str | Path, k: int) -> str:
    """``<out>/recommendations/top<K>.parquet`` (``out_dir`` a local path or URI): a parquet dataset directory
    (one file per written block); ``pandas.read_parquet`` reads it whole."""
    return Storage(str(out_dir)).where(f"{RECOMMENDATIONS_DIR}/top{k}.parquet")


class TopKBatch:
    """A Ray Data actor: loads the run once, then maps ``{"id": user ids}`` batches to ranked rows."""

    def __init__(self, out_dir: str, run_name: str, k: int) -> None:
        self.trained = TrainedRun(out_dir, run_name)
        self.k = k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = batch["id"].astype(np.int64)
        items, scores = self.trained.top_k(users, self.k)
        width = items.shape[1]
        keep = (items >= 0).ravel()  # users with fewer than k unseen items get fewer rows
        return {"user_id": np.repeat(users, width)[keep],
                "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), len(users))[keep],
                "item_id": items.ravel()[keep], "score": scores.ravel()[keep]}


def recommend_all(out_dir: str | Path, k: int = 10, run_name: str | None = None, *, batch_users: int = 1024,
                  num_actors: int = 1, cpus_per_actor: float = 0.5, ray_address: str | None = None) -> str:
    """Write every user's top-``k`` unseen items to :func:`output_path` (replacing an earlier file).

    Args:
        out_dir: output directory of a trained run (results.json, runs/, data/): a local path or a URI, where
            the parquet is then written too (the actors may run on any node).
        k: items per user.
        run_name: run_name from results.json; None picks the best (:func:`rmm.recommend.pick_run`, resolved once, here).
        batch_users: users per batch (one call of the model's ``scorer`` each).
        num_actors: size of the actor pool; each actor holds one copy of the model.
        cpus_per_actor: CPUs an actor reserves; keep it fractional on small machines, or the pool starves
            Ray Data's read tasks (2 actors of 1 CPU each on 2 cores never let a read task run).
        ray_address: join this cluster; default: the run config's ``ray`` section (a local Ray).

    Returns:
        The parquet dataset directory (a path or URI).
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    storage = Storage(str(out_dir))  # the driver pulls what it reads; each actor's TrainedRun pulls the rest
    storage.pull(RESULTS_FILE)
    out = storage.local.resolve()
    run = pick_run(out, run_name)
    storage.pull(f"{RUNS_DIR}/{run.run_name}/config.yaml")
    cfg = load_config(run_dir(out, run.run_name) / "config.yaml")
    dataset_dir = cfg.replace(output=OutputConfig(dir=str(out))).dataset_dir
    storage.pull(f"{storage.relative(dataset_dir)}/{USERS_FILE}")
    users_file = dataset_dir / USERS_FILE
    if not users_file.exists():
        raise NotFoundError(f"no dataset at {users_file.parent}: the run's data must sit under {out}/data")
    num_users = pq.ParquetFile(users_file).metadata.num_rows
    init_ray(cfg.ray, ray_address)
    location = storage.where()  # the URI, or the absolute path: what every actor can open
    path = output_path(location, k)
    fs, fs_path = filesystem(path)
    existing = fs.get_file_info(fs_path).type
    if existing == FileType.Directory:
        fs.delete_dir(fs_path)
    elif existing == FileType.File:
        fs.delete_file(fs_path)
    log.info("ranking %d users with run %s on %d actor(s)", num_users, run.run_name, num_actors)
    blocks = max(1, -(-num_users // batch_users))  # one block per batch, not Ray's default hundreds of tiny ones
    ranked = ray.data.range(num_users, override_num_blocks=blocks).map_batches(
        TopKBatch, fn_constructor_kwargs={"out_dir": location, "run_name": run.run_name, "k": k},
        batch_size=batch_users, batch_format="numpy", compute=ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor)
    ranked.write_parquet(path)
    return path
