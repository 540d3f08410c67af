"""Multi-node: a head and a worker node started with ``ray start`` on this machine
(scripts/multinode.py), jobs that reach them through the spec, ``--address`` and
``RAY_ADDRESS``, and a stop that leaves none of their processes behind.

Nothing here calls ``ray.init``: the nodes, the jobs (``embedfleet run``) and the
state queries all run in subprocesses, so the session's own local Ray instance
(``local_ray``) and this cluster never meet, and neither does ``ray stop``, which
would kill every Ray process on the machine.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_script():
    path = REPO / "scripts" / "multinode.py"
    spec = importlib.util.spec_from_file_location("embedfleet_multinode_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


multinode = _load_script()

if not Path(multinode.RAY).exists():
    pytest.skip(f"no ray CLI next to {sys.executable}", allow_module_level=True)

ROWS = 1000


def raylets(cluster) -> list[int]:
    names = {}
    for process in cluster.processes():
        with suppress(psutil.NoSuchProcess):
            names[process.pid] = process.name()
    return [pid for pid, name in names.items() if name == "raylet"]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to pytest unwinds like Ctrl-C, so the nodes are still stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_nodes_are_stopped_when_the_block_using_them_fails():
    # First in the module: runs before the shared cluster below is started.
    with (
        sigterm_as_interrupt(),
        pytest.raises(ZeroDivisionError),
        multinode.local_cluster() as doomed,
    ):
        pids = doomed.pids()
        assert len(raylets(doomed)) == 2
        _ = 1 / 0
    assert pids and not multinode.still_alive(pids)
    assert not doomed.temp_dir.exists()


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    """Head (``head_node`` resource) + worker (``worker_node``), one CPU each;
    stopped after the module's tests, however they end."""
    with sigterm_as_interrupt(), multinode.local_cluster() as started:
        started.described = started.inspect(nodes=2)  # polls until both are alive
        pids = started.pids()
        yield started
    assert not multinode.still_alive(pids), "the cluster's processes outlived stop()"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("multinode") / "corpus.jsonl"
    return path, multinode.write_corpus(path, ROWS)


def test_the_worker_node_joins_with_its_custom_resource(cluster):
    described = cluster.described
    roles = multinode.node_roles(described)
    assert len(described["nodes"]) == 2
    assert set(roles) == {"head", "worker"} and roles["head"] != roles["worker"]
    resources = described["cluster_resources"]
    assert (resources["CPU"], resources["head_node"], resources["worker_node"]) == (2, 1, 1)
    assert len(raylets(cluster)) == 2  # two real nodes, not one node with two labels


@pytest.mark.parametrize("via", multinode.ADDRESS_VIA)
def test_a_job_given_the_address_runs_one_replica_on_each_node(cluster, corpus, tmp_path, via):
    source, ids = corpus
    run = multinode.run_job(cluster, source, tmp_path, via)

    roles = multinode.node_roles(cluster.described)
    replica_nodes = sorted(replica["node_id"] for replica in run.placement["replicas"])
    assert replica_nodes == sorted([roles["head"], roles["worker"]])

    assert run.report["complete"] and run.report["embedded"] == ROWS
    snapshot = run.output / (run.output / "_latest").read_text()
    table = pq.read_table(snapshot, columns=["id", "embedding"])
    written = table["id"].to_pylist()
    assert len(written) == len(set(written)) == ROWS and set(written) == set(ids)
    assert table.schema.field("embedding").type.list_size == 8


def test_a_custom_resource_pins_every_replica_to_the_worker_node(cluster, corpus, tmp_path):
    source, ids = corpus
    run = multinode.run_job(cluster, source, tmp_path, "flag", resources={"worker_node": 0.5})
    worker = multinode.node_roles(cluster.described)["worker"]
    assert [replica["node_id"] for replica in run.report["placement"]] == [worker, worker]
    assert run.report["complete"] and sorted(multinode.output_ids(run.output)) == sorted(ids)
