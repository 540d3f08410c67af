"""backend="onnx": the model exported once with torch and run by ONNX Runtime on the CPU;
int8 only where the quality guard holds (real exports, real ORT sessions)."""

from __future__ import annotations

import json
import os
import weakref

import numpy as np
import pytest

from embedfleet.embedding_functions import (
    DefaultEmbeddingFunction,
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.embedding_functions.local import onnx_export, quality_guard
from embedfleet.errors import ConfigError, ModelError, QualityGuardError
from tests.together import run_together

LONG_TEXT = " ".join(["word"] * 100)  # over the tiny model's 64-token limit
TEXTS = [f"{' '.join(['comet'] * (1 + index % 6))} {index}" for index in range(20)] + [LONG_TEXT]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("EMBEDFLEET_CACHE_DIR", str(directory))
    return directory


def onnx(model_dir, **kwargs) -> SentenceTransformerEmbeddingFunction:
    return SentenceTransformerEmbeddingFunction(str(model_dir), backend="onnx", **kwargs)


def torch_fp32(model_dir, **kwargs) -> SentenceTransformerEmbeddingFunction:
    return SentenceTransformerEmbeddingFunction(
        str(model_dir), device="cpu", precision="fp32", **kwargs
    )


@pytest.mark.parametrize(
    "arguments",
    [{}, {"document_prompt": "passage: ", "normalize_embeddings": True, "batch_size": 4}],
    ids=["plain", "prompt-normalized"],
)
def test_fp32_export_matches_torch(tiny_model_dir, cache, arguments):
    ef = onnx(tiny_model_dir, precision="fp32", **arguments)
    vectors = np.stack(ef(TEXTS))
    expected = np.stack(torch_fp32(tiny_model_dir, **arguments)(TEXTS))
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    assert ef.precision == "fp32" and ef.describe()["backend"] == "onnx"
    assert ef.stats.truncated == 1
    single = ef.embed_batch([TEXTS[3]])  # one batch, straight through the session
    np.testing.assert_allclose(single[0], expected[3], rtol=1e-4, atol=1e-5)


def test_export_is_cached_under_a_key_of_the_weights(tiny_model_dir, tmp_path, cache, monkeypatch):
    from tests.tiny_models import build_tiny_sentence_transformer

    first = onnx(tiny_model_dir, precision="fp32")
    key = onnx_export.export_key(first.model, ("input_ids", "attention_mask", "token_type_ids"))
    stale = cache / "onnx" / f".export-{key}-killed"  # what a killed export leaves behind
    stale.mkdir(parents=True)
    first.warm_up()
    assert not stale.exists()
    exports = [path for path in (cache / "onnx").iterdir() if not path.name.startswith(".")]
    assert [path.name for path in exports] == [key]
    assert {path.name for path in exports[0].iterdir()} == {
        "model.onnx",
        "model.int8.onnx",
        "guard.json",
    }
    guard = json.loads((exports[0] / "guard.json").read_text())
    assert guard["fp32_max_relative_error"] < 1e-5  # the export reproduces torch fp32

    def no_second_export(*arguments):
        raise AssertionError("exported again although the cache holds this model")

    with monkeypatch.context() as patch:
        patch.setattr(onnx_export, "_export", no_second_export)
        patch.setattr(onnx_export, "_models", {})  # as in a new process: only the files
        patch.setattr(onnx_export, "_keys", weakref.WeakKeyDictionary())
        patch.setattr(quality_guard, "_memo", {})
        onnx(tiny_model_dir, precision="fp32").warm_up()

    other = build_tiny_sentence_transformer(tmp_path / "other", seed=1)  # other weights
    onnx(other, precision="fp32").warm_up()
    exports = [path for path in (cache / "onnx").iterdir() if not path.name.startswith(".")]
    assert len(exports) == 2


def test_editing_the_guard_corpus_exports_and_measures_again(tiny_model_dir, monkeypatch):
    from embedfleet.embedding_functions.local import guard_corpus

    model = onnx(tiny_model_dir, precision="fp32").model
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    before = onnx_export.export_key(model, inputs)
    monkeypatch.setattr(guard_corpus, "WORDS", [*guard_corpus.WORDS, "comet"])
    assert onnx_export.export_key(model, inputs) != before


def test_replicas_starting_together_export_once(tiny_model_dir, tmp_path, cache):
    """Two processes reach the export at the same moment (a file barrier): one exports,
    the other waits on the lock and uses the result."""
    setup = (
        "import sys\n"
        "from embedfleet.embedding_functions import SentenceTransformerEmbeddingFunction\n"
        "ef = SentenceTransformerEmbeddingFunction(sys.argv[1], backend='onnx', precision='fp32')\n"
        "ef.model  # loaded: what remains is the export\n"
    )
    step = "ef.warm_up()\nprint(ef(['a comet'])[0][:3])\n"
    environment = {**os.environ, "EMBEDFLEET_CACHE_DIR": str(cache)}
    outputs = run_together(setup, step, str(tiny_model_dir), tmp_path, environment)
    logs = "".join(error for _, error in outputs)
    assert logs.count("exported the model to") == 1, logs
    assert outputs[0][0] == outputs[1][0]
    assert len([path for path in (cache / "onnx").iterdir() if path.is_dir()]) == 1


def test_an_export_that_does_not_reproduce_torch_is_refused(tiny_model_dir, cache, monkeypatch):
    monkeypatch.setattr(quality_guard, "FP32_MAX_RELATIVE_ERROR", 0.0)  # nothing can match
    with pytest.raises(ModelError, match=r"does not reproduce it: .* use backend='torch'"):
        onnx(tiny_model_dir, precision="fp32").warm_up()
    assert not [path for path in (cache / "onnx").iterdir() if path.is_dir()]  # nothing kept


def test_int8_is_used_where_the_guard_holds(tiny_model_dir, cache):
    ef = onnx(tiny_model_dir)  # precision="auto"
    assert ef.precision == "int8"
    guard = json.loads((ef.runner.onnx_model().path.parent / "guard.json").read_text())
    assert guard["int8_min_cosine"] >= quality_guard.INT8_MIN_COSINE
    assert ef.describe()["int8_min_cosine"] == guard["int8_min_cosine"]
    vectors = np.stack(ef(TEXTS))
    expected = np.stack(torch_fp32(tiny_model_dir)(TEXTS))
    cosines = np.einsum("ij,ij->i", vectors, expected) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosines.min() >= quality_guard.INT8_MIN_COSINE


def test_int8_is_refused_where_the_guard_fails(tmp_path, cache):
    """A model with outlier weights that int8 blocks cannot hold: explicit int8 is an error
    naming the measurement; auto falls back to fp32 and matches torch."""
    from tests.tiny_models import build_tiny_sentence_transformer

    model_dir = build_tiny_sentence_transformer(tmp_path / "outliers", weight_outliers=1.0)
    with pytest.raises(QualityGuardError, match=r"minimum cosine to fp32 .* is 0\.9\d+, below"):
        onnx(model_dir, precision="int8").warm_up()
    ef = onnx(model_dir)
    assert ef.precision == "fp32"
    assert ef.describe()["int8_min_cosine"] < quality_guard.INT8_MIN_COSINE
    expected = np.stack(torch_fp32(model_dir)(TEXTS))
    np.testing.assert_allclose(np.stack(ef(TEXTS)), expected, rtol=1e-4, atol=1e-5)


def test_default_model_in_auto_precision_keeps_its_quality_beyond_the_guard_corpus(repo_root):
    """Wherever auto picks int8 for all-MiniLM-L6-v2, texts the guard never saw (the
    labelled retrieval set) keep cosine >= 0.999 to torch fp32, and where it picks fp32
    the guard measured below the floor."""
    ef = DefaultEmbeddingFunction(backend="onnx")  # the session's cache: exported once
    measured = ef.describe()["int8_min_cosine"]
    assert (ef.precision == "int8") == (measured >= quality_guard.INT8_MIN_COSINE)
    texts = [
        json.loads(line)["text"]
        for line in (repo_root / "data" / "retrieval" / "corpus.jsonl").read_text().splitlines()
    ]
    texts += [LONG_TEXT * 4]
    expected = np.stack(DefaultEmbeddingFunction(precision="fp32")(texts))
    vectors = np.stack(ef(texts))
    assert np.einsum("ij,ij->i", vectors, expected).min() >= quality_guard.INT8_MIN_COSINE


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"backend": "tensorrt"}, "backend must be one of"),
        ({"backend": "onnx", "device": "cuda"}, "runs on the CPU"),
        ({"backend": "onnx", "precision": "bf16"}, "with backend='onnx', precision"),
        ({"precision": "int8"}, "precision must be one of"),
    ],
)
def test_bad_backend_arguments_are_config_errors(tiny_model_dir, arguments, message):
    with pytest.raises(ConfigError, match=message):
        SentenceTransformerEmbeddingFunction(str(tiny_model_dir), **arguments)


def test_config_round_trip_keeps_the_backend(tiny_model_dir, cache):
    ef = onnx(tiny_model_dir, precision="fp32")
    ef(["warm"])
    rebuilt = SentenceTransformerEmbeddingFunction.build_from_config(ef.get_config())
    assert rebuilt.backend == "onnx"
    np.testing.assert_array_equal(np.stack(rebuilt(TEXTS)), np.stack(ef(TEXTS)))
    assert DefaultEmbeddingFunction(backend="onnx").get_config()["backend"] == "onnx"


def test_pickled_function_leaves_its_session_behind(tiny_model_dir, cache):
    import pickle

    ef = onnx(tiny_model_dir, precision="fp32")
    ef(["warm"])
    clone = pickle.loads(pickle.dumps(ef))
    assert clone._runner is None  # the backend holding the session stays behind
    np.testing.assert_array_equal(np.stack(clone(TEXTS)), np.stack(ef(TEXTS)))


def test_a_replicas_threads_become_the_sessions_threads(tiny_model_dir, cache):
    ef = onnx(tiny_model_dir, precision="fp32")
    before = np.stack(ef(TEXTS))
    ef.set_num_threads(1)  # what a fleet replica with num_cpus=1 does before warm_up
    session = ef.runner.onnx_model()
    assert session.threads == 1
    assert session.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(np.stack(ef(TEXTS)), before, rtol=1e-5, atol=1e-6)


def test_a_job_runs_on_the_onnx_backend_and_records_it(repo_root, tmp_path, local_ray):
    from embedfleet.job import Job, JobSpec

    spec = JobSpec.from_toml(repo_root / "jobs/quickstart.toml")
    spec.output.uri = str(tmp_path / "out")
    spec.embedding.config.update({"backend": "onnx", "precision": "fp32"})
    spec.fleet.replicas = 1
    result = Job(spec).run(progress=False)
    assert result.complete and result.embedded == 240

    import embedfleet

    table = embedfleet.read(spec.output.uri).to_table()
    metadata = json.loads(table.schema.metadata[b"embedfleet"])
    assert metadata["backend"] == "onnx" and metadata["precision"] == "fp32"
    assert metadata["config"]["backend"] == "onnx"
    assert metadata["int8_min_cosine"] is not None
    rows = [json.loads(line) for line in (repo_root / "data/sample/docs.jsonl").open()]
    expected = DefaultEmbeddingFunction(backend="onnx", precision="fp32")(
        [row["text"] for row in rows]
    )
    got = dict(zip(table["id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    for row, vector in zip(rows, expected, strict=True):
        np.testing.assert_allclose(got[row["id"]], vector, atol=1e-5)
