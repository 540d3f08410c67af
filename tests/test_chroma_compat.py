"""embedfleet functions inside a real chromadb: add and query, stored vectors,
persisted config, reopening in a new process, and Chroma's protocol checks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

chromadb = pytest.importorskip("chromadb")

from chromadb.api.types import EmbeddingFunction as ChromaEmbeddingFunction  # noqa: E402
from chromadb.api.types import validate_embedding_function  # noqa: E402
from chromadb.utils import embedding_functions as chroma_functions  # noqa: E402

from embedfleet.embedding_functions import (  # noqa: E402
    DefaultEmbeddingFunction,
    HashEmbeddingFunction,
)

DOCS = {
    "bread": "Knead flour, water, yeast and salt, let the dough rise, then bake the loaf.",
    "football": "The striker scored twice and the home team won the football match 3-1.",
    "astronomy": "Astronomers measure how far away galaxies are from the redshift of their light.",
}
QUERY = "How do I bake bread?"

# query_prefix="": the hash function embeds queries as "query: " + text by
# default, which would make a query equal to a document land anywhere.
FACTORIES = {
    "hash": lambda: HashEmbeddingFunction(dimension=16, query_prefix=""),
    "default": lambda: DefaultEmbeddingFunction(precision="fp32"),
}
EMBEDDING = [
    pytest.param("hash"),
    pytest.param("default", marks=pytest.mark.real_model),
]


@pytest.fixture(params=EMBEDDING)
def ef(request):
    return FACTORIES[request.param]()


def make_collection(path, ef, documents=DOCS):
    collection = chromadb.PersistentClient(path=str(path)).create_collection(
        "docs", embedding_function=ef
    )
    collection.add(ids=list(documents), documents=list(documents.values()))
    return collection


def query_ids(collection, text=QUERY):
    return collection.query(query_texts=[text], n_results=len(DOCS))["ids"][0]


REOPEN = """
import json, sys
import chromadb
from embedfleet import embedding_functions
path, query, ef_spec = json.loads(sys.argv[1])
kwargs = {} if ef_spec is None else {"embedding_function": embedding_functions.build(*ef_spec)}
collection = chromadb.PersistentClient(path=path).get_collection("docs", **kwargs)
print(json.dumps(collection.query(query_texts=[query], n_results=3)["ids"][0]))
"""


def reopen_and_query(path, ef_spec):
    """Query the collection at ``path`` from a fresh interpreter; ``ef_spec`` is
    (name, config) to pass a rebuilt function, or None to pass none."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REOPEN, json.dumps([str(path), QUERY, ef_spec])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- add and query
def test_query_equal_to_a_document_finds_that_document(tmp_path, ef):
    collection = make_collection(tmp_path, ef)
    result = collection.query(query_texts=list(DOCS.values()), n_results=1)
    assert [ids[0] for ids in result["ids"]] == list(DOCS)


@pytest.mark.real_model
def test_default_model_ranks_the_baking_document_first(tmp_path):
    collection = make_collection(tmp_path, FACTORIES["default"]())
    assert query_ids(collection)[0] == "bread"


def test_chroma_embeds_query_texts_with_embed_query(tmp_path):
    # With its default prefix the hash function embeds the query "beta" as
    # the text "query: beta", so only a document with that text matches it.
    documents = {"plain": "beta", "prefixed": "query: beta"}
    collection = make_collection(tmp_path, HashEmbeddingFunction(dimension=16), documents)
    assert collection.query(query_texts=["beta"], n_results=1)["ids"] == [["prefixed"]]


def test_stored_vectors_equal_the_function_output(tmp_path, ef):
    collection = make_collection(tmp_path, ef)
    stored = collection.get(include=["embeddings"])
    expected = dict(zip(DOCS, ef(list(DOCS.values())), strict=True))
    assert sorted(stored["ids"]) == sorted(DOCS)
    for doc_id, vector in zip(stored["ids"], stored["embeddings"], strict=True):
        assert np.allclose(vector, expected[doc_id])


# ---------------------------------------------------------------- persisted config
def test_persisted_config_records_the_embedfleet_function(tmp_path, ef):
    make_collection(tmp_path, ef)
    reopened = chromadb.PersistentClient(path=str(tmp_path)).get_collection(
        "docs", embedding_function=ef
    )
    recorded = reopened.configuration_json["embedding_function"]
    assert recorded == {"type": "known", "name": ef.name(), "config": ef.get_config()}
    assert ef.name() == f"embedfleet.{ef.provider_name}"


def test_creating_a_collection_leaves_chromas_own_names_alone(tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path))
    client.create_collection("docs", embedding_function=DefaultEmbeddingFunction())
    known = chroma_functions.known_embedding_functions
    assert known["default"] is chroma_functions.DefaultEmbeddingFunction
    assert known["sentence_transformer"] is chroma_functions.SentenceTransformerEmbeddingFunction
    assert known["embedfleet.default"] is DefaultEmbeddingFunction


# ---------------------------------------------------------------- a new process
def test_new_process_with_the_function_gets_the_same_results(tmp_path, ef):
    expected = query_ids(make_collection(tmp_path, ef))
    assert reopen_and_query(tmp_path, [ef.name(), ef.get_config()]) == expected


def test_new_process_rebuilds_the_function_from_persisted_config(tmp_path):
    # get_collection without embedding_function: chroma looks the persisted
    # name up in known_embedding_functions, which `import embedfleet` must fill.
    expected = query_ids(make_collection(tmp_path, FACTORIES["hash"]()))
    assert reopen_and_query(tmp_path, None) == expected


# ---------------------------------------------------------------- chroma's protocol
@pytest.mark.parametrize("provider", FACTORIES)
def test_chroma_validate_embedding_function_accepts_it(provider):
    validate_embedding_function(FACTORIES[provider]())


@pytest.mark.parametrize("provider", FACTORIES)
def test_is_an_instance_of_chromas_embedding_function_protocol(provider):
    ef = FACTORIES[provider]()
    members = getattr(ChromaEmbeddingFunction, "__protocol_attrs__", ())
    missing = sorted(member for member in members if not hasattr(ef, member))
    assert isinstance(ef, ChromaEmbeddingFunction), f"missing protocol members: {missing}"


@pytest.mark.parametrize("provider", FACTORIES)
def test_is_not_a_legacy_function(provider):
    assert FACTORIES[provider]().is_legacy() is False


def test_single_string_is_one_document(ef):
    vectors = ef("foo")
    assert len(vectors) == 1
    assert np.array_equal(vectors[0], ef(["foo"])[0])


def test_new_process_importing_chromadb_after_embedfleet_rebuilds_after_register(tmp_path):
    expected = query_ids(make_collection(tmp_path, FACTORIES["hash"]()))
    script = f"""
import json
from embedfleet import embedding_functions
import chromadb
embedding_functions.register_with_chroma()
collection = chromadb.PersistentClient(path={str(tmp_path)!r}).get_collection("docs")
result = collection.query(query_texts=[{QUERY!r}], n_results=3)
print(json.dumps(result["ids"][0]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
