"""Arrow tables and atomic Parquet files of vectors."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedfleet.errors import ConfigError
from embedfleet.output_format import content_hash, embeddings_table, write_parquet


def test_content_hash_is_sha256_of_utf8_text():
    assert content_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_table_keeps_vectors_exactly():
    vectors = [np.array([1.5, -2.0], dtype=np.float32), np.array([0.0, 3.25], dtype=np.float32)]
    table = embeddings_table(["a", "b"], ["x", "y"], vectors, columns={"topic": ["t1", "t2"]})
    np.testing.assert_array_equal(
        np.stack(table["embedding"].to_numpy(zero_copy_only=False)), vectors
    )
    assert table["topic"].to_pylist() == ["t1", "t2"]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ConfigError, match="differ in length"):
        embeddings_table(["a"], ["x", "y"], [np.zeros(2, dtype=np.float32)])


def test_passthrough_column_cannot_replace_an_output_column():
    with pytest.raises(ConfigError, match="'content_hash' clashes"):
        embeddings_table(
            ["a"], ["x"], [np.zeros(2, dtype=np.float32)], columns={"content_hash": ["h"]}
        )


def test_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    table = embeddings_table(["a"], ["x"], [np.zeros(2, dtype=np.float32)])
    monkeypatch.setattr(
        pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        write_parquet(table, str(tmp_path / "part.parquet"))
    assert list(tmp_path.iterdir()) == []


def test_write_is_readable_and_leaves_no_temporary(tmp_path):
    table = embeddings_table(["a"], ["x"], [np.ones(4, dtype=np.float32)])
    write_parquet(table, str(tmp_path / "sub" / "part.parquet"))
    assert [path.name for path in (tmp_path / "sub").iterdir()] == ["part.parquet"]
    assert pq.read_table(tmp_path / "sub" / "part.parquet").equals(table)
