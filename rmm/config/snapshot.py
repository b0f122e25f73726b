"""The resolved config (after overrides and defaults) written next to a stage's outputs, so a result says
exactly what produced it and ``rmm recommend`` can rebuild a run's model from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from rmm.config.schema import Config


def save_snapshot(cfg: Config, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write ``cfg`` as YAML to ``directory/name`` (creating the directory); returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    target.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return target
