"""Multi-node Ray on one machine: a head and two worker nodes (``ray.cluster_utils.Cluster``, all on 127.0.0.1),
joined through rmm's ``ray.address`` as a user joins a cluster. Extraction runs its actors on both worker nodes; a
2-worker training across the nodes ends with the metrics of the same training on one node; losing a worker node
mid-training resumes from the last checkpoint on a replacement node and ends exactly like the uninterrupted run.

The head has no CPU (it hosts the driver and Train's controller, which need none), so all work lands on the worker
nodes, and a Train worker of ``WORKER_CPUS`` CPUs fills a whole node: two of them can only run on two nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmm.config import (
    Config,
    EvalConfig,
    FaultToleranceConfig,
    FeaturesConfig,
    ImageStatsConfig,
    ModelConfig,
    OutputConfig,
    RayConfig,
    ScalingConfig,
    TrainConfig,
)
from rmm.data.schema import load_dataset
from rmm.features.encoders import IMAGE_STATS_DIM
from rmm.features.store import load_feature, read_manifest, write_feature
from rmm.storage import RAY_RESULTS_DIR
from rmm.train.run import train_model
from rmm.train.worker import last_checkpoint_epoch
from tests.conftest import start_session_ray
from tests.features.helpers import make_dataset
from tests.train.planted import write_planted_dataset

pytestmark = pytest.mark.ray

LOOPBACK = "127.0.0.1"
#: Logical CPUs of each worker node: one extraction actor (0.5) beside an image-decoding task (1), or one whole
#: Train worker.
WORKER_CPUS = 2
#: BM3 draws dropout masks from torch's global generator: an exact resume must restore every rank's stream.
MODEL = ModelConfig("bm3", features=("image_random",))
TRAIN = TrainConfig(epochs=10, batch_size=64, learning_rate=0.01,
                    eval=EvalConfig(topk=(5, 10), metric="recall@10", patience=10),
                    scaling=ScalingConfig(num_workers=2, cpus_per_worker=WORKER_CPUS),
                    fault_tolerance=FaultToleranceConfig(checkpoint_every=1))
#: The worker node is removed once the checkpoint of this epoch is written, with epochs left to train.
LOSE_NODE_AFTER_EPOCH = 2
#: Wall-clock limits, about three times what a heavily loaded 2-core machine took, so that a hang fails.
EXTRACT_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 360
#: Names (parts of actor class names) of Ray Train's workers and of the Ray Data actors hosting rmm's extractors.
TRAIN_WORKER = "RayTrainWorker"
EXTRACTOR_ACTOR = "ExtractorGroup"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and two worker nodes, shared by the module. The driver joins one Ray at a time, so the session's
    local Ray (when an earlier module started it) stops meanwhile and starts again after the module."""
    import ray
    from ray.cluster_utils import Cluster

    session_ray = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster()
    try:
        _add_node(cluster, num_cpus=0)
        for _ in range(2):
            _add_node(cluster, num_cpus=WORKER_CPUS)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if session_ray:
            start_session_ray()


def _add_node(cluster: Any, num_cpus: int) -> Any:
    """Start a node on loopback (the first one is the head), with no dashboard and no idle workers started ahead
    of use (as rmm's local Ray: the tests run on 2 cores). Its workers compute on one thread: Ray gives a worker
    as many threads as CPUs, and a matrix product's last bits depend on the thread count, which would make runs
    whose workers hold different CPU counts differ for that reason alone."""
    with pytest.MonkeyPatch.context() as env:  # inherited by the node's processes
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("RAY_prestart_worker_first_driver", "0")
        return cluster.add_node(num_cpus=num_cpus, node_ip_address=LOOPBACK, include_dashboard=False)


def _worker_node_ids(cluster: Any) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def _actor_nodes(cluster: Any) -> dict[str, tuple[str, str]]:
    """Every actor the cluster has run, alive or dead: actor id -> (class name, node id)."""
    return {actor_id: (info["ActorClassName"], info["Address"]["NodeID"])
            for actor_id, info in cluster.global_state.actor_table(None).items()}


def _nodes_of_new_actors(cluster: Any, before: dict[str, tuple[str, str]], name: str) -> set[str]:
    """The nodes that ran actors with ``name`` in their class name, started since ``before`` was taken."""
    return {node for actor_id, (class_name, node) in _actor_nodes(cluster).items()
            if actor_id not in before and name in class_name}


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the test's (main) thread after ``seconds``; the module's teardown then stops the
    cluster and with it whatever still runs there."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"not done after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _train_config(out: Path, address: str) -> Config:
    """The planted dataset and a random 8-d feature under ``out``: the same content, so the same run identity,
    in every output dir."""
    cfg = Config(output=OutputConfig(dir=str(out)), train=TRAIN, ray=RayConfig(address=address))
    dataset = load_dataset(write_planted_dataset(cfg.dataset_dir, num_users=400, num_items=100, per_user=12))
    matrix = np.random.default_rng(0).normal(size=(dataset.num_items, 8))
    write_feature(cfg.feature_root, "image_random", matrix, {"kind": "test", "items_sha256": dataset.items_sha256})
    return cfg


@pytest.fixture(scope="module")
def across_nodes(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], set[str]]:
    """The reference run: two Train workers of a whole node each, and the nodes they ran on."""
    cfg = _train_config(tmp_path_factory.mktemp("across"), cluster.address)
    before = _actor_nodes(cluster)
    with _deadline(TRAIN_TIMEOUT_S):
        record = train_model(cfg, MODEL)
    return record, _nodes_of_new_actors(cluster, before, TRAIN_WORKER)


def _assert_same_run(record: dict[str, Any], reference: dict[str, Any]) -> None:
    """Bit-for-bit the same training: every epoch's loss and valid metrics, the best epoch and the test metrics."""
    keys = ("epoch", "loss", "valid/recall@10", "valid/ndcg@10", "valid/map@10")
    assert [[h[k] for k in keys] for h in record.history] == [[h[k] for k in keys] for h in reference.history]
    assert record.best_epoch == reference.best_epoch and record.valid == reference.valid
    assert record.test == reference.test


def test_extraction_runs_its_actors_on_both_worker_nodes(cluster: Any, tmp_path: Path) -> None:
    stats = ImageStatsConfig(name="image_stats", max_image_size=32, batch_size=4, bucket_window=1, concurrency=2)
    cfg = Config(features=FeaturesConfig(extractors=(stats,)), output=OutputConfig(dir=str(tmp_path)),
                 ray=RayConfig(address=cluster.address))
    make_dataset(cfg.dataset_dir, num_items=16)
    before = _actor_nodes(cluster)
    with _deadline(EXTRACT_TIMEOUT_S):
        from rmm.features.pipeline import extract_features

        extract_features(cfg)

    matrix = load_feature(cfg.feature_root, "image_stats")
    assert matrix.shape == (16, IMAGE_STATS_DIM) and np.isfinite(matrix).all()
    assert read_manifest(cfg.feature_root, "image_stats")["counts"] == {"done": 14, "missing": 2, "failed": 0}
    assert _nodes_of_new_actors(cluster, before, EXTRACTOR_ACTOR) == _worker_node_ids(cluster), _actor_nodes(cluster)


def test_two_workers_on_two_nodes_end_like_two_workers_on_one(cluster: Any, across_nodes, tmp_path: Path) -> None:
    reference, reference_nodes = across_nodes
    assert reference_nodes == _worker_node_ids(cluster)  # one worker on each worker node
    cfg = _train_config(tmp_path, cluster.address)
    before = _actor_nodes(cluster)
    with _deadline(TRAIN_TIMEOUT_S):  # workers of half a node each: Train packs both onto one node
        one_node = train_model(cfg, MODEL, train_cfg=dataclasses.replace(
            TRAIN, scaling=dataclasses.replace(TRAIN.scaling, cpus_per_worker=WORKER_CPUS / 2)))
    assert len(_nodes_of_new_actors(cluster, before, TRAIN_WORKER)) == 1
    _assert_same_run(one_node, reference)


def test_losing_a_worker_node_resumes_from_the_checkpoint_and_ends_like_the_uninterrupted_run(
        cluster: Any, across_nodes, tmp_path: Path) -> None:
    reference, _ = across_nodes
    cfg = _train_config(tmp_path, cluster.address)  # a fresh output dir: no checkpoint of another run in it
    before = _actor_nodes(cluster)
    pool = ThreadPoolExecutor(max_workers=1)  # the run trains in a thread while this one takes a node away
    try:
        run = pool.submit(train_model, cfg, MODEL, train_cfg=dataclasses.replace(
            TRAIN, fault_tolerance=dataclasses.replace(TRAIN.fault_tolerance, max_failures=1)))
        lost_after = _wait_for_checkpoint(cfg.out_dir / RAY_RESULTS_DIR, LOSE_NODE_AFTER_EPOCH, run)
        lost = next(iter(cluster.worker_nodes))  # each worker node hosts one of the run's workers
        cluster.remove_node(lost, allow_graceful=False)  # killed, as a crashed machine
        replacement = _add_node(cluster, num_cpus=WORKER_CPUS)  # two workers fit again
        survived = run.result(timeout=TRAIN_TIMEOUT_S)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)

    assert lost_after < TRAIN.epochs, "the run ended before the node was lost"
    assert {lost.node_id, replacement.node_id} <= _nodes_of_new_actors(cluster, before, TRAIN_WORKER)
    # Resumed from a checkpoint of the first attempt, not from scratch: the one seen before the kill (or its
    # predecessor, when the node died before Ray Train had registered it) or a later one, since the surviving
    # worker and Ray Train's controller can still finish an epoch's report while the killed raylet is declared dead.
    assert lost_after - 1 <= survived.resumed_after_epoch < TRAIN.epochs, survived.resumed_after_epoch
    _assert_same_run(survived, reference)


def _wait_for_checkpoint(ray_dir: Path, epoch: int, run: Future) -> int:
    """Poll ``ray_dir`` until it holds the checkpoint of ``epoch`` or a later one; return that epoch."""
    stop = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < stop:
        if run.done():
            run.result()  # raises the run's error, if it failed
            pytest.fail(f"the run finished before its checkpoint of epoch {epoch} was seen")
        try:
            found = last_checkpoint_epoch(str(ray_dir))
        except (OSError, ValueError):  # a checkpoint being copied in, or the older one being deleted
            found = None
        if found is not None and found >= epoch:
            return found
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of epoch {epoch} in {ray_dir} after {TRAIN_TIMEOUT_S} s")
