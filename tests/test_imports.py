"""Only the Ray edges import ray: models, data, metrics and config run in a plain process."""

from __future__ import annotations

import subprocess
import sys


def test_core_packages_do_not_import_ray() -> None:
    code = ("import sys, rmm.config, rmm.models, rmm.data.schema, rmm.eval.metrics, rmm.train.loop, "
            "rmm.report.tables, rmm.report.plots, rmm.report.significance, rmm.recommend, rmm.stages, rmm.cli; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
