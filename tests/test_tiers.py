"""The test tiers of tests/conftest.py: a test takes its tier from its fixtures, and a fast-tier test that builds a
tiny model fails (starting Ray is caught the same way; not shown here, it would cost the fast tier seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER_TESTS = '''
import os
from pathlib import Path

import pytest


@pytest.fixture
def tiny_model():
    return None


def _build_a_tiny_model():
    (Path(os.environ["RMM_CACHE"]) / "tiny" / "fake-v1").mkdir(parents=True, exist_ok=True)


def test_plain():
    pass


def test_uses_ray(ray_cluster):
    pass


def test_uses_a_tiny_model(tiny_model):
    pass


def test_builds_unmarked():
    _build_a_tiny_model()


@pytest.mark.slow
def test_builds_marked():
    _build_a_tiny_model()
'''


def test_fast_tier_takes_tiers_from_fixtures_and_fails_an_unmarked_build(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    ray: uses Ray\n    slow: takes seconds\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    # The inner tests build into a cache of their own; restored before this (fast-tier) test's own guard looks.
    with monkeypatch.context() as patch:
        patch.setenv("RMM_CACHE", str(tmp_path / "cache"))
        fast = pytester.runpytest_inprocess("-m", "not ray and not slow", "-p", "no:cacheprovider")
        slow = pytester.runpytest_inprocess("-m", "slow", "-p", "no:cacheprovider")

    fast.assert_outcomes(passed=1, failed=1, deselected=3)
    assert "test_builds_unmarked is in the fast tier but built tiny models ['fake-v1']" in fast.stdout.str()
    slow.assert_outcomes(passed=2, deselected=3)  # the tiny_model user and the marked build
