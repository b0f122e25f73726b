"""The ``rmm`` command line: argument parsing only; the work lives in :mod:`rmm.stages` and friends."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rmm import console
from rmm.config import Config, load_config
from rmm.errors import UserError
from rmm.storage import is_uri

#: Commands that take a CONFIG and run stages with it (``data prepare`` too).
CONFIG_COMMANDS = ("run", "extract", "train", "tune")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    _add_common_args(parser)


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set output.dir=runs/demo (repeatable)")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster instead of starting a local one (e.g. auto, ray://host:10001)")


def _add_fresh_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fresh", action="store_true",
                        help="train from scratch even where a run with the same inputs (identity) has a checkpoint "
                             "or finished; a sweep starts anew")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmm", description="Multimodal recommendation at cluster scale on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray's own output (its workers' lines, Ray Data and Tune progress) "
                             "on the console; without it these go to OUTPUT_DIR/logs/ and the console shows a "
                             "progress bar and a summary line per stage")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run all stages the config names, in order")
    _add_config_args(run)
    _add_fresh_arg(run)

    data = sub.add_parser("data", help="prepare a dataset or show its statistics")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    _add_config_args(data_sub.add_parser("prepare", help="import/generate, filter, split and write a dataset"))
    stats = data_sub.add_parser("stats", help="statistics of a prepared dataset (CONFIG or dataset DIR)")
    stats.add_argument("target", help="a config file or a prepared dataset directory")
    _add_common_args(stats)

    _add_config_args(sub.add_parser("extract", help="Ray Data feature extraction into the feature store"))
    for command, text in (("train", "train each configured model (Ray Train)"),
                          ("tune", "hyperparameter sweep (Ray Tune)")):
        parser_ = sub.add_parser(command, help=text)
        _add_config_args(parser_)
        _add_fresh_arg(parser_)

    report = sub.add_parser("report", help="tables from OUT_DIR/results.json")
    report.add_argument("out_dir", help="output directory of a run")

    recommend = sub.add_parser("recommend", help="top-K items for a user, with titles")
    recommend.add_argument("out_dir", help="output directory of a run")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="user_id (dense id of the prepared dataset)")
    who.add_argument("--all", action="store_true",
                     help="top-K of every user to OUT_DIR/recommendations/top<K>.parquet (a Ray Data batch job)")
    recommend.add_argument("-k", type=int, default=10, help="how many items")
    recommend.add_argument("--run", default=None, help="run_name from results.json (default: the run with the best "
                                                       "validation recall@20, as the report chooses)")
    recommend.add_argument("--explain", action="store_true",
                           help="name, for each recommendation, the user's history items closest to it (cosine on "
                                "the model's item embeddings, else on its content feature)")
    recommend.add_argument("--ray-address", default=None,
                           help="with --all: join this Ray cluster instead of starting a local one")

    submit = sub.add_parser("submit", help="submit a config as a job to a Ray cluster (Job Submission API)")
    submit.add_argument("config", nargs="?", help="YAML config file to run on the cluster")
    submit.add_argument("--address", default=None,
                        help="the head's dashboard (job API) address, e.g. http://localhost:8265 through the SSH "
                             "tunnel of `ray dashboard cluster.yaml`; required unless --dry-run")
    submit.add_argument("--dry-run", action="store_true",
                        help="list the files a job would upload and their total size, then exit; contacts no cluster")
    submit.add_argument("--command", dest="job_command", default="run",
                        choices=["run", "extract", "train", "tune"], help="rmm command the job runs")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                        help="a pip requirement (or wheel path) Ray installs into the job's own environment on "
                             "top of the cluster's; repeatable; a single *.txt names a requirements file")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.add_argument("--status", metavar="JOB_ID", help="print a job's status")
    submit.add_argument("--logs", metavar="JOB_ID", help="print a job's logs")
    submit.add_argument("--stop", metavar="JOB_ID", help="stop a job")
    return parser


def _load(args: argparse.Namespace, path: str | None = None) -> Config:
    cfg = load_config(path or args.config, args.overrides)
    if getattr(args, "ray_address", None):
        cfg = cfg.replace(ray=dataclasses.replace(cfg.ray, address=args.ray_address))
    return cfg


def dispatch(args: argparse.Namespace) -> int:
    """Run the command inside its console session: a command with a config (or ``recommend --all``, which starts
    Ray) logs under its output dir's ``logs/`` and shows bars and summaries; the others log to the console."""
    cfg = _load(args) if args.command in CONFIG_COMMANDS or getattr(args, "data_command", None) == "prepare" else None
    logs_dir = cfg.out_dir / console.LOGS_DIR if cfg is not None else None
    if args.command == "recommend" and args.all and not is_uri(args.out_dir):
        logs_dir = Path(args.out_dir) / console.LOGS_DIR
    with console.session(logs_dir, verbose=args.verbose) as shown:
        return _dispatch(args, cfg, shown)


def _dispatch(args: argparse.Namespace, cfg: Config | None, shown: console.Console) -> int:
    from rmm import stages

    if args.command == "run" and cfg is not None:
        stages.run_stages(cfg, fresh=args.fresh)
        _show_runs(cfg, shown)
        shown.message(f"done: outputs in {cfg.storage.where()} (report: {cfg.storage.where('report.md')}; "
                      f"logs: {shown.logs_dir})")
    elif args.command == "data" and cfg is not None:
        stages.run_stage(cfg, "data")
    elif args.command == "data":
        from rmm.data.prepare import dataset_stats

        target = Path(args.target)
        directory = _load(args, args.target).dataset_dir if target.is_file() else target
        print(json.dumps(dataset_stats(directory), indent=2))
    elif args.command in ("extract", "train", "tune") and cfg is not None:
        result = stages.run_stage(cfg, args.command, fresh=getattr(args, "fresh", False))
        return 0 if result is not None else 1
    elif args.command == "report":
        print(f"report written to {stages.report_location(args.out_dir)}")
    elif args.command == "recommend" and args.all:
        from rmm.recommend_batch import recommend_all

        path = recommend_all(args.out_dir, args.k, args.run, ray_address=args.ray_address)
        print(f"top-{args.k} of every user written to {path}")
    elif args.command == "recommend":
        from rmm.recommend import recommend_command

        return recommend_command(args)
    elif args.command == "submit":
        from rmm.submit import submit_command

        return submit_command(args)
    return 0


def _show_runs(cfg: Config, shown: console.Console) -> None:
    """The table of the runs in results.json: validation metric each run early-stopped on, test metrics at its
    cut-off."""
    from rmm.runs import RESULTS_FILE, load_results

    if not (cfg.out_dir / RESULTS_FILE).exists():
        return
    records = load_results(cfg.out_dir)
    if not records:
        return
    metric = records[0].train_metric or "recall@20"
    cutoff = metric.partition("@")[2]
    tested = [f"recall@{cutoff}", f"ndcg@{cutoff}"]
    rows = [[r.run_name, r.stage, _number(r.valid.get(metric)), *(_number(r.test.get(m)) for m in tested)]
            for r in records]
    shown.table(["run", "stage", f"valid {metric}", *(f"test {m}" for m in tested)], rows)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except UserError as err:
        if os.environ.get("RMM_DEBUG"):
            raise
        print(f"rmm: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
