"""Connect to a Ray cluster, or start a local one: the single place where the driver initialises Ray."""

from __future__ import annotations

import logging
import os

import ray

from rmm.config import RayConfig

log = logging.getLogger(__name__)

# Local and test clusters need no auth token file, report no usage stats, and check Train workers often.
_LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Initialise Ray once per process: ``address`` (or ``cfg.address``) joins a running cluster, otherwise a
    local Ray starts with ``cfg.num_cpus`` logical CPUs. A no-op when Ray is already initialised (tests share one
    session cluster this way)."""
    if ray.is_initialized():
        return
    for key, value in _LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    address = address or cfg.address
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=cfg.dashboard,
                 runtime_env={"env_vars": {k: os.environ[k] for k in _LOCAL_ENV}})
