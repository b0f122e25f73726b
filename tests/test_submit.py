"""``rmm submit``: what a job uploads (``--dry-run``, no cluster: a temporary project holding secrets, with and
without git), and against a real Ray head started for this module (``ray start --head`` on free loopback ports):
the quickstart at a small size runs as a job to SUCCEEDED and writes its outputs; --status, --logs and --stop; the
files the head unpacked for a job are exactly the dry run's list.

The head is stopped whatever the outcome, by signalling the processes this module started (the ``ray start
--block`` process, which drains and stops its node, then any survivor among its descendants, by pid). Not
``ray stop``: it kills every Ray process on the machine, including the session cluster and other users' Rays.
"""

from __future__ import annotations

import base64
import hashlib
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
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rmm.cli import main
from rmm.submit import plan_upload, stage

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


@dataclass(frozen=True)
class Head:
    address: str  # the dashboard (job API) address
    temp_dir: Path  # the head's --temp-dir (sessions, logs)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    """A Ray head with 4 CPUs on loopback."""
    ray_script = VENV_BIN / "ray" if (VENV_BIN / "ray").exists() else shutil.which("ray")
    if ray_script is None:
        pytest.skip(f"no `ray` script beside {sys.executable} or on PATH")
    gcs, dashboard, client, agent, metrics = free_ports(5)
    # A short private temp dir: Ray's socket paths must stay short, and `ray start` records its address in
    # <temp-dir>/ray_current_cluster, where no other `ray.init()` on the machine looks.
    temp_dir = tempfile.mkdtemp(prefix="rmm-head-", dir="/tmp")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    # No drain on SIGTERM: a test head has nothing to hand over, and draining waits up to 30 s. Without
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray replaces --node-ip-address=127.0.0.1 with the host's outward
    # address and its servers listen on every interface (the job drivers inherit the setting and join on loopback).
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
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
        yield Head(address, Path(temp_dir))
    finally:
        _stop_head(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submitted_job_id(printed: str) -> str:
    match = re.search(r"submitted job (\S+) to ", printed)
    assert match, printed
    return match.group(1)


@pytest.mark.ray
def test_quickstart_job_succeeds_on_a_real_head(ray_head: Head, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)  # the job uploads the working directory
    out = tmp_path / "out"
    overrides = [f"output.dir={out}", "dataset.synthetic.num_users=60", "dataset.synthetic.num_items=40",
                 "dataset.synthetic.interactions_per_user=10", "dataset.synthetic.image_size=8",
                 "model=[{name: lightgcn}]", "tune=null", "train.epochs=2", "train.scaling.num_workers=1",
                 "train.eval.topk=[10,20]",
                 "stages=[data,train,report]"]
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head.address]
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

    assert main(["submit", "--address", ray_head.address, "--status", job_id]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["submit", "--address", ray_head.address, "--logs", job_id]) == 0
    assert "done: outputs in" in capsys.readouterr().out


@pytest.mark.ray
def test_no_wait_then_stop(ray_head: Head, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head.address, "--no-wait",
            "--set", f"output.dir={tmp_path / 'out'}", "--set", "stages=[data]"]
    assert main(args) == 0
    job_id = submitted_job_id(capsys.readouterr().out)
    assert main(["submit", "--address", ray_head.address, "--stop", job_id]) == 0
    assert "stop requested" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        main(["submit", "--address", ray_head.address, "--status", job_id])
        status = capsys.readouterr().out.strip()
        if status in ("STOPPED", "SUCCEEDED", "FAILED"):
            break
        time.sleep(0.5)
    assert status == "STOPPED"


def _probe_wheel(directory: Path) -> Path:
    """A minimal pure-Python wheel (package ``rmm_probe``, no dependencies): pip installs it offline."""
    name, version = "rmm_probe", "0.1"
    files = {f"{name}/__init__.py": b"VALUE = 1\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: rmm-tests\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record + [f"{name}-{version}.dist-info/RECORD,,"])
                                                  + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.mark.ray
def test_job_with_pip_packages_writes_to_a_uri_output_dir(ray_head: Head, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``--pip`` gives the job its own virtualenv (which must still see the cluster's torch and ray), and an
    ``output.dir`` URI receives what the job wrote (the job's node-local mirror is gone with the job)."""
    monkeypatch.chdir(REPO)
    remote = tmp_path / "bucket" / "out"
    args = ["submit", "configs/quickstart.yaml", "--address", ray_head.address, "--pip", str(_probe_wheel(tmp_path)),
            "--set", f"output.dir=file://{remote}", "--set", "stages=[data]",
            "--set", "dataset.synthetic.num_users=30", "--set", "dataset.synthetic.num_items=20",
            "--set", "dataset.synthetic.image_size=8"]
    assert main(args) == 0, capsys.readouterr().out[-3000:]
    assert json.loads((remote / "data" / "synthetic" / "dataset.json").read_text())["counts"]["items"] > 0
    logs = ray_head.temp_dir / "session_latest" / "logs"
    setup = "".join(p.read_text(errors="replace") for p in logs.glob("runtime_env*.log"))
    assert "rmm_probe" in setup, "Ray did not install the --pip wheel into the job's environment"


@pytest.mark.ray
def test_unknown_job_and_missing_config_are_one_line(ray_head: Head, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--address", ray_head.address, "--status", "raysubmit_nosuchjob"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "raysubmit_nosuchjob" in err
    assert main(["submit", "--address", ray_head.address]) == 2
    assert "needs a CONFIG" in capsys.readouterr().err
    assert main(["submit", str(REPO / "configs" / "quickstart.yaml"), "--address", ray_head.address,
                 "--pip", "no-such-requirements.txt"]) == 2
    assert "no-such-requirements.txt" in capsys.readouterr().err


# What a job uploads ------------------------------------------------------------------------------------------

PROJECT_FILES = {"pyproject.toml", "README.md", "configs/probe-job.yaml", "pkg/__init__.py", "pkg/model.py",
                 "pkg/data/ids.csv"}
SECRETS = {".env": "TOKEN=abc\n", ".env.local": "TOKEN=abc\n", "id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
           "deploy/id_ed25519": "key\n", ".aws/credentials": "[default]\n", ".ssh/config": "Host *\n",
           "certs/server.pem": "pem\n", "certs/server.key": "key\n", "gcp-credentials.json": "{}\n",
           "secrets.yaml": "password: x\n", "runs/x": "output\n", ".venv/lib/site.py": "x = 1\n",
           "pkg/__pycache__/model.cpython-311.pyc": "", "rmm_probe.egg-info/PKG-INFO": "x\n"}


def make_project(root: Path, git: bool) -> Path:
    """A project folder: rmm-style package files and a config, beside secrets a job must never upload
    (``secrets.yaml`` only through ``.gitignore``, the rest through the deny-list)."""
    files = {name: f"# {name}\n" for name in PROJECT_FILES} | SECRETS
    files["configs/probe-job.yaml"] = (REPO / "configs" / "quickstart.yaml").read_text()
    files[".gitignore"] = "secrets.yaml\n"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "-C", str(root), "add", "pyproject.toml", "pkg"], check=True)
    return root


def dry_run_listing(printed: str) -> dict[str, str]:
    """``{path: size}`` from the dry run's listing lines."""
    rows = [line.split() for line in printed.splitlines() if line.startswith("  ")]
    return {row[-1]: " ".join(row[:-1]) for row in rows}


@pytest.mark.parametrize("git", [False, pytest.param(True, marks=pytest.mark.skipif(
    shutil.which("git") is None, reason="no git"))], ids=["gitignore-read-by-rmm", "git-ls-files"])
def test_dry_run_lists_the_project_and_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], git: bool) -> None:
    project = make_project(tmp_path / "project", git)
    monkeypatch.chdir(project / "pkg")  # the project root is found above the current directory
    assert main(["submit", "../configs/probe-job.yaml", "--dry-run", "--set", "train.epochs=1"]) == 0  # no --address
    printed = capsys.readouterr().out
    listing = dry_run_listing(printed)
    assert set(listing) == PROJECT_FILES, printed
    total = sum((project / name).stat().st_size for name in PROJECT_FILES)
    assert f"total: {len(PROJECT_FILES)} files, {total / 1024:.1f} KiB" in printed
    assert "python -m rmm.cli run configs/probe-job.yaml --set train.epochs=1 --ray-address auto" in printed


def test_staged_folder_is_the_dry_run_list(tmp_path: Path) -> None:
    """What goes to Ray (the staging folder, the job's working_dir) holds the dry run's files, byte for byte."""
    project = make_project(tmp_path / "project", git=False)
    upload = plan_upload(str(project / "configs" / "probe-job.yaml"), [], start=project)
    staging = stage(upload)
    try:
        staged = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if not p.is_dir()}
        assert staged == set(upload.files) == PROJECT_FILES
        assert all((staging / name).read_bytes() == (project / name).read_bytes() for name in staged)
    finally:
        shutil.rmtree(staging)


def test_submit_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path / "project", git=False)
    outside = tmp_path / "elsewhere" / "job.yaml"
    outside.parent.mkdir()
    outside.write_text((REPO / "configs" / "quickstart.yaml").read_text())
    (project / "runs" / "job.yaml").write_text(outside.read_text())
    monkeypatch.chdir(project)
    cases = [(["submit", str(outside), "--dry-run"], [str(outside), "outside the project root"]),
             (["submit", "runs/job.yaml", "--dry-run"], ["runs/job.yaml", "would not be uploaded"]),
             (["submit", "configs/probe-job.yaml"], ["needs --address", "--dry-run"])]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(word in err for word in words), err
    monkeypatch.chdir(outside.parent)  # no pyproject.toml here or above
    assert main(["submit", "job.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no pyproject.toml" in err, err


@pytest.mark.ray
def test_head_unpacks_exactly_the_dry_run_list(ray_head: Head, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Submitted for real, the job's working directory on the head holds the dry run's files and nothing else
    (the job runs the installed rmm: the project has no rmm package of its own)."""
    project = make_project(tmp_path / "project", git=shutil.which("git") is not None)
    monkeypatch.chdir(project)
    args = ["submit", "configs/probe-job.yaml", "--set", f"output.dir={tmp_path / 'out'}", "--set", "stages=[data]",
            "--set", "dataset.synthetic.num_users=30", "--set", "dataset.synthetic.num_items=20",
            "--set", "dataset.synthetic.image_size=8"]
    assert main([*args, "--dry-run"]) == 0
    listed = set(dry_run_listing(capsys.readouterr().out))
    assert main([*args, "--address", ray_head.address]) == 0, capsys.readouterr().out[-3000:]
    unpacked = [folder for folder in (ray_head.temp_dir / "session_latest" / "runtime_resources").rglob("*")
                if folder.is_dir() and (folder / "configs" / "probe-job.yaml").is_file()]
    assert len(unpacked) == 1, unpacked
    on_head = {p.relative_to(unpacked[0]).as_posix() for p in unpacked[0].rglob("*") if not p.is_dir()}
    assert on_head == listed == PROJECT_FILES
