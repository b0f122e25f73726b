"""``rmm submit``: run an rmm command as a job on a Ray cluster through the Job Submission API.

The job's working directory is this project folder (uploaded by Ray, large local folders excluded), so the
config and the ``rmm`` package travel with it; ``--ray-address auto`` makes the job join the cluster it runs on.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

_EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]
_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def job_entrypoint(command: str, config: str, overrides: list[str]) -> str:
    """The shell command the job runs on the cluster."""
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    return f"python -m rmm.cli {command} {shlex.quote(config)} {sets} --ray-address auto".strip()


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


def submit_command(args: argparse.Namespace) -> int:
    client = JobSubmissionClient(args.address)
    if args.status:
        print(client.get_job_status(args.status).value)
        return 0
    if args.logs:
        print(client.get_job_logs(args.logs), end="")
        return 0
    if args.stop:
        print(f"stop requested: {client.stop_job(args.stop)}")
        return 0
    if not args.config:
        raise ValueError("rmm submit needs a CONFIG (or one of --status/--logs/--stop JOB_ID)")
    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"config {config} not found")
    working_dir = Path.cwd()
    try:
        config_in_job = str(config.resolve().relative_to(working_dir))
    except ValueError:
        raise ValueError(f"config {config} must lie inside the working directory {working_dir}, "
                         f"which is what the job uploads") from None
    job_id = client.submit_job(
        entrypoint=job_entrypoint(args.job_command, config_in_job, args.overrides),
        runtime_env={"working_dir": str(working_dir), "excludes": _EXCLUDES,
                     "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}},
    )
    print(f"submitted job {job_id} to {args.address}")
    if args.no_wait:
        return 0
    status = follow(client, job_id)
    print(f"job {job_id} {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1
