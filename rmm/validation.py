"""Range and name checks shared by every config dataclass: run sections and model hyperparameters alike.

Torch-free and import-free, so a model's hyperparameter dataclass and the run config both use it without either
importing the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def require_store_name(what: str, name: str) -> None:
    """Raise ValueError unless ``name`` is a plain directory name of the feature store (no path separator, no
    leading '.'), so no config value can point a stage outside the store."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"{what} {name!r} is not a feature-store name: it must be non-empty, without '/' or "
                         f"'\\', and not start with '.'")


def require_positive(section: Any, *names: str) -> None:
    """Raise ``ValueError("<name> must be > 0, got <value>")`` for the first field of ``section`` that is not."""
    for name in names:
        value = getattr(section, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def require_at_least(section: Any, minimum: float, *names: str) -> None:
    """Raise ``ValueError("<name> must be >= <minimum>, got <value>")`` for the first field of ``section`` below
    ``minimum``: the range check every config dataclass (sections and model hyperparameters) shares."""
    for name in names:
        value = getattr(section, name)
        if value is not None and not value >= minimum:  # not >=: NaN fails too
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_choice(section: Any, name: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming field ``name`` of ``section``, its value and the valid ones unless it is one of
    ``choices``."""
    value = getattr(section, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
