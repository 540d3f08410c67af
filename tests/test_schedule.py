"""The driver's scheduling loop, with a stand-in executor (no Ray): a window of shards in
flight, finished ones collected in bulk, the budget and signals honoured."""

from __future__ import annotations

from embedfleet.job import schedule
from embedfleet.job.schedule import Scheduler, window_for
from embedfleet.job.shards import Piece, Shard


def shards(count: int) -> list[Shard]:
    return [
        Shard.of("mem://", (Piece(f"f{index:06d}.jsonl", "jsonl", "bytes", 0, 10, 1),))
        for index in range(count)
    ]


class FakeExecutor:
    """Tasks finish when waited for: the oldest ``at_least`` of them, or, with
    ``finish_all``, every one in flight (a pass that found many done)."""

    def __init__(self, *, finish_all: bool = True, failing: frozenset[str] = frozenset()):
        self.finish_all = finish_all
        self.failing = failing
        self.submitted: list[Shard] = []
        self.running: list[int] = []
        self.most_running = 0
        self.waits = 0

    def submit(self, shard: Shard) -> int:
        self.submitted.append(shard)
        self.running.append(len(self.submitted) - 1)
        self.most_running = max(self.most_running, len(self.running))
        return len(self.submitted) - 1

    def wait(self, handles: list[int], at_least: int, timeout: float) -> list[int]:
        self.waits += 1
        done = list(handles) if self.finish_all else sorted(handles)[:at_least]
        self.running = [handle for handle in self.running if handle not in done]
        return done

    def result(self, handle: int) -> str:
        shard = self.submitted[handle]
        if shard.shard_id in self.failing:
            raise ValueError(f"{shard.uri}: broken")
        return shard.shard_id


def test_every_shard_runs_once_within_the_window_collected_in_bulk():
    todo = shards(1000)
    executor = FakeExecutor()
    done: list[str] = []
    passes = []
    scheduler = Scheduler(
        executor,
        16,
        lambda shard, answer, error: done.append(answer),
        after_pass=lambda: passes.append(1),
    )
    scheduler.run(todo)
    assert done == [shard.shard_id for shard in todo]
    assert executor.most_running == 16
    assert executor.waits == len(passes) == 1000 // 16 + 1  # one wait per pass, not per shard
    assert not scheduler.pending


def test_a_pass_waits_for_an_eighth_of_the_window():
    asked = []

    class Recording(FakeExecutor):
        def wait(self, handles, at_least, timeout):
            asked.append((len(handles), at_least, timeout))
            return super().wait(handles, at_least, timeout)

    Scheduler(Recording(finish_all=False), 64, lambda *_: None).run(shards(200))
    assert asked[0] == (64, 8, schedule.WAIT_SECONDS)
    assert all(
        at_least == max(1, pending // schedule.BULK_FRACTION) for pending, at_least, _ in asked
    )


def test_a_failed_shard_is_reported_and_the_others_go_on():
    todo = shards(50)
    executor = FakeExecutor(failing=frozenset({todo[7].shard_id}))
    errors, answers = [], []

    def on_done(shard, answer, error):
        (errors if error is not None else answers).append((shard, error))

    Scheduler(executor, 4, on_done).run(todo)
    assert [shard for shard, _ in errors] == [todo[7]] and "broken" in str(errors[0][1])
    assert len(answers) == 49


def test_halting_submits_nothing_more_and_lets_the_shards_in_flight_finish():
    todo = shards(100)
    executor = FakeExecutor(finish_all=False)
    done = []
    scheduler = Scheduler(
        executor, 8, lambda shard, answer, error: done.append(shard), halted=lambda: len(done) >= 3
    )
    scheduler.run(todo)
    assert len(executor.submitted) == 8 + 2  # a slot refilled per shard until the third came in
    assert len(done) == len(executor.submitted) and not scheduler.pending


def test_stopping_leaves_the_shards_in_flight_to_the_caller():
    todo = shards(100)
    done = []
    scheduler = Scheduler(
        FakeExecutor(finish_all=False),
        8,
        lambda shard, answer, error: done.append(shard),
        stopped=lambda: len(done) >= 2,
    )
    scheduler.run(todo)
    assert len(done) == 2 and len(scheduler.pending) == 7  # cancelled by the run's release()


def test_the_window_is_two_per_replica_for_large_shards_and_more_for_small_ones():
    assert window_for(2, 10_000, 64, 2) == 4  # as before packing
    assert window_for(800, 10_000, 64, 2) == 1600  # a 100-node cluster: 2 per replica
    assert window_for(2, 100, 64, 2) == 2 * 3
    assert window_for(2, 5, 64, 2) == 2 * schedule.MAX_PER_REPLICA  # never more per replica
    assert window_for(2000, 5, 64, 2) == 4000  # capped at MAX_IN_FLIGHT beyond 2 x replicas
    assert window_for(1000, 5, 64, 2) == schedule.MAX_IN_FLIGHT
