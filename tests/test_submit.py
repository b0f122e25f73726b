"""``rmm submit`` against a real Ray head started for this module (``ray start --head`` on free loopback ports):
the quickstart at a small size runs as a job to SUCCEEDED and writes its outputs; --status, --logs and --stop.

The head is stopped whatever the outcome, by signalling the processes this module started (the ``ray start
--block`` process, which drains and stops its node, then any survivor among its descendants, by pid). Not
``ray stop``: it kills every Ray process on the machine, including the session cluster and other users' Rays.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rmm.cli import main

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HEAD_START_SECONDS = 90
JOB_SECONDS = 240


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stop_head(process: subprocess.Popen) -> None:
    """SIGTERM the ``ray start --block`` process (it drains and stops the node's processes), then SIGKILL any
    of its descendants still alive, by pid."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head with 4 CPUs on loopback; yields its dashboard (job API) address."""
    ray_script = VENV_BIN / "ray" if (VENV_BIN / "ray").exists() else shutil.which("ray")
    if ray_script is None:
        pytest.skip(f"no `ray` script beside {sys.executable} or on PATH")
    gcs, dashboard, client, agent, metrics = free_ports(5)
    # A short private temp dir: Ray's socket paths must stay short, and `ray start` records its address in
    # <temp-dir>/ray_current_cluster, where no other `ray.init()` on the machine looks.
    temp_dir = tempfile.mkdtemp(prefix="rmm-head-", dir="/tmp")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    # No drain on SIGTERM: a test head has nothing to hand over, and draining waits up to 30 s.
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    command = [str(ray_script), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
               f"--metrics-export-port={metrics}", "--num-cpus=4", f"--temp-dir={temp_dir}",
               "--disable-usage-stats"]
    log_path = Path(temp_dir) / "ray-start.log"
    address = f"http://127.0.0.1:{dashboard}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_SECONDS
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/jobs/", timeout=2).read()  # the job API is up
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not come up (exit {process.poll()}):\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield address
    finally:
        _stop_head(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submitted_job_id(printed: str) -> str:
    match = re.search(r"submitted job (\S+) to ", printed)
    assert match, printed
    return match.group(1)


def test_quickstart_job_succeeds_on_a_real_head(ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)  # the job uploads the working directory
    out = tmp_path / "out"
    overrides = [f"output.dir={out}", "dataset.synthetic.num_users=60", "dataset.synthetic.num_items=40",
                 "dataset.synthetic.interactions_per_user=10", "dataset.synthetic.image_size=8",
                 "model=[{name: lightgcn}]", "tune=null", "train.epochs=2", "train.num_workers=1",
                 "train.topk=[10,20]",
                 "stages=[data,train,report]"]
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0, capsys.readouterr().out[-3000:]
    printed = capsys.readouterr().out
    job_id = submitted_job_id(printed)
    assert f"job {job_id} SUCCEEDED" in printed and "done: outputs in" in printed
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["lightgcn"] and [h["epoch"] for h in runs[0]["history"]][-1] <= 2
    assert (out / "report.md").exists() and (out / "results.csv").exists()
    assert (out / "plots" / "metric_by_representation.png").stat().st_size > 0
    assert (out / "data" / "synthetic" / "dataset.json").exists()
    assert (out / "runs" / runs[0]["run_name"] / "model.pt").exists()

    assert main(["submit", "--address", ray_head, "--status", job_id]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["submit", "--address", ray_head, "--logs", job_id]) == 0
    assert "done: outputs in" in capsys.readouterr().out


def test_no_wait_then_stop(ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head, "--no-wait",
            "--set", f"output.dir={tmp_path / 'out'}", "--set", "stages=[data]"]
    assert main(args) == 0
    job_id = submitted_job_id(capsys.readouterr().out)
    assert main(["submit", "--address", ray_head, "--stop", job_id]) == 0
    assert "stop requested" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        main(["submit", "--address", ray_head, "--status", job_id])
        status = capsys.readouterr().out.strip()
        if status in ("STOPPED", "SUCCEEDED", "FAILED"):
            break
        time.sleep(0.5)
    assert status == "STOPPED"


def test_unknown_job_and_missing_config_are_one_line(ray_head: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--address", ray_head, "--status", "raysubmit_nosuchjob"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "raysubmit_nosuchjob" in err
    assert main(["submit", "--address", ray_head]) == 2
    assert "needs a CONFIG" in capsys.readouterr().err
