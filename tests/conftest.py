"""Shared fixtures: one local Ray cluster for the whole session, small seeded configs."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# S3 tests talk to a local moto server (tests/test_storage.py); any credentials do, but there must be some, in
# the environment the session's Ray workers inherit, or the AWS SDK goes looking for an instance profile.
for _key, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_key, _value)
# Storage mirrors and tiny models of the session's Ray workers go to a temp dir, not the user's ~/.cache/rmm.
os.environ.setdefault("RMM_CACHE", tempfile.mkdtemp(prefix="rmm-test-cache-"))


def start_session_ray() -> None:
    """Start the session's local Ray (4 logical CPUs: nested Tune+Train needs more than 2 slots: on 2 it hung);
    again after tests/test_multinode.py, whose driver leaves it for a multi-node cluster of its own."""
    from rmm.cluster import init_ray
    from rmm.config import RayConfig

    init_ray(RayConfig(num_cpus=4))


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's local Ray, shared by every test that starts Ray."""
    import ray

    start_session_ray()
    yield ray
    ray.shutdown()
