"""Fixtures of the feature tests: a private tiny-model cache built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def rmm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build tiny models into a per-session cache instead of the user's ~/.cache/rmm."""
    cache = tmp_path_factory.mktemp("rmm_cache")
    previous = os.environ.get("RMM_CACHE")
    os.environ["RMM_CACHE"] = str(cache)
    yield cache
    if previous is None:
        del os.environ["RMM_CACHE"]
    else:
        os.environ["RMM_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model(rmm_cache: Path) -> Callable[[str], str]:
    """``tiny_model(arch)``: the local path of ``tiny:<arch>``, built into the session's cache on first use. Tests
    that use it are in the slow tier (tests/conftest.py). The LVLM families only the tests build are registered
    by importing tests/features/tiny_builders.py."""
    from rmm.features.tiny import resolve_model_id

    def path(arch: str) -> str:
        return resolve_model_id(f"tiny:{arch}")

    return path


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tiny_model: Callable[[str], str]) -> str:
    return tiny_model("qwen2-vl")
