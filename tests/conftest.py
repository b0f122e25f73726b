"""Shared fixtures (one local Ray cluster for the whole session) and the test tiers.

Tiers: a test marked ``ray`` starts or uses Ray, one marked ``slow`` takes seconds (tiny HF models, model fits,
subprocess CLIs); the rest is the fast tier (``make test-fast``, ``-m "not ray and not slow"``). A test inherits
its tier from the fixtures it uses (:data:`TIER_OF_FIXTURE`), and a fast-tier test that starts Ray or builds a
tiny model fails, so a new slow test cannot land in the fast tier unnoticed. Unmarked tests slower than
:data:`FAST_TEST_SECONDS` are listed at the end of the run as candidates for ``slow``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path

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


#: The tier of every test that uses one of these fixtures (directly or through another fixture).
TIER_OF_FIXTURE = {"ray_cluster": "ray", "tiny_model": "slow"}
TIERS = ("ray", "slow")
#: A fast-tier test taking longer than this (call phase, on 2 idle cores most take well under 0.5 s) is listed
#: in the run's summary; a warning, not a failure, as a loaded machine slows every test.
FAST_TEST_SECONDS = 2.0
_slow_fast_tests: list[tuple[float, str]] = []


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the tier of the fixtures it uses."""
    for item in items:
        for fixture, tier in TIER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(tier)


def _in_fast_tier(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(tier) for tier in TIERS)


def _ray_is_initialized() -> bool:
    ray = sys.modules.get("ray")  # never imported by the check itself: most fast tests run without it
    return ray is not None and ray.is_initialized()


def _built_tiny_models() -> set[Path]:
    """The tiny models in this process's cache (:mod:`rmm.features.tiny` builds every ``tiny:`` id there)."""
    return set((Path(os.environ["RMM_CACHE"]) / "tiny").glob("*"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail a fast-tier test that started Ray or built a tiny model: it belongs to the ``ray`` or ``slow`` tier."""
    if not _in_fast_tier(item):
        return (yield)
    # Run alone (`-m "not ray and not slow"`) nothing has started Ray before, so every start is seen; in a run of
    # the whole suite an earlier Ray test's session hides it, and the fast-tier run of `make test` catches it.
    ray_before, tiny_before = _ray_is_initialized(), _built_tiny_models()
    result = yield
    wrong = []
    if not ray_before and _ray_is_initialized():
        wrong.append("started Ray: mark it @pytest.mark.ray or use the ray_cluster fixture")
    built = sorted(path.name for path in _built_tiny_models() - tiny_before)
    if built:
        wrong.append(f"built tiny models {built}: mark it @pytest.mark.slow or use the tiny_model fixture")
    if wrong:
        pytest.fail(f"{item.nodeid} is in the fast tier but " + "; ".join(wrong), pytrace=False)
    return result


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note fast-tier tests that took long, for :func:`pytest_terminal_summary`."""
    if report.when == "call" and report.duration > FAST_TEST_SECONDS and not any(t in report.keywords for t in TIERS):
        _slow_fast_tests.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the slow fast-tier tests, slowest first, so the next one to mark ``slow`` is easy to see."""
    if _slow_fast_tests:
        terminalreporter.section(f"fast-tier tests slower than {FAST_TEST_SECONDS:g} s: mark them slow?")
        for duration, nodeid in sorted(_slow_fast_tests, reverse=True):
            terminalreporter.write_line(f"{duration:6.2f}s {nodeid}")
