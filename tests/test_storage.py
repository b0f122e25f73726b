"""Outputs at a URI: the mirror sync rules, and a whole run whose output.dir is a URI that a "new node" (an empty
mirror) reads back, on a ``file://`` URI and on ``s3://`` served by a local moto server (a real S3 HTTP API on
loopback; pyarrow's S3 client talks to it exactly as to AWS)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FileSelector, FileType

from rmm.storage import RAY_RESULTS_DIR, Storage, filesystem, join_location, read_text, write_text


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3 server for this module: ``host:port``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])  # s3: starts a local server
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    """An empty output location of each kind, and a way to look inside it."""
    if request.param == "file":
        return Remote(f"file://{tmp_path}/bucket/run", tmp_path / "bucket" / "run")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"rmm-{uuid.uuid4().hex[:12]}"
    location = f"s3://{bucket}/run?endpoint_override=http://{endpoint}&region=us-east-1&allow_bucket_creation=true"
    fs, _ = filesystem(location)
    fs.create_dir(bucket)
    return Remote(location, None)


@dataclass(frozen=True)
class Remote:
    location: str
    path: Path | None  # the local directory behind a file:// location

    def read(self, relative: str) -> str | None:
        return read_text(join_location(self.location, relative))

    def exists(self, relative: str) -> bool:
        fs, root = filesystem(self.location)
        return fs.get_file_info(f"{root}/{relative}").type != FileType.NotFound

    def listdir(self, relative: str) -> list[str]:
        fs, root = filesystem(self.location)
        return [info.base_name for info in fs.get_file_info(FileSelector(f"{root}/{relative}"))]

    def delete(self, relative: str) -> None:
        fs, root = filesystem(self.location)
        fs.delete_file(f"{root}/{relative}")


@pytest.fixture()
def mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's node-local cache (mirrors live under it)."""
    cache = tmp_path / "node-cache"
    monkeypatch.setenv("RMM_CACHE", str(cache))
    return cache


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_push_and_pull_copy_only_new_or_changed_files(tmp_path: Path, mirrors: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "bucket" / "run"
    storage = Storage(f"file://{remote}")
    assert storage.is_remote
    _write(storage.local / "results.json", "{}")
    _write(storage.local / "runs" / "a" / "run.json", "1")
    _write(storage.local / RAY_RESULTS_DIR / "a" / "checkpoint", "ray writes this to the URI itself")
    assert storage.push() == 2
    assert (remote / "runs" / "a" / "run.json").read_text() == "1"
    assert not (remote / RAY_RESULTS_DIR).exists()
    assert storage.push() == 0  # nothing changed

    _write(storage.local / "runs" / "a" / "run.json", "22")
    assert storage.push() == 1 and (remote / "runs" / "a" / "run.json").read_text() == "22"

    # Another node: an empty mirror pulls everything once, then nothing, and pushes nothing back.
    first_mirror = storage.local
    monkeypatch.setenv("RMM_CACHE", str(tmp_path / "other-node"))
    other = Storage(storage.location)
    assert other.local != first_mirror and first_mirror.is_relative_to(mirrors)
    assert other.pull() == 2 and (other.local / "runs" / "a" / "run.json").read_text() == "22"
    assert other.pull() == 0 and other.push() == 0
    _write(remote / "runs" / "b" / "run.json", "written by a worker elsewhere")
    assert other.pull("runs/b/run.json") == 1 and (other.local / "runs" / "b" / "run.json").exists()


def test_push_with_delete_makes_the_remote_directory_match_the_mirror(tmp_path: Path, mirrors: Path) -> None:
    remote = tmp_path / "bucket"
    storage = Storage(f"file://{remote}")
    for name in ("part-1.parquet", "part-2.parquet"):
        _write(storage.local / "features" / "f" / name, name)
    _write(storage.local / "results.json", "{}")
    storage.push()
    (storage.local / "features" / "f" / "part-2.parquet").unlink()
    (storage.local / "results.json").unlink()
    storage.push("features/f", delete=True)
    assert sorted(p.name for p in (remote / "features" / "f").iterdir()) == ["part-1.parquet"]
    assert (remote / "results.json").exists()  # outside the pushed directory: untouched


def test_a_local_location_is_its_own_directory_and_never_syncs(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "out"))
    assert not storage.is_remote and storage.local == tmp_path / "out"
    assert storage.pull() == 0 and storage.push() == 0
    assert storage.where("report.md") == str((tmp_path / "out" / "report.md").resolve())


def test_locations_join_and_text_round_trips(tmp_path: Path) -> None:
    assert join_location("s3://b/run?endpoint_override=localhost:9000&scheme=http", "tune/x") == \
        "s3://b/run/tune/x?endpoint_override=localhost:9000&scheme=http"
    assert join_location("/data/out/", "tune") == "/data/out/tune"
    target = f"file://{tmp_path}/a/b.json"
    assert read_text(target) is None
    write_text(target, "hello")
    assert read_text(target) == "hello" == (tmp_path / "a" / "b.json").read_text()
    with pytest.raises(ValueError, match="nosuchscheme://x"):
        filesystem("nosuchscheme://x")


def test_a_failing_stage_still_pushes_what_it_wrote_and_raises_its_own_error(tmp_path: Path, remote: Remote,
                                                                           mirrors: Path) -> None:
    from rmm.config import load_config
    from rmm.features.store import FeatureNotFoundError
    from rmm.stages import run_stage

    config = tmp_path / "config.yaml"
    config.write_text(f"""
dataset: {{name: synthetic, source: synthetic, synthetic: {{num_users: 30, num_items: 20, image_size: 8}}}}
model: [{{name: vbpr, features: [no_such_feature]}}]
output: {{dir: "{remote.location}"}}
""")
    cfg = load_config(config)
    run_stage(cfg, "data")
    assert remote.exists("data/synthetic/interactions.parquet")
    remote.delete("config.yaml")  # the train stage writes its snapshot again, then fails: the push must follow
    with pytest.raises(FeatureNotFoundError, match="no_such_feature"):
        run_stage(cfg, "train")
    assert remote.exists("config.yaml")


@pytest.mark.ray
def test_a_run_with_a_uri_output_dir_is_readable_from_an_empty_mirror(ray_cluster, tmp_path: Path, remote: Remote,
                                                                      mirrors: Path) -> None:
    from rmm.cli import main
    from rmm.recommend import recommend_for_user
    from rmm.recommend_batch import recommend_all

    config = tmp_path / "config.yaml"
    config.write_text(f"""
stages: [data, extract, train, report]
dataset: {{name: synthetic, source: synthetic, user_core: 2, item_core: 2, seed: 3,
          synthetic: {{num_users: 60, num_items: 40, interactions_per_user: 8, image_size: 16}}}}
features:
  extractors:
    - {{name: image_stats, kind: image_stats, batch_size: 16}}
model:
  - {{name: lightgcn}}
  - {{name: vbpr, features: [image_stats]}}
train: {{epochs: 2, batch_size: 64, seed: 1, eval: {{topk: [5], metric: recall@5, every: 1}},
        scaling: {{num_workers: 2, cpus_per_worker: 0.5}}, fault_tolerance: {{checkpoint_every: 1}}}}
ray: {{num_cpus: 4}}
output: {{dir: "{remote.location}"}}
""")
    assert main(["run", str(config)]) == 0

    # Everything lives at the URI: dataset, features (images read and parts written there by the tasks), run
    # records, weights saved by rank 0, Ray Train's checkpoints, the report.
    assert remote.exists("data/synthetic/items.parquet") and remote.exists("data/synthetic/images")
    manifest = remote.read("features/synthetic/image_stats/manifest.json")
    assert json.loads(manifest)["counts"]["done"] == json.loads(remote.read("data/synthetic/dataset.json"))[
        "counts"]["items"]
    runs = json.loads(remote.read("results.json"))["runs"]
    assert len(runs) == 2
    for run in runs:
        assert remote.exists(f"runs/{run['run_name']}/model.pt")
        assert remote.exists(f"{RAY_RESULTS_DIR}/{run['run_name']}/checkpoint_manager_snapshot.json")
        assert any(name.startswith("checkpoint_2") for name in remote.listdir(f"{RAY_RESULTS_DIR}/{run['run_name']}"))
    assert "lightgcn" in remote.read("report.md")

    # A new node: nothing local. A recommendation (pulling only what it reads: no images, no feature parts),
    # the report and a re-extraction all work from the URI.
    shutil.rmtree(mirrors)
    vbpr = next(run["run_name"] for run in runs if run["model"] == "vbpr")
    recs = recommend_for_user(remote.location, 0, 3, run_name=vbpr)
    assert len(recs.items) == 3 and recs.items["title"].str.len().gt(0).all()
    pulled = {p.relative_to(Storage(remote.location).local).as_posix() for p in mirrors.rglob("*") if p.is_file()}
    assert "data/synthetic/items.parquet" in pulled and "features/synthetic/image_stats/matrix.npy" in pulled
    assert not any("/images/" in p or "/part-" in p for p in pulled), sorted(pulled)
    remote.delete("report.md")
    assert main(["report", remote.location]) == 0 and "vbpr" in remote.read("report.md")
    written = recommend_all(remote.location, 3, vbpr)
    fs, path = filesystem(written)
    every_user = pq.read_table(path, filesystem=fs).to_pandas()
    first = every_user[every_user["user_id"] == 0].sort_values("rank")
    assert list(first["item_id"]) == list(recs.items["item_id"])
    assert main(["extract", str(config)]) == 0
    assert remote.read("features/synthetic/image_stats/manifest.json") == manifest  # complete: not redone
