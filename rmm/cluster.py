"""Connect to a Ray cluster, or start a local one: the single place where the driver initialises Ray.

A local Ray is reachable from this machine only: every server of it (GCS, raylet, object manager, workers,
dashboard and its agents) listens on 127.0.0.1, which is also why it can run without token auth. Its workers
import the same rmm as the driver. Joining a cluster (``address``) changes nothing about that cluster: its token
auth stays as the cluster has it (``RAY_AUTH_MODE`` and the token come from the environment, as for ``ray``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import site
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import ray

import rmm.console
from rmm.config import RayConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# A local Ray (loopback only, see above) needs no auth token file, reports no usage stats, and checks Train
# workers often. It starts no idle workers ahead of use (Ray would start one per CPU for the job's environment,
# which Ray Train's and Tune's actors, each with an environment of their own, never reuse), and Ray Train runs no
# preemption watcher actor: a single local node is never drained. An idle worker lives 10 s rather than Ray's 1 s
# once the node has as many workers as CPUs: an extraction's actor pool holds every CPU, so each zero-CPU sink task
# between two of its batches otherwise starts a new worker process (~2 CPU-s of start-up and imports, taken from
# the model's cores). Never applied when joining a cluster.
_LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_idle_worker_killing_time_threshold_ms": "10000",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Initialise Ray once per process: ``address`` (or ``cfg.address``) joins a running cluster, otherwise a
    local Ray of this process starts with ``cfg.num_cpus`` logical CPUs, even where other Ray instances run on
    the machine (it never joins one of those by itself). A no-op when Ray is already initialised, so every stage
    of ``rmm run`` uses the session the first one started (and tests share one session cluster this way)."""
    if ray.is_initialized():
        return
    address = address or cfg.address
    if address:
        log.info("connecting to Ray at %s", address)
        # a Ray on this machine's loopback (a local Ray of another rmm process) is joined on loopback too
        with _single_node() if _on_loopback(address) else contextlib.nullcontext():
            ray.init(address=address, log_to_driver=True)
        _route_worker_output()
        return
    for key, value in _LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    env_vars = {key: os.environ[key] for key in _LOCAL_ENV}
    env_vars.update(_driver_rmm_path())
    with _single_node():
        # "local": start a Ray of our own; None would join the Ray that RAY_ADDRESS or the machine's latest
        # `ray start` names, or fail among several
        context = ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                           include_dashboard=cfg.dashboard, dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
                           runtime_env={"env_vars": env_vars,
                                        "worker_process_setup_hook": f"{__name__}.worker_setup"})
    _route_worker_output()
    address_info = getattr(context, "address_info", {})  # a RayContext, which ray.init's annotation hides
    log.info("Ray's own logs (raylet, GCS, every worker's files): %s/logs", address_info.get("session_dir"))
    if cfg.dashboard:  # Ray takes the next free port when another Ray holds 8265
        log.info("Ray dashboard at http://%s", context.dashboard_url)


#: Ray's printing of worker output and error reports, kept when :func:`_route_worker_output` replaces it.
_ray_print: Callable[..., None] | None = None


def _route_worker_output() -> None:
    """Hand what Ray streams to this driver (its workers' output, and the raylet's error reports) to the console
    of the running ``rmm`` command (:meth:`rmm.console.Console.worker_output`: progress events to the bars,
    lines to ``logs/``) in place of Ray's printing: worker output under Ray's handler name, so ``ray.shutdown``
    removes it as it would Ray's; error reports through the function Ray's error thread prints them with.
    Without a command's console (tests, library use) Ray prints as usual. Ray 2.60 offers no public hook."""
    console = rmm.console.current()
    if console.logs_dir is None:
        return
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    global _ray_print
    _ray_print = _ray_print or worker.print_to_stdstream  # Ray's own, also when Ray starts again in this process
    console.ray_printer = functools.partial(_ray_print, ignore_prefix=False)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", console.worker_output)
    worker.print_to_stdstream = lambda data, ignore_prefix: console.worker_output(data)


def worker_setup() -> None:
    """The setup hook of a local Ray's workers: rmm's log records in the format the driver's console reads
    (:func:`rmm.console.configure_worker_logging`), and the import of rmm itself. Ray puts the driver's working
    directory (and script folder) in front of a worker's ``sys.path`` only when the worker runs its first task,
    so a second rmm checkout in that directory would win every later ``import rmm``. The hook runs before: it
    imports rmm from the worker's ``PYTHONPATH``, which :func:`init_ray` starts with the driver's rmm, and every
    later import of ``rmm.*`` resolves inside that package."""
    rmm.console.configure_worker_logging()


def _driver_rmm_path() -> dict[str, str]:
    """``PYTHONPATH`` for a local Ray's workers, led by the folder holding the rmm package this driver imported
    (nothing to add when that is a site-packages folder: workers search it anyway)."""
    import rmm

    home = str(Path(rmm.__file__).resolve().parents[1])
    if home in {str(Path(p).resolve()) for p in site.getsitepackages()}:
        return {}
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != home]
    return {"PYTHONPATH": os.pathsep.join([home, *rest])}


def _on_loopback(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``, ``auto``) names this machine's loopback."""
    host = urllib.parse.urlsplit(address if "://" in address else f"//{address}").hostname
    return host in {"127.0.0.1", "localhost", "::1"}


@contextlib.contextmanager
def _single_node() -> Iterator[None]:
    """Ray 2.60 replaces a loopback ``_node_ip_address`` with this host's outward address (and its servers then
    listen on every interface) unless multi-node clusters are off, as on macOS and Windows, where
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is the default; that variable is read once, when ray is imported, so
    the setting it controls is switched off here while a local Ray, a single node by definition, starts (or is
    joined: an address ``127.0.0.1:PORT`` would otherwise be rewritten to the outward address, where that Ray
    does not listen)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
