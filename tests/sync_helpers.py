"""What the destination tests share: a corpus and its nightly change, job specs, two real
snapshots made once per session by real job runs, and checks that a Chroma collection or
a LanceDB table equals a snapshot (ids, vectors, metadata, documents)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import embedfleet
from embedfleet.destinations import DestinationSpec
from embedfleet.destinations.records import OUTPUT_ID, RECORDS
from embedfleet.embedding_functions import HashEmbeddingFunction
from embedfleet.job import Job, JobSpec
from embedfleet.job.store import OutputStore, ShardMarker
from embedfleet.output_format import embeddings_table

REPO = Path(__file__).resolve().parent.parent
ROWS = 200
DIMENSION = 8


def corpus(count: int = ROWS) -> dict[str, dict[str, Any]]:
    return {
        f"doc-{index:04d}": {"text": f"original text of document {index}", "n": index}
        for index in range(count)
    }


def nightly_change(docs: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict]:
    """10% of the rows changed (half the text, half a passthrough value), 5% deleted, 5% new."""
    after = {key: dict(value) for key, value in docs.items()}
    ids = sorted(docs)
    changed, deleted = ids[0 : len(ids) : 10], ids[5 : len(ids) : 20]
    for number, id_ in enumerate(changed):
        if number % 2:
            after[id_]["text"] = f"rewritten text of {id_}"
        else:
            after[id_]["n"] = -after[id_]["n"] - 1  # same text, another passthrough value
    for id_ in deleted:
        del after[id_]
    new = {f"doc-new-{index}": {"text": f"a brand new document {index}", "n": 1000 + index}
           for index in range(len(ids) // 20)}  # fmt: skip
    after.update(new)
    return after, {"changed": len(changed), "deleted": len(deleted), "new": len(new)}


def write_corpus(path: Path, docs: dict[str, dict[str, Any]]) -> None:
    lines = [
        json.dumps({"id": id_, **row, "topic": f"t{row['n'] % 3}"}) for id_, row in docs.items()
    ]
    path.write_text("\n".join(lines) + "\n")


def job_spec(
    source: Path, output: Path, *destinations: dict, dimension: int = DIMENSION, **output_keys: Any
) -> JobSpec:
    """A hash-provider job (queries embedded as is: a query equal to a text finds it)."""
    return JobSpec.from_dict(
        {
            "source": {"uri": str(source), "id_column": "id", "columns": ["n", "topic"]},
            "embedding": {
                "provider": "hash",
                "config": {"dimension": dimension, "query_prefix": ""},
            },
            "fleet": {"replicas": 1, "num_cpus": 0},
            "output": {
                "uri": str(output),
                "rows_per_shard": 50,
                "mode": "incremental",
                "keep_text": True,
                **output_keys,
            },
            "destination": list(destinations),
        }
    )


@dataclass(frozen=True)
class TwoSnapshots:
    """An output with two complete snapshots: ``first`` of the corpus, ``second`` after
    the nightly change (``counts``: changed, deleted, new)."""

    source: Path
    output: Path
    first: str
    second: str
    counts: dict

    @property
    def expected_sent(self) -> int:
        return self.counts["changed"] + self.counts["new"] + self.counts["deleted"]

    def copy(self, where: Path, *, same_output: bool = True) -> Path:
        """A copy of the output (``same_output=False``: another output, its own identity)."""
        shutil.copytree(self.output, where)
        shutil.rmtree(where / RECORDS, ignore_errors=True)  # other tests' destinations
        if not same_output:
            (where / OUTPUT_ID).unlink(missing_ok=True)
        return where


_made: dict[str, TwoSnapshots] = {}


def two_snapshots(root: Path) -> TwoSnapshots:
    """Made once per session (two real job runs on the session's Ray), read-only after."""
    if "made" not in _made:
        root.mkdir(parents=True, exist_ok=True)
        source, output = root / "docs.jsonl", root / "out"
        write_corpus(source, corpus())
        first = Job(job_spec(source, output)).run(progress=False)
        after, counts = nightly_change(corpus())
        write_corpus(source, after)
        second = Job(job_spec(source, output)).run(progress=False)
        assert first.complete and second.complete
        _made["made"] = TwoSnapshots(source, output, first.run_id, second.run_id, counts)
    return _made["made"]


def snapshot_rows(output: Path | str, run_id: str | None = None) -> dict[str, dict]:
    store = OutputStore(str(output))
    if run_id is None:
        table = embedfleet.read(str(output)).to_table()
    else:
        import pyarrow.dataset as ds

        table = ds.dataset(store.snapshot(run_id).root, format="parquet").to_table()
    return {row["id"]: row for row in table.to_pylist()}


def assert_chroma_equals(collection: Any, expected: dict[str, dict]) -> None:
    got = collection.get(include=["embeddings", "metadatas", "documents"])
    assert sorted(got["ids"]) == sorted(expected)
    for id_, vector, metadata, document in zip(
        got["ids"], got["embeddings"], got["metadatas"], got["documents"], strict=True
    ):
        row = expected[id_]
        np.testing.assert_allclose(vector, row["embedding"], rtol=1e-6)  # float32 as stored
        assert metadata == {
            "content_hash": row["content_hash"],
            "n": row["n"],
            "topic": row["topic"],
        }
        assert document == row["text"]


def assert_lance_equals(table: Any, expected: dict[str, dict]) -> None:
    got = table.to_arrow()
    assert got.schema.field("vector").type == pa.list_(
        pa.float32(), len(next(iter(expected.values()))["embedding"])
    )
    rows = {row["id"]: row for row in got.to_pylist()}
    assert len(rows) == got.num_rows and rows.keys() == expected.keys()  # no duplicate
    for id_, row in expected.items():
        np.testing.assert_array_equal(rows[id_]["vector"], np.float32(row["embedding"]))
        for key in ("content_hash", "n", "topic", "text"):
            assert rows[id_][key] == row[key], (id_, key)


def synthetic_snapshot(
    output: Path, columns: dict[str, list], *, dimension: int = DIMENSION
) -> str:
    """A complete snapshot written with the store alone (no Ray): ids d0.., texts t0..,
    hash vectors and the given passthrough ``columns``."""
    count = len(next(iter(columns.values())))
    ids, texts = [f"d{index}" for index in range(count)], [f"t{index}" for index in range(count)]
    function = HashEmbeddingFunction(dimension=dimension)
    metadata = function.describe()
    store = OutputStore(str(output))
    _synthetic_runs.append(len(_synthetic_runs))  # sortable run ids, no waiting a second
    snapshot = store.snapshot(f"20260101T{len(_synthetic_runs):06d}Z-test")
    snapshot.start({"fingerprint": "synthetic", "embedding": metadata, "shards": ["s0"]})
    table = embeddings_table(ids, texts, function(texts), columns=columns, metadata=metadata)
    snapshot.commit_shard(ShardMarker("s0", embedded=count), table, None)
    snapshot.finish({"fingerprint": "synthetic"})
    return snapshot.run_id


_synthetic_runs: list[int] = []


def run_cli_killed_after(
    batches: int, module: str, cls: str, args: list[str], env: dict | None = None
) -> int:
    """Run ``embedfleet`` in a new process whose destination (``module.cls``) SIGKILLs
    the process right after its ``batches``-th write; returns the exit status (-9)."""
    script = f"""
import os, signal, sys
from {module} import {cls} as Destination
sent = [0]
def killing(original):
    def write(self, batch):
        original(self, batch)
        sent[0] += 1
        if sent[0] == {batches}:
            os.kill(os.getpid(), signal.SIGKILL)
    return write
for method in ("insert", "upsert"):
    if method in vars(Destination):
        setattr(Destination, method, killing(vars(Destination)[method]))
from embedfleet.cli import main
sys.exit(main(sys.argv[1:]))
"""
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=environment, capture_output=True, timeout=300
    )
    return done.returncode


def destination(kind: str, **keys: Any) -> DestinationSpec:
    spec = DestinationSpec(kind, **keys)
    spec.check()
    return spec
