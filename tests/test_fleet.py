"""embedfleet.remote on a real local Ray instance (2 CPUs, 2 logical GPUs)."""

from __future__ import annotations

import pickle
import threading
import time
from collections import Counter

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import embedfleet  # noqa: E402
from embedfleet import EmbeddingFunction  # noqa: E402
from embedfleet.embedding_functions import (  # noqa: E402
    DefaultEmbeddingFunction,
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.errors import (  # noqa: E402
    BatchFailedError,
    ConfigError,
    FleetError,
    FleetStartError,
)
from embedfleet.testing import HashEmbeddingFunction  # noqa: E402

TEXTS = [f"document {index} " + "word " * (index % 17) for index in range(300)]


pytestmark = pytest.mark.usefixtures("local_ray")


def stack(vectors):
    return np.stack(vectors)


def test_remote_returns_exactly_what_the_function_returns():
    ef = HashEmbeddingFunction(dimension=16)
    with embedfleet.remote(ef, replicas=2, batch_size=16) as fleet:
        np.testing.assert_array_equal(stack(fleet(TEXTS)), stack(ef(TEXTS)))
        np.testing.assert_array_equal(
            stack(fleet.embed_query(TEXTS[:20])), stack(ef.embed_query(TEXTS[:20]))
        )
        assert fleet("one text")[0].shape == (16,)
        assert fleet([]) == []


def test_remote_exposes_the_wrapped_function_and_its_config():
    ef = HashEmbeddingFunction(dimension=8)
    with embedfleet.remote(ef, replicas=1) as fleet:
        assert fleet.function is ef
        assert fleet.get_config() == ef.get_config()
        assert fleet.provider == "hash"
        assert fleet.describe()["provider"] == "hash"
        assert fleet.num_cpus == 0  # no compute of its own: reserves no CPU


@pytest.mark.real_model
def test_two_cpu_replicas_of_the_default_model_match_in_process():
    ef = DefaultEmbeddingFunction(precision="fp32")
    texts = TEXTS[:120]
    with embedfleet.remote(ef, replicas=2, num_cpus=1, batch_size=ef.batch_size) as fleet:
        assert fleet.num_cpus == 1
        remote_vectors = stack(fleet(texts))
        assert {entry["torch_threads"] for entry in fleet.placement} == {1}
    np.testing.assert_allclose(remote_vectors, stack(ef(texts)), atol=2e-6)


def test_killed_replica_restarts_and_every_document_comes_back_once_in_order(tmp_path):
    marker = tmp_path / "crashed"
    crash_text = TEXTS[150]
    faulty = HashEmbeddingFunction(dimension=16, crash_once_on=crash_text, crash_marker=str(marker))
    with embedfleet.remote(faulty, replicas=2, batch_size=8) as fleet:
        vectors = stack(fleet(TEXTS))
    assert marker.exists(), "the replica never crashed: the test proved nothing"
    np.testing.assert_array_equal(vectors, stack(HashEmbeddingFunction(dimension=16)(TEXTS)))


def test_provider_error_surfaces_as_a_typed_error_naming_the_batch():
    ef = HashEmbeddingFunction(fail_on=[TEXTS[7]])
    with embedfleet.remote(ef, replicas=2, batch_size=8) as fleet:
        with pytest.raises(
            BatchFailedError, match=r"batch \d+ \(8 texts\).*ValueError.*fail_on"
        ) as caught:
            fleet(TEXTS)
        assert isinstance(caught.value.cause, ValueError)
        # the fleet is still usable afterwards
        assert len(fleet(TEXTS[:3])) == 3


def test_gpu_replicas_get_distinct_gpus():
    with embedfleet.remote(HashEmbeddingFunction(), replicas=2, num_gpus=1) as fleet:
        gpu_ids = [tuple(entry["gpu_ids"]) for entry in fleet.placement]
        assert len(set(gpu_ids)) == 2 and all(len(ids) == 1 for ids in gpu_ids)
        assert {entry["cuda_visible_devices"] for entry in fleet.placement} == {"0", "1"}


def test_fractional_gpus_pack_replicas_on_one_device():
    with embedfleet.remote(HashEmbeddingFunction(), replicas=4, num_gpus=0.5) as fleet:
        per_gpu = Counter(entry["gpu_ids"][0] for entry in fleet.placement)
        assert sorted(per_gpu.values()) == [2, 2]


def test_unplaceable_fleet_fails_fast_saying_what_was_asked_and_what_exists():
    with pytest.raises(FleetStartError, match=r"num_gpus=3.*GPU 2"):
        embedfleet.remote(HashEmbeddingFunction(), replicas=1, num_gpus=3, start_timeout=3)
    # nothing leaked: the GPUs are free again
    with embedfleet.remote(HashEmbeddingFunction(), replicas=2, num_gpus=1) as fleet:
        assert len(fleet.placement) == 2


def test_fleet_pickles_into_a_ray_task():
    ef = HashEmbeddingFunction(dimension=8)
    with embedfleet.remote(ef, replicas=2) as fleet:

        @ray.remote(num_cpus=0)
        def embed_in_task(remote_function, texts):
            return np.stack(remote_function(texts))

        result = ray.get(embed_in_task.remote(fleet, TEXTS[:50]))
        np.testing.assert_array_equal(result, stack(ef(TEXTS[:50])))
        copy = pickle.loads(pickle.dumps(fleet))
        assert copy.get_config() == ef.get_config()
    # the unpickled copies did not own the actors; shutdown of the owner did
    with pytest.raises(FleetError, match="shut down"):
        fleet(["x"])


def test_concurrent_calls_from_threads_get_their_own_results():
    ef = HashEmbeddingFunction(dimension=8)
    chunks = [TEXTS[index::6] for index in range(6)]
    results = {}
    with embedfleet.remote(ef, replicas=2, batch_size=5) as fleet:

        def work(index):
            results[index] = stack(fleet(chunks[index]))

        threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index, chunk in enumerate(chunks):
        np.testing.assert_array_equal(results[index], stack(ef(chunk)))


def test_a_new_fleet_with_the_same_name_replaces_the_old_one():
    """What re-running a notebook cell does: no leaked actors, no waiting for CPUs."""
    first = embedfleet.remote(HashEmbeddingFunction(), replicas=2, num_cpus=1, name="cell")
    second = embedfleet.remote(
        HashEmbeddingFunction(), replicas=2, num_cpus=1, name="cell", start_timeout=30
    )
    with pytest.raises(FleetError, match="shut down"):
        first(["x"])
    assert len(second(["x"])) == 1
    second.shutdown()


def test_fleets_of_different_configs_coexist_and_rerunning_one_replaces_only_it():
    """A notebook comparing two configurations, then re-running the first cell."""
    free = ray.available_resources().get("CPU", 0)
    first = embedfleet.remote(HashEmbeddingFunction(dimension=8), replicas=1, num_cpus=1)
    other = embedfleet.remote(HashEmbeddingFunction(dimension=16), replicas=1, num_cpus=1)
    assert first(["x"])[0].shape == (8,) and other(["x"])[0].shape == (16,)
    again = embedfleet.remote(HashEmbeddingFunction(dimension=8), replicas=1, num_cpus=1)
    started = time.monotonic()
    with pytest.raises(FleetError, match=r"'hash' \(dimension=8\) was replaced by a newer"):
        first(["x"])
    assert time.monotonic() - started < 5  # at once, never a hang
    assert again(["x"])[0].shape == (8,) and other(["y"])[0].shape == (16,)
    again.shutdown()
    other.shutdown()
    deadline = time.monotonic() + 15  # killed actors take a moment to free their CPUs
    while ray.available_resources().get("CPU", 0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == free  # nothing leaked


def test_a_fleet_that_cannot_fit_beside_the_live_ones_fails_at_once_naming_them():
    """Two 2-replica CPU fleets on a 2-CPU instance this process started: the second
    fails in moments, not after its start timeout, and says what holds the CPUs."""
    with embedfleet.remote(HashEmbeddingFunction(dimension=8), replicas=2, num_cpus=1):
        started = time.monotonic()
        with pytest.raises(FleetStartError) as caught:
            embedfleet.remote(
                HashEmbeddingFunction(dimension=16), replicas=2, num_cpus=1, start_timeout=600
            )
        assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "fleet 'hash' (dimension=16) cannot be placed: 2 replicas x num_cpus=1" in message
    assert "it asks for CPU=2, the cluster has 2 (free 0)" in message
    assert "Shut one down (fleet.shutdown())" in message
    assert "'hash' (dimension=8) holds 2 replicas x num_cpus=1, num_gpus=0" in message


def test_custom_unregistered_function_is_sent_with_cloudpickle():
    class Doubler(EmbeddingFunction):
        def embed_batch(self, texts, *, query=False):
            return [[float(len(text)), 2.0 * len(text)] for text in texts]

    with embedfleet.remote(Doubler(), replicas=1) as fleet:
        assert fleet.provider is None
        np.testing.assert_array_equal(stack(fleet(["ab", "abc"])), [[2, 4], [3, 6]])


def test_replicas_that_describe_the_function_differently_are_named_in_a_warning(caplog):
    """On a mixed cluster replicas may resolve a function differently (a precision guard
    that fails on one kind of hardware); the job records replica 0's description."""

    class PerProcess(EmbeddingFunction):
        def embed_batch(self, texts, *, query=False):
            return [[1.0] for _ in texts]

        def describe(self):
            import os

            return {**super().describe(), "pid": os.getpid()}

    with embedfleet.remote(PerProcess(), replicas=2, num_cpus=0, name="mixed") as fleet:
        pids = sorted(entry["pid"] for entry in fleet.placement)
        with caplog.at_level("WARNING", logger="embedfleet.fleet"):
            described = fleet.describe()
    assert described["pid"] in pids
    assert "describe the function differently (pid: " in caplog.text
    assert all(str(pid) in caplog.text for pid in pids)


def test_unpicklable_custom_function_is_a_clear_error():
    class Locked(EmbeddingFunction):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

        def embed_batch(self, texts, *, query=False):
            return [[1.0] for _ in texts]

    with pytest.raises(ConfigError, match="not registered and cannot be pickled"):
        embedfleet.remote(Locked())


def test_local_model_replica_pins_torch_threads_to_its_cpus(tiny_model_dir):
    ef = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), precision="fp32")
    with embedfleet.remote(ef, replicas=1, num_cpus=1) as fleet:
        np.testing.assert_allclose(stack(fleet(["a b", "c"])), stack(ef(["a b", "c"])), atol=1e-6)
        assert fleet.placement[0]["torch_threads"] == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"replicas": 0}, "replicas"),
        ({"max_pending_per_replica": 0}, "max_pending_per_replica"),
        ({"num_gpus": -1}, "must not be negative"),
    ],
)
def test_bad_fleet_arguments_are_config_errors(arguments, message):
    with pytest.raises(ConfigError, match=message):
        embedfleet.remote(HashEmbeddingFunction(), **arguments)


def test_map_yields_each_batch_in_order():
    ef = HashEmbeddingFunction(dimension=8)
    batches = [TEXTS[0:10], [], "a single text", TEXTS[10:40]]
    with embedfleet.remote(ef, replicas=2, max_pending_per_replica=1) as fleet:
        results = list(fleet.map(batches))
    assert [len(result) for result in results] == [10, 0, 1, 30]
    np.testing.assert_array_equal(stack(results[0]), stack(ef(TEXTS[0:10])))
    np.testing.assert_array_equal(stack(results[2]), stack(ef(["a single text"])))
    np.testing.assert_array_equal(stack(results[3]), stack(ef(TEXTS[10:40])))


class EnvProbe(EmbeddingFunction):
    """Embeds 1.0 when the replica's environment has the variable, else 0.0."""

    def embed_batch(self, texts, *, query=False):
        import os

        present = float(os.environ.get("EMBEDFLEET_TEST_FAKE_KEY") == "sk-fake-not-a-key")
        return [[present] for _ in texts]


def test_keys_are_not_shipped_unless_forwarded_explicitly(monkeypatch):
    # set after ray.init: the local workers' own environment does not have it
    monkeypatch.setenv("EMBEDFLEET_TEST_FAKE_KEY", "sk-fake-not-a-key")
    with embedfleet.remote(EnvProbe(), replicas=1, name="no-forward") as fleet:
        assert fleet(["x"])[0][0] == 0.0
    forwarded = embedfleet.remote(
        EnvProbe(), replicas=1, name="forward", forward_env=["EMBEDFLEET_TEST_FAKE_KEY"]
    )
    with forwarded:
        assert forwarded(["x"])[0][0] == 1.0
        assert "sk-fake" not in repr(forwarded)


def test_forwarding_an_unset_variable_is_a_config_error():
    with pytest.raises(ConfigError, match="unset environment variables: \\['NOPE_NOT_SET'\\]"):
        embedfleet.remote(HashEmbeddingFunction(), forward_env=["NOPE_NOT_SET"])


class Rendezvous(EmbeddingFunction):
    """Each batch waits until another batch is inside the same replica at once. It
    declares no workload: a third-party function counts as compute (a local model)."""

    def __init__(self):
        super().__init__(batch_size=1)
        self.barrier = None

    def __getstate__(self):
        state = super().__getstate__()
        state["barrier"] = None
        return state

    def embed_batch(self, texts, *, query=False):
        if self.barrier is None:
            self.barrier = threading.Barrier(2, timeout=5)
        self.barrier.wait()
        return [[1.0] for _ in texts]


class WaitingRendezvous(Rendezvous):
    """The same, declared as waiting on I/O (an API client of a third party)."""

    workload = "io"


def test_a_function_declared_io_bound_reserves_no_cpu_and_serves_batches_at_once():
    with embedfleet.remote(
        WaitingRendezvous(), replicas=1, batch_size=1, name="rendezvous"
    ) as fleet:
        assert fleet.num_cpus == 0 and fleet.max_concurrency == 8
        assert len(fleet(["a", "b", "c", "d"])) == 4


def test_a_third_party_function_that_declares_nothing_is_a_local_model():
    """One CPU reserved per replica, one batch at a time (two batches never meet)."""
    with embedfleet.remote(
        Rendezvous(), replicas=1, batch_size=1, name="serial", max_restarts=0
    ) as fleet:
        assert fleet.num_cpus == 1 and fleet.max_concurrency == 1
        with pytest.raises(BatchFailedError, match="BrokenBarrierError"):
            fleet(["a", "b"])


def test_an_api_provider_replica_serves_its_own_max_concurrency():
    from embedfleet.embedding_functions import HuggingFaceEmbeddingServer

    server = HuggingFaceEmbeddingServer("http://127.0.0.1:9/embed", max_concurrency=3)
    assert server.workload == "io" and server.concurrent_batches() == 3
    assert DefaultEmbeddingFunction().workload == "compute"


def test_a_model_that_cannot_load_fails_the_fleet_start_not_a_batch(tmp_path):
    broken = SentenceTransformerEmbeddingFunction(str(tmp_path), precision="fp32")
    with pytest.raises(FleetStartError, match=r"replica 0 .* failed to start: ModelNotFoundError"):
        embedfleet.remote(broken, replicas=1, num_cpus=0, max_restarts=0, start_timeout=60)


def test_custom_resources_are_reserved_by_every_replica():
    before = ray.available_resources().get("tagged_node", 0)
    ef = HashEmbeddingFunction(dimension=4)
    with embedfleet.remote(ef, replicas=2, resources={"tagged_node": 1.5}) as fleet:
        assert len(fleet(["x", "y"])) == 2
        assert ray.available_resources().get("tagged_node", 0) == before - 3


def test_a_missing_custom_resource_is_named_with_what_the_cluster_has():
    ef = HashEmbeddingFunction(dimension=4)
    with pytest.raises(FleetStartError, match=r"asks for gpu_node=1, the cluster has 0"):
        embedfleet.remote(ef, num_cpus=0, resources={"gpu_node": 1}, start_timeout=2)
    with pytest.raises(ConfigError, match="use num_cpus / num_gpus"):
        embedfleet.remote(ef, resources={"CPU": 1})


def test_fleets_asking_for_resources_keep_the_name_they_were_given():
    """The resources loop once overwrote ``name``: both fleets were called 'tagged_node'
    and the second shut the first down."""
    ef = HashEmbeddingFunction(dimension=4)
    first = embedfleet.remote(ef, name="job-a", resources={"tagged_node": 1})
    second = embedfleet.remote(ef, name="job-b", resources={"tagged_node": 1})
    with first, second:
        assert (first.fleet_name, second.fleet_name) == ("job-a", "job-b")
        assert len(first(["x"])) == len(second(["y"])) == 1


def test_onnx_replicas_export_once_and_match_in_process(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFLEET_CACHE_DIR", str(tmp_path / "cache"))
    ef = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), backend="onnx", precision="fp32")
    texts = [f"{'orbit ' * (1 + index % 9)}{index}" for index in range(40)]
    expected = stack(ef(texts))  # exports here; the replicas find the files
    fleet = embedfleet.remote(
        ef, replicas=2, num_cpus=1, batch_size=8, forward_env=["EMBEDFLEET_CACHE_DIR"]
    )
    with fleet:
        np.testing.assert_allclose(stack(fleet(texts)), expected, atol=1e-6)
    exports = [path for path in (tmp_path / "cache" / "onnx").iterdir() if path.is_dir()]
    assert len(exports) == 1
