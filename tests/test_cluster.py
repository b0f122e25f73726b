"""rmm.cluster on the session's local Ray (tests/conftest.py): it listens on loopback only, its workers import
the driver's rmm, and a driver joining it leaves token auth as it found it."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
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
