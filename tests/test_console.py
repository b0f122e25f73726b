"""The console: bars advanced by worker events, worker lines to the log, rmm's warnings shown (a few), and a
session that keeps the terminal to rmm while the logs take the rest. No Ray: worker output is fed as Ray hands it
to the driver."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

from rmm import console
from rmm.console import MAX_WORKER_WARNINGS, PROGRESS_MARKER, WORKERS_LOG, Console


def batch(*lines: str, actor: str = "RayTrainWorker") -> dict[str, object]:
    """One batch of a worker's output lines, as Ray's log stream gives it to the driver."""
    return {"ip": "127.0.0.1", "localhost": "127.0.0.1", "pid": 42, "actor_name": actor, "is_err": False,
            "lines": list(lines)}


def epoch_line(run: str, epoch: int) -> str:
    event = {"kind": "epoch", "run": run, "label": run, "epoch": epoch, "epochs": 4, "metric": "recall@20",
             "value": 0.25}
    return PROGRESS_MARKER + json.dumps(event)


def test_epoch_events_advance_per_run_never_backwards(tmp_path: Path) -> None:
    shown = Console(io.StringIO(), io.StringIO(), quiet=True, logs_dir=tmp_path)
    with shown.progress("train", 8, "epoch", counts="epoch") as bar:
        shown.worker_output(batch(epoch_line("a", 2), epoch_line("a", 1)))  # a late event arrives after a newer one
        assert bar.position == 2
        bar.advance_to("a", 4, finished=True)  # early stopping: the run's whole share
        shown.worker_output(batch(epoch_line("a", 3), epoch_line("b", 2)))
        assert bar.position == 6
        shown.event({"kind": "trial"})  # not this bar's kind: status only
        assert bar.position == 6
    assert shown.out.getvalue() == ""  # no terminal, a short stage: no progress lines at all
    assert (tmp_path / WORKERS_LOG).read_text() == ""  # events are not log lines


def test_worker_lines_go_to_the_log_and_a_few_warnings_to_the_console(tmp_path: Path) -> None:
    err = io.StringIO()
    shown = Console(io.StringIO(), err, quiet=True, logs_dir=tmp_path)
    warnings = [f"WARNING rmm.features.extractors: item {i} failed" for i in range(MAX_WORKER_WARNINGS + 5)]
    shown.worker_output(batch("Reporting training result 1: TrainingReport(...)", *warnings,
                              PROGRESS_MARKER + "{cut off", actor="MapWorker"))
    shown.close()
    logged = (tmp_path / WORKERS_LOG).read_text().splitlines()
    assert logged[0] == "(MapWorker pid=42) Reporting training result 1: TrainingReport(...)"
    assert len(logged) == 2 + len(warnings)  # a cut-off event line is logged as it is
    printed = err.getvalue().splitlines()
    assert printed[:MAX_WORKER_WARNINGS] == [f"{w} (MapWorker pid=42)" for w in warnings[:MAX_WORKER_WARNINGS]]
    assert len(printed) == MAX_WORKER_WARNINGS + 1 and WORKERS_LOG in printed[-1]


def test_non_terminal_progress_prints_sparse_lines(monkeypatch) -> None:
    monkeypatch.setattr(console, "LINE_INTERVAL_S", 0.0)
    out = io.StringIO()
    shown = Console(out, io.StringIO(), quiet=True, lines=True)
    with shown.progress("extract", 90, "item", counts="items") as bar:
        bar.event({"kind": "items", "n": 16})
    assert out.getvalue() == "extract  16/90 items\n"


def test_summary_and_table() -> None:
    out = io.StringIO()
    shown = Console(out, io.StringIO())
    shown.summary("train", "3 runs", 12.4)
    shown.summary("report", "report.md", 0.2)
    shown.table(["run", "valid"], [["lightgcn-1", "0.5000"], ["vbpr", "-"]])
    assert out.getvalue().splitlines() == ["train    3 runs (12 s)", "report   report.md",
                                           "run         valid", "lightgcn-1  0.5000", "vbpr        -"]


def test_session_logs_info_to_the_file_and_shows_warnings(tmp_path: Path, capsys) -> None:
    with console.session(tmp_path / "logs") as shown:
        assert console.current() is shown and shown.quiet
        logging.getLogger("rmm.test").info("an info line")
        logging.getLogger("rmm.test").warning("a warning")
    assert console.current() is not shown
    captured = capsys.readouterr()
    assert "a warning" in captured.err and "an info line" not in captured.err + captured.out
    assert "an info line" in (tmp_path / "logs" / console.RMM_LOG).read_text()


def test_session_sends_native_stderr_to_the_log(tmp_path: Path) -> None:
    """In a process of its own, whose stderr is file descriptor 2 (as at a terminal): what is written to fd 2
    directly (Ray's C++ core worker does) lands in the log; rmm's warnings and a bug's traceback on the console."""
    script = f"""
import logging, os
from pathlib import Path
from rmm import console
with console.session(Path({str(tmp_path)!r})):
    os.write(2, b"core_worker.cc: native noise\\n")
    logging.getLogger("rmm").warning("a warning that matters")
raise ValueError("a bug")
"""
    done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60)
    assert "native noise" not in done.stdout
    assert "a warning that matters" in done.stdout and "ValueError: a bug" in done.stdout
    assert "native noise" in (tmp_path / console.NATIVE_LOG).read_text()
