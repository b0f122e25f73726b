"""rmm's fixed cost: the same small one-worker training run as a plain call of ``rmm.train.loop.fit`` in a script
(no Ray), through ``rmm train`` (which trains a one-worker run on a local machine in its own process,
``train.scaling.launcher: auto``) and through ``rmm train`` in Ray Train (``launcher: ray_train``: a local Ray,
Ray Train's controller and worker); wall time, CPU time and peak PSS of each, interleaved.

    .venv/bin/python bench/overhead.py                       # 3 repeats: fit, rmm train, rmm train in Ray Train
    .venv/bin/python bench/overhead.py --other-ray --variant "dashboard on=--set ray.dashboard=true" \
        --baseline /tmp/rmm-head                             # + a variant, another Ray running, an older rmm
    .venv/bin/python bench/overhead.py --floor               # + Ray's own floor, no rmm in it

Each variant runs as its own command from a fresh interpreter, so imports and process start-up count in every
row. Memory is the PSS (proportional set size: shared pages split between the processes sharing them) summed
over the command's process tree, sampled every ``--interval`` seconds, plus the processes Ray starts outside that
tree (daemonised servers, reparented workers): those of this user whose command line names the Ray session
directory the tree's processes name, so another Ray instance on the machine is never counted. CPU s sums the
user + system time of the same processes (as last sampled): on a loaded machine it moves far less than the wall
time. The table gives the median over the repeats and the difference to the ``fit`` row; ``tracebacks`` counts
"Traceback" in the commands' output, ``left after exit`` the session's processes alive 1 s after the command.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SESSION_DIR = re.compile(r"(/[^\s=,'\"]*/session_[0-9_\-]+)")

#: The in-process baseline: load the prepared dataset and call the training loop with the config's settings.
FIT_SCRIPT = textwrap.dedent("""
    import sys
    from rmm.config import load_config
    from rmm.data.schema import load_dataset
    from rmm.train.loop import fit

    cfg = load_config(sys.argv[1])
    result = fit(cfg.model[0], cfg.train, load_dataset(cfg.dataset_dir), {})
    print("test", result.test)
""")

#: ``--floor``: what any Ray Train command pays on this machine, whatever it trains (no rmm, no data): a local Ray
#: started as rmm starts one (no dashboard, loopback, rmm's local-Ray environment settings), then shut down; and
#: the same with a one-worker ``TorchTrainer`` whose training function does nothing (Ray Train's controller,
#: worker group and torch's process group set up and torn down).
RAY_FLOOR = textwrap.dedent("""
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    ray.shutdown()
""")
RAY_TRAIN_FLOOR = textwrap.dedent("""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    import sys
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(storage_path=sys.argv[1])).fit()
    ray.shutdown()
""")

#: Another Ray instance on the machine, as other users' sessions would be (``--other-ray``).
OTHER_RAY = "import time, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); time.sleep(1e6)"


@dataclass(frozen=True)
class Sample:
    """One run of one variant: command wall time, CPU seconds and peak summed PSS, processes seen, those left
    after exit, tracebacks printed, and each process's own peak PSS by label (:func:`label`)."""

    wall_s: float
    cpu_s: float
    peak_pss_gb: float
    processes: int
    lingering: int
    tracebacks: int
    by_label: dict[str, float]


def write_config(root: Path, args: argparse.Namespace) -> Path:
    """A synthetic dataset and one BPR-MF (or ``--model``) run of ``--epochs`` on one worker."""
    config = {
        "stages": ["data", "train"],
        "dataset": {"name": "overhead", "source": "synthetic", "split": "random_ratio", "seed": 7,
                    "synthetic": {"num_users": args.users, "num_items": args.items,
                                  "interactions_per_user": args.per_user, "image_size": 8}},
        "model": [{"name": args.model}],
        "train": {"epochs": args.epochs, "batch_size": 1024, "seed": 7,
                  "eval": {"every": args.epochs, "patience": 10, "topk": [10, 20]},
                  "scaling": {"num_workers": 1, "cpus_per_worker": 1}},
        "output": {"dir": str(root / "out")},
    }
    path = root / "overhead.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ray_session(processes: list[psutil.Process]) -> str | None:
    """The Ray session directory named on the command line of one of ``processes`` (None before Ray starts)."""
    for process in processes:
        try:
            match = SESSION_DIR.search(" ".join(process.cmdline()))
        except psutil.Error:
            continue
        if match:
            return match.group(1)
    return None


def members(root: psutil.Process, session: str | None, since: float) -> list[psutil.Process]:
    """``root``, its descendants and this user's processes started since ``since`` that name ``session``."""
    found = {root.pid: root}
    try:
        found.update({child.pid: child for child in root.children(recursive=True)})
    except psutil.Error:
        pass
    if session:
        user = psutil.Process().username()
        for process in psutil.process_iter(["username", "create_time", "cmdline"]):
            info = process.info
            if (info["username"] == user and (info["create_time"] or 0) >= since - 1
                    and session in " ".join(info["cmdline"] or ())):
                found.setdefault(process.pid, process)
    return list(found.values())


def label(process: psutil.Process) -> str:
    """A short name for a process: the executable or Python module it runs, or Ray's ``ray::Task`` title."""
    try:
        words = process.cmdline()
    except psutil.Error:
        return "?"
    title = " ".join(words[:1])
    if title.startswith("ray::") or not words:
        return title.split(" ")[0] or process.name()
    if "-m" in words:
        return words[words.index("-m") + 1]
    scripts = [Path(w).name for w in words[1:] if w.endswith(".py")]
    return scripts[0] if scripts else Path(words[0]).name


def pss_bytes(processes: list[psutil.Process], peaks: dict[int, tuple[str, int]], cpu: dict[int, float]) -> int:
    """Summed PSS of ``processes``; each one's peak is kept in ``peaks`` (pid -> label, bytes) and its CPU
    seconds so far in ``cpu`` (pid -> user + system)."""
    total = 0
    for process in processes:
        try:
            pss = process.memory_full_info().pss
            times = process.cpu_times()
        except psutil.Error:  # gone between listing and reading: it holds nothing any more
            continue
        cpu[process.pid] = times.user + times.system
        total += pss
        if pss > peaks.get(process.pid, ("", -1))[1]:
            peaks[process.pid] = (label(process), pss)
    return total


def measure(command: list[str], checkout: Path, extra_env: dict[str, str], env: dict[str, str],
            interval: float) -> Sample:
    """Run ``command`` with the rmm of ``checkout`` to its end, sampling the summed PSS of its processes every
    ``interval`` seconds."""
    log = tempfile.TemporaryFile("w+")
    start = time.time()
    env = {**env, **extra_env, "PYTHONPATH": str(checkout)}
    child = subprocess.Popen(command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(child.pid)
    session: str | None = None
    peak, seen, peaks, cpu = 0, set(), {}, {}
    while child.poll() is None:
        processes = members(root, session, start)
        session = session or ray_session(processes)
        seen.update(p.pid for p in processes)
        peak = max(peak, pss_bytes(processes, peaks, cpu))
        time.sleep(interval)
    wall = time.time() - start
    log.seek(0)
    output = log.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{output[-4000:]}")
    time.sleep(1.0)
    lingering = [p for p in members(root, session, start) if p.pid != root.pid and p.is_running()] if session else []
    by_label: dict[str, float] = {}
    for name, pss in peaks.values():
        by_label[name] = by_label.get(name, 0.0) + pss / 1e9
    return Sample(wall, sum(cpu.values()), peak / 1e9, len(seen), len(lingering), output.count("Traceback"), by_label)


def variants(config: Path, extra: list[str], baseline: Path | None,
             floor: bool = False) -> dict[str, tuple[list[str], Path, dict]]:
    """Variant name -> (command, rmm checkout it runs, environment it adds): the plain ``fit`` call, ``rmm train`` (in
    process), ``rmm train`` in Ray Train, each ``--variant NAME=ARGS`` and ``rmm train`` of the ``--baseline``
    checkout, with ``RAY_ADDRESS=local`` (an older rmm would otherwise join, and fail on, another Ray on the
    machine); with ``floor``, Ray's own floor (:data:`RAY_FLOOR`, :data:`RAY_TRAIN_FLOOR`)."""
    python = sys.executable
    train = [python, "-m", "rmm.cli", "train", str(config), "--fresh"]
    found = {"fit (no Ray)": ([python, "-c", FIT_SCRIPT, str(config)], REPO, {}), "rmm train": (train, REPO, {}),
             "rmm train, Ray Train": ([*train, "--set", "train.scaling.launcher=ray_train"], REPO, {})}
    for spec in extra:
        name, _, rest = spec.partition("=")
        found[f"rmm train, {name}"] = ([*train, *rest.split()], REPO, {})
    if baseline is not None:
        found[f"rmm train of {baseline}"] = (train, baseline, {"RAY_ADDRESS": "local"})
    if floor:
        from rmm.cluster import _LOCAL_ENV as local_ray_env  # the settings rmm's own local Ray runs with

        found["floor: Ray start + stop (no training)"] = ([python, "-c", RAY_FLOOR], REPO, local_ray_env)
        found["floor: no-op TorchTrainer, 1 worker"] = (
            [python, "-c", RAY_TRAIN_FLOOR, str(config.parent / "floor-results")], REPO, local_ray_env)
    return found


def run_interleaved(commands: dict[str, tuple[list[str], Path, dict]], env: dict[str, str],
                    args: argparse.Namespace) -> dict[str, list[Sample]]:
    """Every variant once per repeat, in turn, so that the machine's load falls on all of them alike. A run that
    fails (e.g. to Ray's OOM killer on a shared machine) is left out, and said so; the others still count."""
    samples: dict[str, list[Sample]] = {name: [] for name in commands}
    for repeat in range(args.repeats):
        for name, command in commands.items():
            try:
                done = measure(*command, env, args.interval)
            except RuntimeError as err:
                print(f"repeat {repeat}: {name}: left out, {str(err)[-300:]}", file=sys.stderr, flush=True)
                continue
            samples[name].append(done)
            print(f"repeat {repeat}: {name}: {done.wall_s:.1f} s, {done.cpu_s:.1f} CPU s, {done.peak_pss_gb:.2f} GB",
                  file=sys.stderr, flush=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bprmf")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.25, help="PSS sampling period, seconds")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="another rmm train variant, e.g. 'dashboard=--set ray.dashboard=true'")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another rmm checkout (e.g. `git archive HEAD`) whose `rmm train` runs as a variant too")
    parser.add_argument("--floor", action="store_true",
                        help="also time Ray's own floor: start + stop, and a no-op one-worker TorchTrainer")
    parser.add_argument("--other-ray", action="store_true",
                        help="keep another local Ray instance running on the machine meanwhile (not measured)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rmm-overhead-"))
    config = write_config(root, args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # as rmm's local Ray; --other-ray too
    subprocess.run([sys.executable, "-m", "rmm.cli", "data", "prepare", str(config)], cwd=REPO, env=env,
                   check=True, capture_output=True)
    commands = variants(config, args.variant, args.baseline, args.floor)
    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], env=env) if args.other_ray else None
    try:
        samples = run_interleaved(commands, env, args)
    finally:
        if other is not None:
            other.terminate()
            other.wait()
    load = os.getloadavg()
    print(f"{args.model}, {args.users} users x {args.items} items x {args.per_user} interactions, {args.epochs} "
          f"epochs, 1 worker x 1 CPU; median of {args.repeats} interleaved repeats; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs"
          f"{'; another Ray instance running' if args.other_ray else ''}\n")
    base = {key: statistics.median(getattr(s, key) for s in samples["fit (no Ray)"])
            for key in ("wall_s", "cpu_s", "peak_pss_gb")}
    print("| variant | wall s | CPU s | peak PSS GB | + wall s | + CPU s | + PSS GB | processes | left after exit | "
          "tracebacks |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in samples.items():
        if not runs:
            print(f"| {name} | failed in every repeat |")
            continue
        median = {key: statistics.median(getattr(s, key) for s in runs) for key in base}
        print(f"| {name} | {median['wall_s']:.1f} | {median['cpu_s']:.1f} | {median['peak_pss_gb']:.2f} | "
              f"{median['wall_s'] - base['wall_s']:+.1f} | {median['cpu_s'] - base['cpu_s']:+.1f} | "
              f"{median['peak_pss_gb'] - base['peak_pss_gb']:+.2f} | {max(s.processes for s in runs)} | "
              f"{max(s.lingering for s in runs)} | {sum(s.tracebacks for s in runs)} |")
    print("\nPeak PSS per process kind (GB, summed over processes of that kind; last repeat; the per-process peaks "
          "need not coincide):\n")
    last = {name: runs[-1].by_label for name, runs in samples.items() if runs}
    kinds = sorted({kind for peaks in last.values() for kind in peaks},
                   key=lambda kind: -max(peaks.get(kind, 0.0) for peaks in last.values()))
    print(f"| process | {' | '.join(last)} |")
    print(f"|---|{'---|' * len(last)}")
    for kind in kinds:
        cells = [f"{peaks[kind]:.3f}" if kind in peaks else "" for peaks in last.values()]
        print(f"| {kind} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
