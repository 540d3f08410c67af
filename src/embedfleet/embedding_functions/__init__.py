"""Embedding functions under Chroma's class names, and the provider registry.

>>> from embedfleet import embedding_functions
>>> ef = embedding_functions.DefaultEmbeddingFunction()
>>> embedding_functions.names()           # registered provider names
>>> embedding_functions.build("hash", {"dimension": 8})
"""

from embedfleet.embedding_functions.api.base import HttpEmbeddingFunction
from embedfleet.embedding_functions.api.cohere import CohereEmbeddingFunction
from embedfleet.embedding_functions.api.google import GoogleGenerativeAiEmbeddingFunction
from embedfleet.embedding_functions.api.huggingface import HuggingFaceEmbeddingFunction
from embedfleet.embedding_functions.api.huggingface_server import HuggingFaceEmbeddingServer
from embedfleet.embedding_functions.api.jina import JinaEmbeddingFunction
from embedfleet.embedding_functions.api.openai import OpenAIEmbeddingFunction
from embedfleet.embedding_functions.base import (
    Documents,
    Embedding,
    EmbeddingFunction,
    Embeddings,
    EmbeddingStats,
    Requirement,
    validate_documents,
)
from embedfleet.embedding_functions.hash import HashEmbeddingFunction
from embedfleet.embedding_functions.local.default import DefaultEmbeddingFunction
from embedfleet.embedding_functions.local.instructor import InstructorEmbeddingFunction
from embedfleet.embedding_functions.local.sentence_transformer import (
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.embedding_functions.registry import (
    ENTRY_POINT_GROUP,
    build,
    get,
    names,
    register,
    register_with_chroma,
)

#: ``embedding_functions.list()``: the name earlier releases documented for :func:`names`.
list = names

__all__ = [
    "ENTRY_POINT_GROUP",
    "CohereEmbeddingFunction",
    "DefaultEmbeddingFunction",
    "Documents",
    "Embedding",
    "EmbeddingFunction",
    "EmbeddingStats",
    "Embeddings",
    "GoogleGenerativeAiEmbeddingFunction",
    "HashEmbeddingFunction",
    "HttpEmbeddingFunction",
    "HuggingFaceEmbeddingFunction",
    "HuggingFaceEmbeddingServer",
    "InstructorEmbeddingFunction",
    "JinaEmbeddingFunction",
    "OpenAIEmbeddingFunction",
    "Requirement",
    "SentenceTransformerEmbeddingFunction",
    "build",
    "get",
    "list",
    "names",
    "register",
    "register_with_chroma",
    "validate_documents",
]
