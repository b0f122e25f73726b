"""What a person at the terminal sees of a run: per stage one progress bar and a one-line summary, at the end a
table of the runs; rmm's info lines and everything Ray prints go to ``<output.dir>/logs/`` instead.

Ray's workers (Train workers and controllers, Tune trials, Ray Data tasks) cannot draw on the driver's terminal.
They send progress as :func:`emit` lines on their stdout, which Ray streams to the driver; there
:meth:`Console.worker_output` (hooked into that stream by :mod:`rmm.cluster`) turns them into bar updates, writes
every other line to ``logs/ray-workers.log`` and shows rmm's own warnings from workers. The driver's native
stderr (Ray's C++ core worker, Ray's Python loggers, library progress bars) goes to ``logs/driver-stderr.log``
and rmm's log records to ``logs/rmm.log``. ``rmm -v`` shows all of it on the console, as Ray prints it.

Without a :func:`session` (tests, library use) the console prints summaries to stdout, draws no bars and leaves
Ray's output alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

#: Under ``output.dir`` (for a URI output, under the node's mirror of it, see :mod:`rmm.storage`).
LOGS_DIR = "logs"
RMM_LOG = "rmm.log"
WORKERS_LOG = "ray-workers.log"
NATIVE_LOG = "driver-stderr.log"
#: Prefix of a progress event line on a Ray worker's stdout; the rest of the line is a JSON object.
PROGRESS_MARKER = "rmm-progress "
#: How rmm's loggers format records in Ray workers (:func:`configure_worker_logging`); the driver shows the
#: warnings and errors among them.
WORKER_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_WORKER_PROBLEM = re.compile(r"^(WARNING|ERROR|CRITICAL) rmm\b")
#: Without a terminal (CI, a pipe) a bar prints a line at most this often, so a long stage still shows life.
LINE_INTERVAL_S = 60.0
#: rmm's warnings from Ray workers shown per command; the rest (a failing item each, say) stay in the log.
MAX_WORKER_WARNINGS = 10
#: Width of the stage name column of summary lines.
_STAGE_WIDTH = 8


def emit(kind: str, **fields: Any) -> None:
    """Send a progress event from a Ray worker to the driver's console (a line on stdout, which Ray streams).

    Args:
        kind: what advances: ``items`` (``n`` items extracted), ``epoch`` (``run``, ``label``, ``epoch``,
            ``epochs``, ``metric``, ``value``: a run's evaluation), ``trial`` (a Tune trial ended).
        fields: the event's values, JSON-able.
    """
    print(PROGRESS_MARKER + json.dumps({"kind": kind, **fields}), flush=True)


def configure_worker_logging() -> None:
    """In a Ray worker: rmm's records at INFO and above to stderr in :data:`WORKER_LOG_FORMAT`, so the driver
    can tell rmm's warnings from the rest of what workers print."""
    logger = logging.getLogger("rmm")
    if any(getattr(handler, "rmm_worker", False) for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(WORKER_LOG_FORMAT))
    handler.rmm_worker = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class Bar:
    """One stage's progress: a tqdm bar on a terminal, otherwise a line every :data:`LINE_INTERVAL_S` seconds.

    Progress is the sum of a count (:meth:`update`) and of per-key positions (:meth:`advance_to`, e.g. each
    run's epoch), so events that arrive late or twice never move it backwards or past a finished key.
    """

    def __init__(self, console: Console, stage: str, total: float | None, unit: str, counts: str) -> None:
        self.stage, self.total, self.unit, self.counts = stage, total, unit, counts
        self._console = console
        self._count = 0.0
        self._parts: dict[str, float] = {}
        self._finished: set[str] = set()
        self._status = ""
        self._last_line = time.monotonic()
        self._lock = threading.Lock()
        self._tqdm = (tqdm(total=total, desc=stage.ljust(_STAGE_WIDTH), unit=unit, file=console.out, leave=False,
                           dynamic_ncols=True) if console.bars else None)

    @property
    def position(self) -> float:
        return self._count + sum(self._parts.values())

    def update(self, n: float = 1, status: str | None = None) -> None:
        with self._lock:
            self._count += n
            self._show(status)

    def advance_to(self, key: str, position: float, status: str | None = None, *, finished: bool = False) -> None:
        """Set ``key``'s part to ``position`` unless it is further already or ``key`` finished; ``finished``
        fixes it (a run that stopped early jumps to its full share)."""
        with self._lock:
            if key not in self._finished:
                self._parts[key] = max(self._parts.get(key, 0.0), position) if not finished else position
                if finished:
                    self._finished.add(key)
            self._show(status)

    def event(self, event: Mapping[str, Any]) -> None:
        """A worker's progress event: events of this bar's ``counts`` kind advance it, the others set its
        status (e.g. a trial's epochs under the tune bar)."""
        kind = event.get("kind")
        status = None
        if kind == "epoch":
            value = event.get("value")
            metric = f" {event['metric']} {value:.4f}" if isinstance(value, (int, float)) else ""
            status = f"{event.get('label', '')} epoch {event['epoch']}/{event.get('epochs', '?')}{metric}"
        if kind == self.counts == "epoch":
            self.advance_to(str(event["run"]), float(event["epoch"]), status)
        elif kind == self.counts:
            self.update(float(event.get("n", 1)), status)
        elif status is not None:
            with self._lock:
                self._show(status)

    def clear(self) -> None:
        if self._tqdm is not None:
            self._tqdm.clear()

    def refresh(self) -> None:
        if self._tqdm is not None:
            self._tqdm.refresh()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def _show(self, status: str | None) -> None:
        if status is not None:
            self._status = status
        if self._tqdm is not None:
            self._tqdm.n = min(self.position, self.total) if self.total else self.position
            self._tqdm.set_postfix_str(self._status, refresh=True)
        elif self._console.lines and time.monotonic() - self._last_line >= LINE_INTERVAL_S:
            self._last_line = time.monotonic()
            total = f"/{self.total:g}" if self.total else ""
            self._console.message(f"{self.stage.ljust(_STAGE_WIDTH)} {self.position:g}{total} {self.unit}s "
                                  f"{self._status}".rstrip())


class Console:
    """The console of one ``rmm`` command.

    Args:
        out: where bars, summaries and tables go.
        err: where warnings and errors go.
        quiet: Ray's and rmm's info output goes to ``logs_dir`` only (False: Ray prints as it does by itself).
        bars: draw tqdm bars (a terminal); False prints progress as sparse lines when ``lines``.
        lines: print a bar's progress lines without a terminal (False: summaries only).
        logs_dir: where the log files go; None keeps no log files.
    """

    def __init__(self, out: TextIO, err: TextIO, *, quiet: bool = False, bars: bool = False, lines: bool = False,
                 logs_dir: Path | None = None) -> None:
        self.out, self.err, self.quiet, self.bars, self.lines, self.logs_dir = out, err, quiet, bars, lines, logs_dir
        self._bar: Bar | None = None
        #: Ray's own printing of worker output (deduplication, prefixes, colours), set where Ray hands the
        #: output to :meth:`worker_output` instead (:mod:`rmm.cluster`).
        self.ray_printer: Callable[[dict[str, Any]], None] | None = None
        self._worker_warnings = 0
        self._lock = threading.RLock()
        self._workers_log: TextIO | None = None
        if logs_dir is not None:
            logs_dir.mkdir(parents=True, exist_ok=True)
            self._workers_log = open(logs_dir / WORKERS_LOG, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def message(self, text: str, *, err: bool = False) -> None:
        """Print a line without tearing an active bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.clear()
            print(text, file=self.err if err else self.out, flush=True)
            if self._bar is not None:
                self._bar.refresh()

    @contextlib.contextmanager
    def progress(self, stage: str, total: float | None, unit: str, counts: str) -> Iterator[Bar]:
        """A bar for ``stage`` while the block runs; :func:`emit` events of kind ``counts`` advance it."""
        bar = Bar(self, stage, total, unit, counts)
        with self._lock:
            previous, self._bar = self._bar, bar
        try:
            yield bar
        finally:
            with self._lock:
                self._bar = previous
            bar.close()

    def summary(self, stage: str, text: str, seconds: float | None = None) -> None:
        """A stage's one-line summary, e.g. ``train    3 runs, best ... (25 s)``."""
        took = f" ({seconds:.0f} s)" if seconds is not None and seconds >= 1 else ""
        self.message(f"{stage.ljust(_STAGE_WIDTH)} {text}{took}")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Columns padded to their widest cell; numbers as given."""
        widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            self.message("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    def worker_output(self, data: Mapping[str, Any]) -> None:
        """Ray's handler of worker output on the driver (one batch of lines of one worker process, or an error
        the raylet reports, e.g. a task failed or a worker was killed for memory): progress events go to the
        active bar, every other line to ``ray-workers.log``; rmm's warnings from workers and the first line of
        a raylet error to the console too. When not quiet, the lines are printed as Ray prints them instead
        (:attr:`ray_printer`)."""
        shown = []
        who = data.get("actor_name") or data.get("task_name") or ""
        where = "" if data.get("ip") == data.get("localhost") else f", ip={data.get('ip')}"
        prefix = f"({who} pid={data.get('pid')}{where}) "
        for line in data.get("lines", ()):
            event = _progress_event(line)
            if event is not None:
                self.event(event)
                continue
            shown.append(line)
            if self._workers_log is not None and not self._workers_log.closed:
                self._workers_log.write(prefix + line + "\n")
            if not self.quiet:
                continue
            if data.get("pid") == "raylet":
                self._worker_warning(f"Ray: {line.strip().splitlines()[0][:200]} (all of it in {WORKERS_LOG})")
            elif _WORKER_PROBLEM.match(line):
                self._worker_warning(f"{line} {prefix.strip()}")
        if not self.quiet and shown and self.ray_printer is not None:
            self.ray_printer({**data, "lines": shown})

    def _worker_warning(self, text: str) -> None:
        self._worker_warnings += 1
        if self._worker_warnings <= MAX_WORKER_WARNINGS:
            self.message(text, err=True)
        elif self._worker_warnings == MAX_WORKER_WARNINGS + 1:
            self.message(f"(further warnings of Ray workers only in {self.logs_dir}/{WORKERS_LOG})", err=True)

    def event(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            bar = self._bar
        if bar is not None:
            bar.event(event)

    def close(self) -> None:
        """End of the command: worker output that still arrives is printed as Ray prints it."""
        self.quiet = False
        if self._workers_log is not None:
            self._workers_log.close()


def _progress_event(line: str) -> dict[str, Any] | None:
    """The event of an :func:`emit` line; None for any other line (a cut-off event line included)."""
    if not line.startswith(PROGRESS_MARKER):
        return None
    try:
        event = json.loads(line[len(PROGRESS_MARKER):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


_current = Console(sys.stdout, sys.stderr)


def current() -> Console:
    """The console of the running command (a plain one outside :func:`session`)."""
    return _current


@contextlib.contextmanager
def session(logs_dir: Path | None, verbose: bool = False) -> Iterator[Console]:
    """The console of one command: rmm's log records to ``logs_dir/rmm.log`` (and warnings to the console);
    unless ``verbose``, the process's native stderr to ``logs_dir/driver-stderr.log`` and Ray's and Ray Data's
    console output off, so only bars, summaries, tables, warnings and errors reach the terminal. Everything is
    restored on exit (a UserError's line or a bug's traceback is printed after it, on the real stderr).

    Args:
        logs_dir: where the logs go (``<output.dir>/logs``); None (a command without an output dir) keeps
            logging on the console as without a session.
        verbose: debug records, Ray's own output and worker lines on the console, as without rmm's console.
    """
    global _current
    quiet = logs_dir is not None and not verbose
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(_native_stderr_to(logs_dir / NATIVE_LOG)) if quiet and logs_dir else sys.stderr
        terminal = sys.stdout.isatty()
        console = Console(sys.stdout, err, quiet=quiet, bars=quiet and terminal, lines=quiet and not terminal,
                          logs_dir=logs_dir)
        stack.callback(console.close)
        stack.enter_context(_logging(console, verbose))
        if quiet:
            # Ray Data's progress bars or lines, and Tune's new output engine, which prints its experiment header
            # even at verbose=0 (the legacy one, on at "0", prints nothing there)
            stack.enter_context(_environ({"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_AIR_NEW_OUTPUT": "0"}))
        previous, _current = _current, console
        try:
            yield console
        finally:
            _current = previous


@contextlib.contextmanager
def _native_stderr_to(path: Path) -> Iterator[TextIO]:
    """Point file descriptor 2 at ``path`` while the block runs and yield a stream to the former stderr (the
    terminal). Ray's C++ core worker and Ray's Python loggers write to fd 2 directly. Only when fd 2 is the
    Python stderr's; otherwise (a test's captured stderr) nothing native can be told apart, and it is left."""
    try:
        same = sys.stderr.fileno() == 2
    except (AttributeError, io.UnsupportedOperation):
        same = False
    if not same:
        yield sys.stderr
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
    terminal = open(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",  # noqa: SIM115
                    errors="backslashreplace")
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()


class _ConsoleHandler(logging.Handler):
    """Log records through :meth:`Console.message`, so they do not tear a bar."""

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.message(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise from a handler
            self.handleError(record)


@contextlib.contextmanager
def _logging(console: Console, verbose: bool) -> Iterator[None]:
    """Root logger: debug (verbose) or info records to ``rmm.log``; on the console everything (verbose) or
    warnings and errors (otherwise, or everything at info without a logs dir). Restored on exit."""
    root = logging.getLogger()
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = []
    shown = level if verbose or console.logs_dir is None else logging.WARNING
    on_console = _ConsoleHandler(console, shown)
    brief = "%(levelname)s %(name)s: %(message)s"
    on_console.setFormatter(logging.Formatter(brief if shown >= logging.WARNING else f"%(asctime)s {brief}",
                                              datefmt="%H:%M:%S"))
    handlers.append(on_console)
    if console.logs_dir is not None:
        to_file = logging.FileHandler(console.logs_dir / RMM_LOG, encoding="utf-8")
        to_file.setLevel(level)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    saved_level = root.level
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(saved_level)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
