"""Shared fixtures: one local Ray cluster for the whole session, small seeded configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray (4 logical CPUs: nested Tune+Train needs more than 2 slots, see NOTES.md)."""
    import ray

    from rmm.cluster import init_ray
    from rmm.config import RayConfig

    init_ray(RayConfig(num_cpus=4))
    yield ray
    ray.shutdown()
