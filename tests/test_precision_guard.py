"""precision="auto" uses bf16/fp16 only where the model keeps cosine >= 0.999 to fp32."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest

from embedfleet.embedding_functions import SentenceTransformerEmbeddingFunction
from embedfleet.embedding_functions.local import guard_corpus, precision_guard, quality_guard
from embedfleet.embedding_functions.local import models as local_models
from embedfleet.embedding_functions.local.precision_guard import guarded_precision
from embedfleet.embedding_functions.local.quality_guard import REDUCED_MIN_COSINE, cosines
from tests.tiny_models import build_tiny_sentence_transformer
from tests.together import run_together


@pytest.fixture
def native_bf16(monkeypatch):
    """auto picks bf16 as on a CPU with native bf16 (bf16 itself runs on any CPU)."""
    monkeypatch.setattr(local_models, "cpu_has_native_bf16", lambda: True)


@pytest.fixture(scope="module")
def fragile_model_dir(tmp_path_factory):
    """Activations far from zero: bf16 rounds their differences away."""
    return build_tiny_sentence_transformer(
        tmp_path_factory.mktemp("fragile-model"), embedding_offset=10.0
    )


@pytest.fixture
def measured(monkeypatch) -> list[str]:
    """The reduced precisions the guard measures (rather than reads back), in order."""
    seen: list[str] = []
    measure = precision_guard._measure

    def counting(spec, reduced):
        seen.append(reduced)
        return measure(spec, reduced)

    monkeypatch.setattr(precision_guard, "_measure", counting)
    return seen


def auto(model_dir, **kwargs) -> SentenceTransformerEmbeddingFunction:
    return SentenceTransformerEmbeddingFunction(str(model_dir), device="cpu", **kwargs)


def test_auto_keeps_bf16_where_the_guard_holds(tiny_model_dir, native_bf16):
    ef = auto(tiny_model_dir)
    assert ef.precision == "bf16"
    measured = ef.describe()["precision_min_cosine"]
    assert REDUCED_MIN_COSINE <= measured <= 1.0
    texts = ["a short text", "another one, a little longer than the first"]
    fp32 = auto(tiny_model_dir, precision="fp32")
    assert cosines(np.stack(ef(texts)), np.stack(fp32(texts))).min() >= REDUCED_MIN_COSINE


def test_auto_falls_back_to_fp32_where_bf16_loses_the_vectors(
    fragile_model_dir, native_bf16, caplog
):
    with caplog.at_level(logging.WARNING, logger=precision_guard.__name__):
        ef = auto(fragile_model_dir)
        assert ef.precision == "fp32"
    assert ef.describe()["precision_min_cosine"] < REDUCED_MIN_COSINE
    assert "using fp32" in caplog.text and "bf16 keeps a minimum cosine" in caplog.text
    texts = ["a short text", "another one"]
    fp32 = auto(fragile_model_dir, precision="fp32")
    np.testing.assert_allclose(np.stack(ef(texts)), np.stack(fp32(texts)), rtol=1e-5, atol=1e-6)
    explicit = auto(fragile_model_dir, precision="bf16")  # asked for: never second-guessed
    assert explicit.precision == "bf16" and "precision_min_cosine" not in explicit.describe()


def test_fp16_is_guarded_the_same_way(tiny_model_dir, fragile_model_dir):
    """fp16 is auto's choice on CUDA; the guard runs on whatever device the model is on."""
    sound = local_models.ModelSpec(str(tiny_model_dir), None, "cpu", "fp16")
    fragile = local_models.ModelSpec(str(fragile_model_dir), None, "cpu", "fp16")
    assert guarded_precision(sound, "fp16")[0] == "fp16"
    precision, lowest = guarded_precision(fragile, "fp16")
    assert precision == "fp32" and lowest < REDUCED_MIN_COSINE


def test_the_result_is_kept_once_per_machine_and_remeasured_when_the_files_change(
    tmp_path, native_bf16, measured
):
    model_dir = build_tiny_sentence_transformer(tmp_path / "model", seed=3)
    spec = local_models.ModelSpec(str(model_dir), None, "cpu", "fp32")
    first = guarded_precision(spec, "bf16")
    quality_guard._memo.clear()  # as a new process would start: only the disk result
    assert guarded_precision(spec, "bf16") == first and measured == ["bf16"]
    kept = list((precision_guard.cache_dir() / "precision").glob("*.json"))
    assert kept and all("min_cosine" in path.read_text() for path in kept)

    quality_guard._memo.clear()
    weights = next(model_dir.rglob("*.safetensors"))
    status = weights.stat()  # a new mtime: the files may have changed
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert guarded_precision(spec, "bf16") == first and measured == ["bf16", "bf16"]


def test_editing_the_guard_corpus_measures_again(tmp_path, monkeypatch, measured):
    """The kept result is keyed by the corpus's texts, not their number."""
    model_dir = build_tiny_sentence_transformer(tmp_path / "model", seed=13)
    spec = local_models.ModelSpec(str(model_dir), None, "cpu", "fp32")
    guarded_precision(spec, "bf16")
    kept = precision_guard._result_path(spec, "bf16")
    quality_guard._memo.clear()  # a new process, after the word list was edited
    monkeypatch.setattr(guard_corpus, "WORDS", [*guard_corpus.WORDS[:-1], "comet"])
    assert len(quality_guard.guard_texts()) == len(guard_corpus.SENTENCES) + 96
    assert precision_guard._result_path(spec, "bf16") != kept
    guarded_precision(spec, "bf16")
    assert measured == ["bf16", "bf16"]


def test_a_non_finite_vector_fails_the_guard():
    reference = np.ones((3, 4))
    lowered = reference.copy()
    lowered[1, 2] = np.nan  # fp16 overflow shows up as inf or nan
    assert cosines(reference, lowered).tolist() == [1.0, -1.0, 1.0]


def test_a_pickled_function_resolves_device_and_precision_where_it_runs(
    tiny_model_dir, native_bf16
):
    ef = auto(tiny_model_dir)
    assert ef.precision == "bf16" and ef.resolved_device == "cpu"
    copy = pickle.loads(pickle.dumps(ef))
    assert copy._runner is None  # the backend, with its device and precision, stays behind
    assert copy.precision == "bf16"  # resolved again, here


def test_a_model_that_does_not_fit_in_fp32_keeps_the_reduced_precision_unmeasured(
    tmp_path, monkeypatch, caplog
):
    """A model sized for fp16 on its GPU cannot load in fp32 there: the guard cannot run,
    auto keeps fp16 with a warning, and nothing is kept (the next process tries again)."""
    import torch

    model_dir = build_tiny_sentence_transformer(tmp_path / "model", seed=5)
    spec = local_models.ModelSpec(str(model_dir), None, "cpu", "fp32")
    load = precision_guard.load_uncached

    def fp32_does_not_fit(spec):  # what CUDA raises; no GPU here to fill
        if spec.precision == "fp32":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 28 GiB")
        return load(spec)

    monkeypatch.setattr(precision_guard, "load_uncached", fp32_does_not_fit)
    with caplog.at_level(logging.WARNING, logger=precision_guard.__name__):
        assert guarded_precision(spec, "fp16") == ("fp16", None)
    assert "does not fit on cpu in fp32" in caplog.text and "using fp16 unmeasured" in caplog.text
    assert ("precision", spec, "fp16") not in quality_guard._memo
    assert precision_guard._kept_min_cosine(precision_guard._result_path(spec, "fp16")) is None


def test_processes_starting_together_measure_once(tmp_path):
    """A fleet's replicas reach the guard at the same moment (a file barrier): one
    measures, the other waits on the lock and reads the kept result."""
    model_dir = build_tiny_sentence_transformer(tmp_path / "model", seed=9)
    setup = (
        "import sys\n"
        "from embedfleet.embedding_functions.local.models import ModelSpec\n"
        "from embedfleet.embedding_functions.local.precision_guard import guarded_precision\n"
        "spec = ModelSpec(sys.argv[1], None, 'cpu', 'fp32')\n"
    )
    step = "print(guarded_precision(spec, 'bf16'))\n"
    environment = {**os.environ, "EMBEDFLEET_CACHE_DIR": str(tmp_path / "cache")}
    outputs = run_together(setup, step, str(model_dir), tmp_path, environment)
    logs = "".join(error for _, error in outputs)
    assert logs.count("precision guard for") == 1, logs
    assert outputs[0][0] == outputs[1][0] and "bf16" in outputs[0][0]
