"""A two-node Ray cluster on this machine, and jobs that must use both nodes.

Usage: python scripts/multinode.py [--rows 2000] [--report PATH] [--keep-dir]
       python scripts/multinode.py inspect --address HOST:PORT [--nodes 2] [--driver-pid PID]

The default command starts a head (``ray start --head``, custom resource
``head_node``) and a worker node (``ray start --address``, custom resource
``worker_node``), each with one CPU, its own ports and a private ``--temp-dir``.
It then runs the same job three times, giving the cluster's address through the
spec (``[fleet] address``), ``--address`` and ``RAY_ADDRESS``. The job asks for
``replicas = 2`` with ``num_cpus = 1`` each, so Ray can place them only one per
node; the script checks through Ray's state API that each run's replicas ran on
both nodes and that every row was written exactly once, then stops both nodes.

Stopping never uses ``ray stop``: that kills every Ray process on the machine,
other sessions' and test runs' included. Only processes that name this
cluster's temp dir or GCS address (and their children: workers, agents) are
terminated, on success, on error, on SIGINT/SIGTERM and at exit.

``inspect`` is the only code that calls ``ray.init``; everything else runs it
as a subprocess, so a caller (a test process with its own Ray instance) never
joins this cluster. It waits until ``--nodes`` nodes are alive, then prints JSON:
the nodes with their resources, the cluster's resources, and the ``Replica``
actors (dead ones included) of the driver with process id ``--driver-pid``.
Run by hand, it needs the cluster's ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH=<temp dir>/auth_token``: every process of this cluster uses
token authentication with a token generated in its temp dir (``~/.ray`` is never
read or written), because a worker node or a driver given an explicit address
does not turn token auth on by itself, unlike ``ray start --head``.

Ray resolves ``--node-ip-address=127.0.0.1`` to the machine's own routable
address (a multi-node cluster cannot be kept on the loopback interface), and
its servers bind on all interfaces; run this on a machine whose ports are not
reachable from untrusted networks. docs/multinode.md has the details.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SCRIPT = Path(__file__).resolve()
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 120.0  # one `ray start`; about 5 s on an idle 2-core machine
JOB_TIMEOUT = 240.0
INSPECT_TIMEOUT = 90.0
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's default is 30% of memory, per node
ADDRESS_VIA = ("spec", "flag", "env")  # how a job is told where the cluster is
# Inherited settings that would point a process at another cluster or token.
_CLEARED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free now (all held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class LocalCluster:
    """A head and one worker node, started with ``ray start`` under ``temp_dir``.

    ``temp_dir`` must be short: Ray puts Unix sockets under it (108-byte limit).
    """

    temp_dir: Path
    head_resources: dict[str, float] = field(default_factory=lambda: {"head_node": 1})
    worker_resources: dict[str, float] = field(default_factory=lambda: {"worker_node": 1})
    gcs_port: int = 0
    address: str = ""  # host:port of the GCS, as Ray reports it
    _processes: dict[int, float] = field(default_factory=dict)  # pid -> create_time

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Start both nodes (each ``ray start`` returns once its node is up)."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # Token authentication with a token of its own: the nodes and every driver
        # read it through RAY_AUTH_TOKEN_PATH (see env()); ~/.ray is never touched.
        token = self.temp_dir / "auth_token"
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
        ports = free_ports(5)
        self.gcs_port = ports[0]
        self._ray_start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                # The dashboard serves Ray's state API (list_actors), on loopback only.
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports[1]}",
                f"--ray-client-server-port={ports[2]}",
                f"--dashboard-agent-listen-port={ports[3]}",
            ],
            self.head_resources,
        )
        self.address = (self.temp_dir / "ray_current_cluster").read_text().strip()
        self._ray_start(
            "worker",
            [f"--address={self.address}", f"--dashboard-agent-listen-port={ports[4]}"],
            self.worker_resources,
        )
        self._remember_processes()

    def _ray_start(self, role: str, arguments: list[str], resources: dict[str, float]) -> None:
        command = [
            RAY,
            "start",
            *arguments,
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            # Ray's default worker port range is shared by every raylet on the machine;
            # 0 lets the OS pick, so two raylets never hand out the same port.
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        log = self.temp_dir / f"ray-start-{role}.log"
        with log.open("w") as handle:
            try:
                returncode = subprocess.run(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=self.env(),
                    timeout=START_TIMEOUT,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                returncode = None
        self._remember_processes()
        if returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"ray start ({role}) failed (exit {returncode}):\n{tail}")

    def env(self, address: str | None = None) -> dict[str, str]:
        """Environment for every process of and on this cluster: its own auth token,
        and no inherited RAY_ADDRESS (``address`` sets one)."""
        env = {key: value for key, value in os.environ.items() if key not in _CLEARED_ENV}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.temp_dir / "auth_token"),
            RAY_USAGE_STATS_ENABLED="0",
        )
        if address is not None:
            env["RAY_ADDRESS"] = address
        return env

    def inspect(self, *, nodes: int = 0, driver_pid: int | None = None) -> dict[str, Any]:
        """Nodes, resources and replicas (the ``inspect`` command) from a subprocess:
        the calling process never connects to this cluster."""
        command = [sys.executable, str(SCRIPT), "inspect", "--address", self.address]
        command += ["--nodes", str(nodes)]
        if driver_pid is not None:
            command += ["--driver-pid", str(driver_pid)]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=INSPECT_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"inspect failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)

    # ------------------------------------------------------------------ stop
    def _matches(self, process: psutil.Process) -> bool:
        try:
            command = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        # Its temp dir as a whole path component, or (the Ray client server names
        # nothing else) its GCS address as an option's value.
        pattern = re.escape(str(self.temp_dir)) + r"(/|\s|$)"
        if self.address:
            pattern += "|=" + re.escape(self.address) + r"(\s|$)"
        return re.search(pattern, command) is not None

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: those naming its temp dir or GCS
        address, those recorded at start, and all their descendants."""
        roots = [process for process in psutil.process_iter() if self._matches(process)]
        for pid, created in self._processes.items():
            with suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                if process.create_time() == created:  # not a reused pid
                    roots.append(process)
        found: dict[int, psutil.Process] = {}
        for root in roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                found[process.pid] = process
        found.pop(os.getpid(), None)
        return [process for process in found.values() if _alive(process)]

    def pids(self) -> dict[int, float]:
        """``{pid: create_time}`` of :meth:`processes`, for :func:`still_alive`."""
        pids = {}
        for process in self.processes():
            with suppress(psutil.NoSuchProcess):
                pids[process.pid] = process.create_time()
        return pids

    def _remember_processes(self) -> None:
        self._processes.update(self.pids())

    def stop(self, timeout: float = 15.0) -> list[int]:
        """Terminate this cluster's processes (SIGTERM, then SIGKILL); return the
        pids still alive afterwards (none, unless the kernel refused)."""
        for _ in range(3):  # a dying raylet may still fork a worker: sweep again
            processes = self.processes()
            if not processes:
                break
            for process in processes:
                _signal(process, signal.SIGTERM)
            _, alive = psutil.wait_procs(processes, timeout=timeout / 3)
            for process in alive:
                _signal(process, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=5)
        left = [process.pid for process in self.processes()]
        if not left:
            self._processes.clear()
        return left


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(process: psutil.Process, signum: int) -> None:
    with suppress(psutil.NoSuchProcess):
        process.send_signal(signum)


def still_alive(pids: dict[int, float]) -> list[int]:
    """Those of ``pids`` (from :meth:`LocalCluster.pids`) still running, not reused."""
    alive = []
    for pid, created in pids.items():
        with suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            if process.create_time() == created and _alive(process):
                alive.append(pid)
    return alive


@contextmanager
def local_cluster(temp_dir: Path | None = None, keep_dir: bool = False) -> Iterator[LocalCluster]:
    """Start a two-node cluster; stop exactly its processes however the block ends."""
    owned = temp_dir is None
    # Short, under /tmp: Ray's socket paths must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="efmn-", dir="/tmp")) if owned else Path(temp_dir)
    cluster = LocalCluster(root)
    atexit.register(cluster.stop)
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        atexit.unregister(cluster.stop)
        if owned and not keep_dir and not left:
            shutil.rmtree(root, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ray processes of {root} still alive: {left}")


# ---------------------------------------------------------------------- inspect
def _inspect_main(address: str, nodes: int, driver_pid: int | None, timeout: float) -> int:
    import ray
    from ray.util import state

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        alive = [node for node in ray.nodes() if node["Alive"]]
        while len(alive) < nodes:  # poll the GCS until the worker node has registered
            if time.monotonic() > deadline:
                print(f"only {len(alive)} of {nodes} nodes alive after {timeout}s", file=sys.stderr)
                return 1
            time.sleep(0.2)
            alive = [node for node in ray.nodes() if node["Alive"]]
        report: dict[str, Any] = {
            "nodes": [
                {
                    "node_id": node["NodeID"],
                    "ip": node["NodeManagerAddress"],
                    "resources": node["Resources"],
                }
                for node in alive
            ],
            "cluster_resources": ray.cluster_resources(),
            "replicas": [],
        }
        if driver_pid is not None:
            jobs = [
                job.job_id
                for job in state.list_jobs(address=address, raise_on_missing_output=False)
                if job.driver_info is not None and str(job.driver_info.pid) == str(driver_pid)
            ]
            actors = state.list_actors(
                address=address,
                filters=[("class_name", "=", "Replica")],
                detail=True,
                limit=10_000,
                raise_on_missing_output=False,
            )
            report["job_ids"] = jobs
            report["replicas"] = [
                {
                    "actor_id": actor.actor_id,
                    "node_id": actor.node_id,
                    "state": actor.state,
                    "pid": actor.pid,
                }
                for actor in actors
                if actor.job_id in jobs
            ]
        print(json.dumps(report))
        return 0
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------- jobs
def write_corpus(path: Path, rows: int) -> list[str]:
    """A JSON Lines corpus with ids ``d0`` .. ``d{rows-1}``; returns the ids."""
    ids = [f"d{index}" for index in range(rows)]
    with path.open("w", encoding="utf-8") as handle:
        for index, id_ in enumerate(ids):
            handle.write(json.dumps({"id": id_, "text": f"document {index} on two nodes"}) + "\n")
    return ids


def write_spec(
    path: Path,
    source: Path,
    output: Path,
    address: str | None,
    resources: dict[str, float] | None = None,
) -> Path:
    """A hash-provider job whose two 1-CPU replicas fit only one per node; with
    ``resources``, replicas that reserve no CPU and ask for those node resources."""
    num_cpus = 0 if resources else 1
    lines = [
        "[source]",
        f"uri = {json.dumps(str(source))}",
        'id_column = "id"',
        "[embedding]",
        'provider = "hash"',
        "[embedding.config]",
        "dimension = 8",
        "[fleet]",
        "replicas = 2",
        f"num_cpus = {num_cpus}",
        "batch_size = 50",
        *([f"address = {json.dumps(address)}"] if address else []),
        *([f"resources = {_inline_table(resources)}"] if resources else []),
        "[output]",
        f"uri = {json.dumps(str(output))}",
        "rows_per_shard = 200",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _inline_table(values: dict[str, float]) -> str:
    """A TOML inline table: { name = 1.0, ... }."""
    return "{ " + ", ".join(f"{json.dumps(key)} = {value}" for key, value in values.items()) + " }"


@dataclass
class JobRun:
    via: str
    output: Path
    report: dict[str, Any]  # the CLI's --report JSON
    placement: dict[str, Any]  # inspect() for the job's driver
    seconds: float


def run_job(
    cluster: LocalCluster,
    source: Path,
    workdir: Path,
    via: str,
    resources: dict[str, float] | None = None,
) -> JobRun:
    """Run ``embedfleet run`` in a subprocess, giving the address ``via`` the spec,
    the ``--address`` flag or ``RAY_ADDRESS``, then look up where its replicas ran."""
    if via not in ADDRESS_VIA:
        raise ValueError(f"via must be one of {ADDRESS_VIA}, got {via!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "out"
    address = cluster.address if via == "spec" else None
    spec = write_spec(workdir / "job.toml", source, output, address, resources)
    report_path = workdir / "report.json"
    command = [sys.executable, "-m", "embedfleet.cli", "run", "--quiet", "--report"]
    command += [str(report_path), str(spec)]
    if via == "flag":
        command += ["--address", cluster.address]
    env = cluster.env(cluster.address if via == "env" else None)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _, stderr = process.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        message = f"job ({via}) timed out after {JOB_TIMEOUT}s:\n{stderr[-3000:]}"
        raise RuntimeError(message) from None
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"job ({via}) exited {process.returncode}:\n{stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    placement = cluster.inspect(driver_pid=process.pid)
    return JobRun(via, output, report, placement, seconds)


def output_ids(output: Path) -> list[str]:
    """Ids in the job's latest snapshot, read with plain pyarrow."""
    import pyarrow.parquet as pq

    snapshot = output / (output / "_latest").read_text().strip()
    return pq.read_table(snapshot, columns=["id"])["id"].to_pylist()


def check_run(run: JobRun, nodes: dict[str, str], ids: list[str]) -> list[str]:
    """Problems with one run (empty: replicas on both nodes, every row once)."""
    problems = []
    replica_nodes = sorted(replica["node_id"] for replica in run.placement["replicas"])
    if sorted(replica_nodes) != sorted(nodes.values()):
        problems.append(f"{run.via}: replicas ran on {replica_nodes}, expected {nodes}")
    written = output_ids(run.output)
    if sorted(written) != sorted(ids) or len(set(written)) != len(written):
        problems.append(f"{run.via}: {len(written)} rows written, expected {len(ids)} unique")
    if not run.report.get("complete") or run.report.get("embedded") != len(ids):
        problems.append(f"{run.via}: report {run.report}")
    return problems


def node_roles(described: dict[str, Any]) -> dict[str, str]:
    """``{"head": node_id, "worker": node_id}`` from the nodes' custom resources."""
    roles = {}
    for node in described["nodes"]:
        for role in ("head", "worker"):
            if node["resources"].get(f"{role}_node"):
                roles[role] = node["node_id"]
    return roles


def _demo(rows: int, report_path: str | None, keep_dir: bool) -> int:
    started = time.perf_counter()
    problems: list[str] = []
    summary: dict[str, Any] = {"runs": {}}
    with local_cluster(keep_dir=keep_dir) as cluster:
        summary["start_seconds"] = round(time.perf_counter() - started, 1)
        described = cluster.inspect(nodes=2)
        nodes = node_roles(described)
        summary["address"], summary["nodes"] = cluster.address, nodes
        summary["cluster_resources"] = described["cluster_resources"]
        if set(nodes) != {"head", "worker"} or len(set(nodes.values())) != 2:
            problems.append(f"expected a head and a worker node, got {described['nodes']}")
        source = cluster.temp_dir / "corpus.jsonl"
        ids = write_corpus(source, rows)
        for via in ADDRESS_VIA:
            run = run_job(cluster, source, cluster.temp_dir / f"job-{via}", via)
            problems += check_run(run, nodes, ids)
            summary["runs"][via] = {
                "seconds": round(run.seconds, 1),
                "embedded": run.report["embedded"],
                "replica_nodes": [replica["node_id"] for replica in run.placement["replicas"]],
            }
        stop_started = time.perf_counter()
    summary["stop_seconds"] = round(time.perf_counter() - stop_started, 1)
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    summary["problems"] = problems
    text = json.dumps(summary, indent=2)
    if report_path:
        Path(report_path).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 1 if problems else 0


def _raise_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    parser.add_argument("--rows", type=int, default=2000, help="rows in the test corpus")
    parser.add_argument("--report", help="write the summary JSON here")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    described = commands.add_parser("inspect", help="print nodes and replicas as JSON")
    described.add_argument("--address", required=True)
    described.add_argument("--nodes", type=int, default=0, help="wait for this many nodes")
    described.add_argument("--driver-pid", type=int, help="list this driver's Replica actors")
    described.add_argument("--timeout", type=float, default=60.0)
    arguments = parser.parse_args(argv)
    if arguments.command == "inspect":
        return _inspect_main(
            arguments.address, arguments.nodes, arguments.driver_pid, arguments.timeout
        )
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    return _demo(arguments.rows, arguments.report, arguments.keep_dir)


if __name__ == "__main__":
    sys.exit(main())
