from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmm.data.schema import sha256_file
from rmm.features.store import consolidate_parts, feature_dir, load_feature, read_manifest


def _part(path: Path, ids: list[int], vectors: list[list[float]], status: list[str], reasons: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()),
                             "vector": pa.array(vectors, pa.list_(pa.float32())),
                             "status": status, "reason": reasons}), path)


def test_consolidate_parts_builds_matrix_and_manifest(tmp_path: Path) -> None:
    target = feature_dir(tmp_path, "f")
    _part(target / "part-000000-x.parquet", [0, 2], [[1, 2], [3, 4]], ["done", "failed"], ["", "Boom: no"])
    _part(target / "part-000001-x.parquet", [3, 1], [[5, 6], [0, 0]], ["done", "missing"],
          ["text only (no image)", "no image"])
    consolidate_parts(tmp_path, "f", num_items=5, manifest={"kind": "test", "items_sha256": "0" * 64})
    matrix = load_feature(tmp_path, "f")
    np.testing.assert_array_equal(matrix, [[1, 2], [0, 0], [0, 0], [5, 6], [0, 0]])
    manifest = read_manifest(tmp_path, "f")
    assert manifest["kind"] == "test" and manifest["dim"] == 2
    assert manifest["matrix_sha256"] == sha256_file(feature_dir(tmp_path, "f") / "matrix.npy")
    assert manifest["counts"] == {"done": 2, "missing": 2, "failed": 1}
    assert manifest["missing"] == {"1": "no image", "4": "not extracted"}
    assert manifest["failed"] == {"2": "Boom: no"}
    assert manifest["notes"] == {"3": "text only (no image)"}


def test_consolidate_rejects_repeated_ids(tmp_path: Path) -> None:
    target = feature_dir(tmp_path, "f")
    _part(target / "part-0.parquet", [0], [[1.0]], ["done"], [""])
    _part(target / "part-1.parquet", [0], [[1.0]], ["done"], [""])
    with pytest.raises(ValueError, match="repeated item ids"):
        consolidate_parts(tmp_path, "f", num_items=1, manifest={})


def test_part_groups_resume_bookkeeping(tmp_path: Path) -> None:
    from rmm.features.store import (
        PART_GLOB,
        prune_incomplete_parts,
        read_progress,
        write_part_group,
        write_progress,
        written_ids,
    )

    def table(ids: list[int]) -> pa.Table:
        return pa.table({"item_id": pa.array(ids, pa.int64()),
                         "vector": pa.array([[float(i)] for i in ids], pa.list_(pa.float32()))})

    first = write_part_group(tmp_path, {"a": table([0, 1]), "b": table([0, 1])})
    write_part_group(tmp_path, {"a": table([4])})  # b's file of this batch never made it: incomplete group
    (feature_dir(tmp_path, "b") / ".part-x.parquet.tmp").write_bytes(b"half")
    assert written_ids(tmp_path, "a").tolist() == [0, 1, 4]
    assert prune_incomplete_parts(tmp_path, ("a", "b")) == 1
    for name in ("a", "b"):
        assert [p.name for p in feature_dir(tmp_path, name).glob("*")] == [f"part-{first}.parquet"]
        assert written_ids(tmp_path, name).tolist() == [0, 1]
    assert written_ids(tmp_path, "c").tolist() == [] and read_progress(tmp_path, "a") is None
    write_progress(tmp_path, "a", "abc")
    assert read_progress(tmp_path, "a") == "abc"
    assert len(list(feature_dir(tmp_path, "a").glob(PART_GLOB))) == 1
