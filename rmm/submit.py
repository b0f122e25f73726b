"""``rmm submit``: run an rmm command as a job on a Ray cluster through the Job Submission API.

The job's working directory is this project folder (uploaded by Ray, large local folders excluded), so the
config and the ``rmm`` package travel with it; ``--ray-address auto`` makes the job join the cluster it runs on.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ray.job_submission import JobStatus, JobSubmissionClient

_EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]
_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
T = TypeVar("T")


def job_entrypoint(command: str, config: str, overrides: list[str]) -> str:
    """The shell command the job runs on the cluster."""
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    return f"python -m rmm.cli {command} {shlex.quote(config)} {sets} --ray-address auto".strip()


def job_runtime_env(working_dir: Path, pip: list[str]) -> dict[str, Any]:
    """The job's runtime_env: this project folder as its working directory (large local folders excluded) and,
    with ``pip``, packages Ray installs into a per-job virtualenv that still sees the cluster's own packages
    (torch, ray and rmm's dependencies come from the cluster's setup, cluster.yaml). ``pip`` is a list of
    requirements or wheel paths, or one requirements file (``*.txt``)."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": _EXCLUDES,
                           "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}
    if len(pip) == 1 and pip[0].endswith(".txt"):
        requirements = Path(pip[0])
        if not requirements.is_file():
            raise FileNotFoundError(f"--pip {pip[0]}: no such requirements file")
        env["pip"] = str(requirements.resolve())
    elif pip:
        env["pip"] = list(pip)
    return env


def follow(client: JobSubmissionClient, job_id: str, poll_seconds: float = 1.0) -> JobStatus:
    """Print the job's log as it grows until the job ends; returns its final status."""
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = len(logs)
        if status in _TERMINAL:
            return status
        time.sleep(poll_seconds)


def connect(address: str) -> JobSubmissionClient:
    """A job client for the head's dashboard ``address``; an unreachable head is a one-line ValueError."""
    try:
        return JobSubmissionClient(address)
    except ConnectionError as err:
        raise ValueError(f"cannot reach the Ray job server at {address} ({err}); is the head running "
                         f"(`ray start --head`) and is this its dashboard address (port 8265 by default)?") from None


def _job_call(what: str, job_id: str, call: Callable[[str], T]) -> T:
    """Run a client call about ``job_id``; the client's RuntimeError (unknown job, server error) becomes a
    KeyError naming the job, which the CLI prints as one line."""
    try:
        return call(job_id)
    except RuntimeError as err:
        raise KeyError(f"cannot {what} job {job_id!r}: {err}") from None


def submit_command(args: argparse.Namespace) -> int:
    if not (args.status or args.logs or args.stop or args.config):
        raise ValueError("rmm submit needs a CONFIG (or one of --status/--logs/--stop JOB_ID)")
    if args.config:
        config_in_job = _check_config(args.config, args.overrides)
    client = connect(args.address)
    if args.status:
        print(_job_call("get the status of", args.status, client.get_job_status).value)
        return 0
    if args.logs:
        print(_job_call("get the logs of", args.logs, client.get_job_logs), end="")
        return 0
    if args.stop:
        print(f"stop requested: {_job_call('stop', args.stop, client.stop_job)}")
        return 0
    job_id = client.submit_job(entrypoint=job_entrypoint(args.job_command, config_in_job, args.overrides),
                               runtime_env=job_runtime_env(Path.cwd(), getattr(args, "pip", [])))
    print(f"submitted job {job_id} to {args.address}")
    if args.no_wait:
        print(f"follow it with: rmm submit --address {args.address} --logs {job_id}  (or --status / --stop)")
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (rmm submit --address {args.address} --stop {job_id})")
        return 130
    print(f"job {job_id} {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _check_config(path: str, overrides: list[str]) -> str:
    """Validate the config with its overrides here, before anything is uploaded, and return its path relative
    to the working directory (what the job sees)."""
    from rmm.config import load_config

    config = Path(path)
    if not config.is_file():
        raise FileNotFoundError(f"config {config} not found")
    cfg = load_config(config, overrides)  # a bad key or value fails now, with one line, not on the cluster
    if "://" not in cfg.output.dir and not Path(cfg.output.dir).is_absolute():
        print(f"rmm: warning: output.dir {cfg.output.dir!r} is relative: on the cluster it lies in the job's "
              f"temporary working directory; pass --set output.dir=<absolute shared path or URI> to keep the "
              f"outputs", file=sys.stderr)
    working_dir = Path.cwd()
    try:
        return str(config.resolve().relative_to(working_dir))
    except ValueError:
        raise ValueError(f"config {config} must lie inside the working directory {working_dir}, "
                         f"which is what the job uploads") from None
