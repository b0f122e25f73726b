"""rmm.cluster on the session's local Ray (tests/conftest.py): it listens on loopback only, its workers import
the driver's rmm, a driver joining it leaves token auth as it found it, another local Ray starts beside it
(never joins it), a training run on it starts no helper actor that rmm does not use, and zero-CPU tasks beside
an actor pool that holds every CPU keep their worker."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import rmm

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback seen from an IPv6 socket
    return (mapped or address).is_loopback


def test_local_ray_listens_on_loopback_only(ray_cluster) -> None:
    import psutil

    @ray_cluster.remote
    def ping() -> int:
        return os.getpid()

    ray_cluster.get(ping.remote())  # a worker (which runs a server of its own) is up
    this = psutil.Process()
    ours = {this.pid: this.name()}  # the driver, then the Ray processes it started (and their workers)
    for process in this.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ray" in " ".join([process.name(), *process.cmdline()]).lower():
                ours[process.pid] = process.name()
    listening = [(conn.laddr.ip, conn.laddr.port, ours[conn.pid]) for conn in psutil.net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN and conn.pid in ours]
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names, f"the session's Ray servers were not found among {listening}"
    exposed = [entry for entry in listening if not _is_loopback(entry[0])]
    assert not exposed, f"Ray processes listening beyond loopback: {exposed}"


def test_workers_import_the_drivers_rmm(ray_cluster, tmp_path: Path) -> None:
    """A second rmm checkout put in front of a worker's sys.path (what Ray does with the driver's working
    directory when a worker runs its first task) does not replace the rmm the driver imported."""
    checkout = tmp_path / "other-checkout"
    (checkout / "rmm").mkdir(parents=True)
    (checkout / "rmm" / "__init__.py").write_text("OTHER_CHECKOUT = True\n")

    def imported_rmm(folder: str) -> str:
        sys.path.insert(0, folder)
        import rmm as worker_rmm

        return worker_rmm.__file__

    # a runtime_env of its own gives the task a new worker, which no earlier test has imported rmm into
    fresh = {"env_vars": {"RMM_TEST_FRESH_WORKER": uuid.uuid4().hex}}
    task = ray_cluster.remote(imported_rmm).options(runtime_env=fresh)
    assert ray_cluster.get(task.remote(str(checkout))) == rmm.__file__


def test_joining_leaves_token_auth_alone(ray_cluster) -> None:
    """init_ray joining an address (here the session's Ray, on loopback) sets no RAY_AUTH_MODE of its own."""
    address = ray_cluster.get_runtime_context().gcs_address
    script = ("import os, sys, ray; from rmm.cluster import init_ray; from rmm.config import RayConfig; "
              "init_ray(RayConfig(), sys.argv[1]); "
              "print('joined', ray.get(ray.remote(lambda: 7).remote()), os.environ.get('RAY_AUTH_MODE'))")
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", script, address], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "joined 7 None" in done.stdout, done.stdout[-2000:]


def test_local_ray_is_its_own_beside_another(ray_cluster) -> None:
    """With another Ray on the machine (the session's), even named by RAY_ADDRESS, init_ray without an address
    starts a Ray of its own and prints no traceback."""
    session = ray_cluster.get_runtime_context().gcs_address
    script = ("import ray; from rmm.cluster import init_ray; from rmm.config import RayConfig; "
              "init_ray(RayConfig(num_cpus=1)); context = ray.get_runtime_context(); "
              "print('own', context.gcs_address, ray.get(ray.remote(lambda: 7).remote()))")
    env = {**os.environ, "RAY_ADDRESS": session}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    words = done.stdout.split()
    assert words[words.index("own") + 1] != session and words[words.index("own") + 2] == "7", done.stdout
    assert "Traceback" not in done.stderr and "multiple active Ray" not in done.stderr, done.stderr[-3000:]


def test_training_on_a_local_ray_starts_no_idle_helper_actors(ray_cluster, tmp_path: Path) -> None:
    """A Ray Train run on a local Ray starts neither Ray Train's PlacementGroupCleaner (whose state queries
    need a dashboard and fail among several Ray instances) nor a dataset manager (rmm passes no datasets)."""
    from ray._private.state import actors

    from rmm.config import Config, EvalConfig, ModelConfig, OutputConfig, ScalingConfig, TrainConfig
    from rmm.train.run import train_model
    from tests.train.planted import write_planted_dataset

    cfg = Config(output=OutputConfig(dir=str(tmp_path / "out")),
                 train=TrainConfig(epochs=1, batch_size=64, eval=EvalConfig(topk=(5,), metric="recall@5"),
                                   scaling=ScalingConfig(num_workers=1, cpus_per_worker=0.5, launcher="ray_train")))
    write_planted_dataset(cfg.dataset_dir)
    before = set(actors())
    train_model(cfg, ModelConfig("bprmf"))
    started = {info["ActorClassName"].rsplit(".", 1)[-1] for actor_id, info in actors().items()
               if actor_id not in before}
    assert "TrainController" in started, started
    assert not started & {"PlacementGroupCleaner", "DatasetManager", "PreemptionWatcher"}, started


def test_zero_cpu_tasks_beside_a_full_actor_pool_reuse_their_worker(ray_cluster) -> None:
    """On a local Ray whose CPUs an actor holds (an extraction's pool), zero-CPU tasks 1.5 s apart (its sink
    writes between batches) run in one worker process; Ray's default would kill the idle worker after 1 s and
    start a new one for each task."""
    script = textwrap.dedent("""
        import os, time, ray
        from rmm.cluster import init_ray
        from rmm.config import RayConfig

        @ray.remote(num_cpus=1)
        class Holder:
            def ping(self) -> int:
                return 1

        @ray.remote(num_cpus=0)
        def pid() -> int:
            return os.getpid()

        init_ray(RayConfig(num_cpus=1))
        holder = Holder.remote()
        ray.get(holder.ping.remote())
        pids = []
        for _ in range(4):
            pids.append(ray.get(pid.remote()))
            time.sleep(1.5)
        print("pids", len(set(pids)))
        """)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_idle_worker_killing_time_threshold_ms")}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "pids 1" in done.stdout, done.stdout[-2000:]
