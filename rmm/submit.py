"""``rmm submit``: run an rmm command as a job on a Ray cluster through the Job Submission API.

What a job uploads is decided here, once, and is exactly what ``rmm submit CONFIG --dry-run`` lists: the project
root (the folder holding ``pyproject.toml``, found by walking up from the current directory), minus what its
``.gitignore`` ignores (``git ls-files`` in a git checkout, else the root's ``.gitignore`` read here) and minus
:data:`DENY_LIST`, which always applies (keys, credentials, ``.env`` files, virtualenvs, run outputs). Those
files are copied into a temporary staging folder, and that folder is the job's ``working_dir``, so Ray's own
packager has nothing else to add. The config travels with them; ``--ray-address auto`` makes the job join the
cluster it runs on.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ray.job_submission import JobStatus, JobSubmissionClient

from rmm.errors import ConfigError, NotFoundError, UnknownNameError

log = logging.getLogger(__name__)

#: Never uploaded, whatever .gitignore says: matched (case-insensitively, fnmatch) against every component of a
#: file's path, so ``.aws`` or ``runs`` exclude those folders at any depth. Secrets first, then what a job never
#: needs, then the ignore files themselves: Ray's packager would apply those again to the staging folder.
DENY_LIST: tuple[str, ...] = (
    ".env*", "*.pem", "*.key", "id_*", ".aws", ".ssh", "*credentials*",
    "runs", ".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache",
    ".gitignore", ".rayignore",
)
_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    """What a job uploads: ``files`` (POSIX paths relative to ``root``, sorted) and the config among them."""

    root: Path
    files: tuple[str, ...]
    config: str

    @property
    def total_bytes(self) -> int:
        return sum((self.root / name).stat().st_size for name in self.files)


def project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` that holds a ``pyproject.toml``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise NotFoundError(f"no pyproject.toml in {start} or any folder above it: rmm submit uploads the project root "
                        f"(the folder holding pyproject.toml); run it from inside the project")


def upload_files(root: Path) -> tuple[str, ...]:
    """The files ``rmm submit`` uploads from ``root``: not ignored by git (or by the root's .gitignore when
    ``root`` is no git checkout), nor by the root's ``.rayignore``, nor by :data:`DENY_LIST`; regular files only
    (a symbolic link counts when it points at a file of the tree that would be uploaded itself)."""
    root = root.resolve()
    listed = _git_files(root)
    if listed is None:
        listed = _walk(root, _ignore_rules(root / ".gitignore"))
    rayignore = _ignore_rules(root / ".rayignore")
    kept = {name for name in listed
            if not _denied(name) and not _ignored(name, rayignore) and _regular_inside(root, name)}
    # a link must not smuggle in a file that is excluded under its own name
    return tuple(sorted(name for name in kept if not (root / name).is_symlink()
                        or (root / name).resolve().relative_to(root).as_posix() in kept))


def plan_upload(config_path: str, overrides: Sequence[str], start: Path | None = None) -> Upload:
    """List the upload from the project root above ``start`` (default: the current directory); the config must
    be one of the uploaded files, and is loaded with its overrides here, before anything is sent."""
    root = project_root(start or Path.cwd())
    config = Path(config_path)
    if not config.is_file():
        raise NotFoundError(f"config {config} not found")
    try:
        name = config.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(f"config {config_path} lies outside the project root {root}, which is what rmm submit "
                          f"uploads; move it into the project (e.g. configs/)") from None
    files = upload_files(root)
    if name not in files:
        raise ConfigError(f"config {config_path} would not be uploaded: .gitignore, .rayignore or rmm submit's "
                          f"deny-list ({', '.join(DENY_LIST)}) excludes {name}; move or rename it")
    _check_config(config, overrides)
    return Upload(root, files, name)


def stage(upload: Upload) -> Path:
    """Copy the upload into a new temporary folder (the caller removes it) and return that folder."""
    staging = Path(tempfile.mkdtemp(prefix="rmm-submit-"))
    for name in upload.files:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(upload.root / name, target)
    return staging


def print_dry_run(upload: Upload, entrypoint: str) -> None:
    print(f"rmm submit --dry-run: a job would upload these {len(upload.files)} files from {upload.root} "
          f"(nothing was sent):")
    for name in upload.files:
        print(f"  {_size((upload.root / name).stat().st_size):>10}  {name}")
    print(f"total: {len(upload.files)} files, {_size(upload.total_bytes)}")
    print(f"the job would run: {entrypoint}")


def job_entrypoint(command: str, config: str, overrides: list[str]) -> str:
    """The shell command the job runs on the cluster."""
    sets = [f"--set {shlex.quote(o)}" for o in overrides]
    return " ".join(["python -m rmm.cli", command, shlex.quote(config), *sets, "--ray-address auto"])


def job_runtime_env(working_dir: Path, pip: list[str]) -> dict[str, Any]:
    """The job's runtime_env: ``working_dir`` (the staging folder) as its working directory and, with ``pip``,
    packages Ray installs into a per-job virtualenv that still sees the cluster's own packages (torch, ray and
    rmm's dependencies come from the cluster's setup, cluster.yaml). ``pip`` is a list of requirements or wheel
    paths, or one requirements file (``*.txt``)."""
    env: dict[str, Any] = {"working_dir": str(working_dir),
                           "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}
    if len(pip) == 1 and pip[0].endswith(".txt"):
        requirements = Path(pip[0])
        if not requirements.is_file():
            raise NotFoundError(f"--pip {pip[0]}: no such requirements file")
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
    """A job client for the head's dashboard ``address``; an unreachable head is a one-line error."""
    try:
        return JobSubmissionClient(address)
    except ConnectionError as err:
        raise ConfigError(f"cannot reach the Ray job server at {address} ({err}); is the head running (`ray start "
                          f"--head`), is the tunnel of `ray dashboard cluster.yaml` open, and is this its dashboard "
                          f"address (port 8265 by default)?") from None


def _job_call(what: str, job_id: str, call: Callable[[str], T]) -> T:
    """Run a client call about ``job_id``; the client's RuntimeError (unknown job, server error) becomes an
    error naming the job, which the CLI prints as one line."""
    try:
        return call(job_id)
    except RuntimeError as err:
        raise UnknownNameError(f"cannot {what} job {job_id!r}: {err}") from None


def submit_command(args: argparse.Namespace) -> int:
    if not (args.status or args.logs or args.stop or args.config):
        raise ConfigError("rmm submit needs a CONFIG (or one of --status/--logs/--stop JOB_ID)")
    if args.dry_run:
        if not args.config:
            raise ConfigError("rmm submit --dry-run needs a CONFIG: it lists what submitting that config uploads")
        upload = plan_upload(args.config, args.overrides)
        print_dry_run(upload, job_entrypoint(args.job_command, upload.config, args.overrides))
        return 0
    if not args.address:
        raise ConfigError("rmm submit needs --address, the head's dashboard (e.g. http://localhost:8265 through "
                          "`ray dashboard cluster.yaml`); --dry-run lists the upload without one")
    if args.status or args.logs or args.stop:
        client = connect(args.address)
        if args.status:
            print(_job_call("get the status of", args.status, client.get_job_status).value)
        elif args.logs:
            print(_job_call("get the logs of", args.logs, client.get_job_logs), end="")
        else:
            print(f"stop requested: {_job_call('stop', args.stop, client.stop_job)}")
        return 0
    upload = plan_upload(args.config, args.overrides)
    client = connect(args.address)
    staging = stage(upload)
    try:
        job_id = client.submit_job(entrypoint=job_entrypoint(args.job_command, upload.config, args.overrides),
                                   runtime_env=job_runtime_env(staging, args.pip))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # Ray packed and uploaded it inside submit_job
    print(f"submitted job {job_id} to {args.address} ({len(upload.files)} files, {_size(upload.total_bytes)} "
          f"from {upload.root})")
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


def _check_config(config: Path, overrides: Sequence[str]) -> None:
    """Load the config with its overrides (a bad key or value fails now, with one line, not on the cluster)."""
    from rmm.config import load_config

    cfg = load_config(config, list(overrides))
    if "://" not in cfg.output.dir and not Path(cfg.output.dir).is_absolute():
        print(f"rmm: warning: output.dir {cfg.output.dir!r} is relative: on the cluster it lies in the job's "
              f"temporary working directory; pass --set output.dir=<absolute shared path or URI> to keep the "
              f"outputs", file=sys.stderr)


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked, not ignored files under ``root`` (git's own rules: every .gitignore, the
    repository's info/exclude and the user's global excludes); None when ``root`` is no git checkout or git is
    missing."""
    command = ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    try:
        listed = subprocess.run(command, capture_output=True, check=True, timeout=120).stdout
    except FileNotFoundError:
        log.debug("git is not installed; reading %s/.gitignore instead", root)
        return None
    except subprocess.CalledProcessError as err:
        log.debug("git ls-files failed in %s (%s); reading its .gitignore instead", root,
                  err.stderr.decode(errors="replace").strip())
        return None
    return [os.fsdecode(name) for name in listed.split(b"\0") if name]


@dataclass(frozen=True)
class _Rule:
    """One .gitignore line: an fnmatch ``pattern`` matched against the whole relative path when ``anchored``
    (it held a slash before its end), else against the last component."""

    pattern: str
    negate: bool
    dir_only: bool
    anchored: bool


def _ignore_rules(path: Path) -> list[_Rule]:
    """The rules of one ignore file (.gitignore syntax, read with fnmatch semantics); none if it is absent."""
    if not path.is_file():
        return []
    rules = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:] if negate else line
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        while line.startswith("**/"):
            line = line[3:]
        anchored = "/" in line
        if line:
            rules.append(_Rule(line.lstrip("/"), negate, dir_only, anchored))
    return rules


def _ignored(name: str, rules: list[_Rule]) -> bool:
    """Whether ``rules`` ignore the file ``name`` or a folder above it (the last matching rule wins, and nothing
    below an ignored folder comes back, as in git)."""
    if not rules:
        return False
    parts = name.split("/")
    for depth in range(1, len(parts) + 1):
        if _matches("/".join(parts[:depth]), depth < len(parts), rules):
            return True
    return False


def _matches(name: str, is_dir: bool, rules: Iterable[_Rule]) -> bool:
    ignored = False
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if fnmatch.fnmatchcase(name if rule.anchored else name.rsplit("/", 1)[-1], rule.pattern):
            ignored = not rule.negate
    return ignored


def _walk(root: Path, rules: list[_Rule]) -> list[str]:
    """Files under ``root`` that neither ``rules`` nor :data:`DENY_LIST` exclude (excluded folders are not
    entered, so a large ``.venv`` costs nothing)."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root).as_posix()
        prefix = "" if here == "." else f"{here}/"
        dirs[:] = [d for d in dirs if not _denied(d) and not _matches(prefix + d, True, rules)]
        found += [prefix + f for f in files if not _matches(prefix + f, False, rules)]
    return found


def _denied(name: str) -> bool:
    return any(fnmatch.fnmatchcase(part.lower(), pattern) for part in name.split("/") for pattern in DENY_LIST)


def _regular_inside(root: Path, name: str) -> bool:
    """A regular file (or a link to one) that lies inside ``root`` once links are resolved."""
    path = root / name
    return path.is_file() and path.resolve().is_relative_to(root)


def _size(num_bytes: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size, index = float(num_bytes), 0
    while size >= 1024 and index < len(units) - 1:
        size, index = size / 1024, index + 1
    return f"{num_bytes} B" if index == 0 else f"{size:.1f} {units[index]}"
