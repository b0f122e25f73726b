"""A worker failure injected through ``train_model(wrap_report=...)``, for the fault-tolerance tests (Ray Train
workers and runs trained in process alike).

The wrapper travels to the Ray Train workers pickled by reference: they import this module (a local Ray's
workers search the driver's checkout first, so ``tests`` is importable there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rmm.train.loop import ReportFn, rank_and_world


class InjectedFailure(RuntimeError):
    """The worker failure :class:`FailOnceAt` raises."""


@dataclass(frozen=True)
class FailOnceAt:
    """Make the last-ranked worker raise once, after training and evaluating ``epoch`` and before reporting it,
    so that epoch's checkpoint is never written and a ``max_failures >= 1`` run must restart from the one before.

    ``marker`` (a file on the machine's shared disk) records that the failure happened, so the restarted
    attempt goes on, and lets the test check that it did.
    """

    epoch: int
    marker: Path

    def __call__(self, report: ReportFn) -> ReportFn:
        def report_or_fail(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
            rank, world_size = rank_and_world()  # (0, 1) in a run trained in process
            if metrics["epoch"] == self.epoch and rank == world_size - 1 and not self.marker.exists():
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                self.marker.touch()
                raise InjectedFailure(f"worker {rank} fails at epoch {self.epoch}")
            report(metrics, checkpoint_dir)

        return report_or_fail
