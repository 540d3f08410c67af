"""The quality guard's one mechanism: a result measured once per machine (kept whole in
the cache, made under a lock, memoised per process), keyed by the guard corpus's content,
and shared by torch's bf16/fp16 guard and ONNX Runtime's int8 guard."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from embedfleet.embedding_functions import SentenceTransformerEmbeddingFunction
from embedfleet.embedding_functions.local import guard_corpus, quality_guard
from embedfleet.embedding_functions.local import models as local_models


@dataclass
class Counted:
    """A once-per-machine result that counts its measurements."""

    path: Path | None
    value: float | None = 0.5
    delay: float = 0.0
    measured: list[Path | None] = field(default_factory=list)

    needs_cache: ClassVar[bool] = False

    def location(self) -> Path | None:
        return self.path

    def lock_path(self, location: Path) -> Path:
        return location.with_suffix(".lock")

    def read(self, location: Path) -> float | None:
        return json.loads(location.read_text())["value"] if location.is_file() else None

    def measure(self, location: Path | None, *, exclusive: bool) -> float | None:
        time.sleep(self.delay)
        self.measured.append(location)
        if location is not None and self.value is not None:
            quality_guard.keep_json(location, {"value": self.value})
        return self.value


class CountedExport(Counted):
    """A result that exists only as kept files (as an ONNX export)."""

    needs_cache: ClassVar[bool] = True


@pytest.fixture
def fresh_memo(monkeypatch):
    """This process has measured nothing yet."""
    monkeypatch.setattr(quality_guard, "_memo", {})


def test_a_result_is_measured_once_and_kept_for_the_next_process(tmp_path, fresh_memo):
    result = Counted(tmp_path / "kind" / "key.json")
    assert quality_guard.measured_once("key", result) == 0.5
    assert quality_guard.measured_once("key", result) == 0.5  # memoised
    quality_guard._memo.clear()  # as a new process would start: only the kept file
    assert quality_guard.measured_once("key", result) == 0.5
    assert result.measured == [result.path]
    assert json.loads(result.path.read_text()) == {"value": 0.5}


def test_a_result_that_cannot_be_measured_is_neither_kept_nor_memoised(tmp_path, fresh_memo):
    result = Counted(tmp_path / "key.json", value=None)
    assert quality_guard.measured_once("key", result) is None
    assert quality_guard.measured_once("key", result) is None
    assert len(result.measured) == 2 and not result.path.exists()


def test_a_result_without_a_location_is_measured_and_memoised(fresh_memo):
    result = Counted(None)
    assert quality_guard.measured_once("key", result) == 0.5
    assert quality_guard.measured_once("key", result) == 0.5
    assert result.measured == [None]


def test_a_cache_that_cannot_be_written_costs_a_measurement_not_an_error(tmp_path, fresh_memo):
    (tmp_path / "not-a-folder").write_text("")
    result = Counted(tmp_path / "not-a-folder" / "key.json")
    assert quality_guard.measured_once("key", result) == 0.5
    assert result.measured == [None]  # measured, kept nowhere


def test_a_result_that_lives_in_the_cache_fails_where_it_cannot_be_written(tmp_path, fresh_memo):
    (tmp_path / "not-a-folder").write_text("")
    result = CountedExport(tmp_path / "not-a-folder" / "key")
    with pytest.raises(OSError):
        quality_guard.measured_once("key", result)
    assert result.measured == []


def test_threads_asking_together_measure_once(tmp_path, fresh_memo):
    result = Counted(tmp_path / "key.json", delay=0.2)
    barrier = threading.Barrier(4)
    values: list[float | None] = []

    def ask() -> None:
        barrier.wait()
        values.append(quality_guard.measured_once("key", result))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values == [0.5] * 4 and len(result.measured) == 1


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("WORDS", lambda words: [*words, "comet"]),
        ("SENTENCES", lambda sentences: (*sentences[:-1], "Ein anderer Satz.")),
    ],
)
def test_editing_the_guard_corpus_changes_every_guards_key(monkeypatch, name, edit):
    before = quality_guard.guard_identity()
    assert quality_guard.guard_identity() == before  # the same texts, the same key
    monkeypatch.setattr(guard_corpus, name, edit(getattr(guard_corpus, name)))
    assert quality_guard.guard_identity()["corpus"] != before["corpus"]


def test_the_bench_draws_its_corpus_from_the_guards_generator():
    from embedfleet import bench

    assert bench.corpus is guard_corpus.corpus


def test_the_bf16_and_int8_guards_share_the_once_per_machine_mechanism(
    tiny_model_dir, tmp_path, monkeypatch, fresh_memo
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDFLEET_CACHE_DIR", str(cache))
    monkeypatch.setattr(local_models, "cpu_has_native_bf16", lambda: True)
    asked: list[tuple[str, str]] = []
    measured_once = quality_guard.measured_once

    def recording(key, result):
        asked.append((key[0], type(result).__name__))
        return measured_once(key, result)

    monkeypatch.setattr(quality_guard, "measured_once", recording)
    torch_auto = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), device="cpu")
    onnx_auto = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), backend="onnx")
    assert torch_auto.precision == "bf16" and onnx_auto.precision == "int8"
    assert asked == [("precision", "ReducedPrecisionGuard"), ("onnx", "Export")]
    assert len(list((cache / "precision").glob("*.json"))) == 1
    assert len(list((cache / "onnx").glob("*/guard.json"))) == 1
    assert {key[0] for key in quality_guard._memo} == {"precision", "onnx"}
