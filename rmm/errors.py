"""The errors that mean "the input is wrong", as opposed to a bug in rmm.

The command line prints a :class:`UserError` as one line and exits with code 2; any other exception keeps
its traceback, because it is a bug to report. Each class also derives from the builtin a caller would
naturally catch (``ValueError``, ``KeyError``, ``FileNotFoundError``), so library users need not import
these. They survive the trip out of a Ray worker: :func:`user_error_in` finds one in a chain of causes.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: wrong input (config, data, arguments); the message names the file/field/item and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration file, override or argument is invalid; the message names the section and key."""


class DataError(UserError, ValueError):
    """A dataset, feature or results file breaks its contract; the message names the file and field or item."""


class NotFoundError(UserError, FileNotFoundError):
    """Something the user named or a stage needs (a dataset, a feature, a run) does not exist yet."""


class UnknownNameError(UserError, KeyError):
    """A name (model, user, run, template) is not among the valid ones, which the message lists."""

    def __str__(self) -> str:  # KeyError's str() quotes its argument
        return str(self.args[0]) if self.args else ""


class DivergedError(UserError, FloatingPointError):
    """Training produced a non-finite loss or metric: settings or features to change, named in the message."""


def user_error_in(error: BaseException | None) -> UserError | None:
    """The first :class:`UserError` in ``error``'s chain (itself, its ``__cause__``/``__context__``, and the
    per-worker failures a Ray Train error carries), or None when the chain holds none (a bug)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UserError):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None),
                 getattr(current, "controller_failure", None)]
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            todo += list(failures.values())
    return None
