"""Only the Ray edges import ray: models, data, metrics and config run in a plain process; configs load without
torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess importing torch
def test_core_packages_do_not_import_ray() -> None:
    code = ("import sys, rmm.config, rmm.models, rmm.data.schema, rmm.eval.metrics, rmm.train.loop, "
            "rmm.report.tables, rmm.report.plots, rmm.report.significance, rmm.recommend, rmm.stages, rmm.cli; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loading_every_config_imports_neither_torch_nor_a_model() -> None:
    """Loading a config validates each model entry (its keys, protocol defaults and fusion) against the torch-free
    registry and hyperparameter dataclasses, so checking a config, planning a sweep and ``rmm --help`` stay light:
    no torch, no pandas, no model class until a model is built."""
    code = ("import contextlib, glob, io, sys\n"
            "from rmm.config import load_config\n"
            "from rmm.cli import main\n"
            "configs = [load_config(path) for path in sorted(glob.glob('configs/*.yaml'))]\n"
            "labels = [model.label for cfg in configs for model in cfg.model]\n"  # label reads ModelConfig.fuses
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\n"
            "light = ('rmm.models.registry', 'rmm.models.hparams')\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'ray')\n"
            "               or m.startswith('rmm.models.') and not m.startswith(light))\n"
            "print(len(configs), len(labels), heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    configs, models, heavy = out.stdout.strip().split(" ", 2)
    assert int(configs) >= 4 and int(models) >= int(configs)
    assert heavy == "[]"


@pytest.mark.slow  # a subprocess importing torch
def test_building_a_model_imports_its_module_on_first_use() -> None:
    code = ("import sys\nfrom rmm.models import get_model_class, model_spec\n"
            "spec = model_spec('lightgcn')\n"
            "before = 'rmm.models.lightgcn' in sys.modules\n"
            "cls = get_model_class('lightgcn')\n"
            "print(before, cls.spec is spec, 'rmm.models.vbpr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "False"]
