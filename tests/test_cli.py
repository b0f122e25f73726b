"""The command line: help lists every command; bad input ends with one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmm.cli import main


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "rmm.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "data", "extract", "train", "tune", "report", "recommend", "submit"):
        assert f"    {command}" in out.stdout


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_malformed_yaml_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset:\n  name: [unclosed\n")
    code, err = run_cli(["data", "prepare", str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rmm: error: malformed YAML in") and "bad.yaml" in err


def test_unknown_model_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": [{"name": "lightgnc"}]}))
    code, err = run_cli(["train", str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Unknown model 'lightgnc'" in err and "lightgcn" in err


def test_interaction_naming_unknown_item_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t4\t{100 + u * 10 + i}\n" for u in (1, 2) for i in (1, 2, 99)))
    flags = "|".join(["0"] * 19)
    (raw / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in (1, 2)),
                                encoding="latin-1")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"name": "ml", "source": "movielens", "path": str(raw),
                                                "user_core": 0, "item_core": 0},
                                    "output": {"dir": str(tmp_path / "out")}}))
    code, err = run_cli(["data", "prepare", str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "u.data" in err and "99" in err


def test_data_prepare_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"synthetic": {"num_users": 40, "num_items": 30}},
                                    "output": {"dir": str(tmp_path / "out")}}))
    assert main(["data", "prepare", str(path)]) == 0
    assert (tmp_path / "out" / "data" / "synthetic" / "dataset.json").exists()
    summary = capsys.readouterr().out.splitlines()  # the stage's one line; its info records in the log
    assert len(summary) == 1 and summary[0].startswith("data     synthetic: ")
    assert f"-> {tmp_path / 'out' / 'data' / 'synthetic'}" in summary[0]
    assert "stage data" in (tmp_path / "out" / "logs" / "rmm.log").read_text()
    assert main(["data", "stats", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    info = json.loads((tmp_path / "out" / "data" / "synthetic" / "dataset.json").read_text())
    assert stats["users"] == info["counts"]["users"] > 0


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a UserError is answered with one line: a plain ValueError is rmm's bug and must surface whole."""
    import rmm.stages

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(rmm.stages, "run_stage", broken)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"output": {"dir": str(tmp_path / "out")}}))
    with pytest.raises(ValueError, match="an internal invariant broke"):
        main(["data", "prepare", str(path)])


def test_cluster_launcher_keeps_the_job_api_on_loopback_and_secrets_home() -> None:
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in yaml.safe_dump(config)
    assert {".env*", "*.pem", "*.key", "id_*", ".aws", ".ssh", "*credentials*"} <= set(config["rsync_exclude"])
