"""Fixtures of the feature tests: a private tiny-model cache built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
def tiny_qwen2_vl(rmm_cache: Path) -> str:
    from rmm.features.tiny import resolve_model_id

    return resolve_model_id("tiny:qwen2-vl")
