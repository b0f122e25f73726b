from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow  # a subprocess importing torch and transformers
def test_feature_modules_do_not_import_ray() -> None:
    _run("import sys, rmm.features.extractors, rmm.features.lvlm, rmm.features.store, rmm.features.tiny; "
         "assert 'ray' not in sys.modules, 'ray imported'")


def test_extractor_registry_does_not_import_torch() -> None:
    """Image-decoding tasks and image_stats actors import only the registry; torch would cost seconds each."""
    _run("import sys, rmm.features.extractors; assert 'torch' not in sys.modules, 'torch imported'")
