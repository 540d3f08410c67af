"""Every API provider as the tests meet it: its class, its fake server and how it speaks.

Behaviour every provider shares (keys, retries, splitting, typed errors) is
specified once and checked for each of them by parametrizing over
:data:`PROVIDERS`. A test module takes the fixtures with
``from tests.fakes.providers import make_fixture, server_fixture  # noqa: F401``
and picks its providers with :data:`each_provider` or :func:`only`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from embedfleet.embedding_functions import (
    CohereEmbeddingFunction,
    GoogleGenerativeAiEmbeddingFunction,
    HttpEmbeddingFunction,
    HuggingFaceEmbeddingFunction,
    HuggingFaceEmbeddingServer,
    JinaEmbeddingFunction,
    OpenAIEmbeddingFunction,
)
from tests.fakes import cohere, gemini, huggingface_api, jina, openai_api, tei
from tests.fakes.server import FakeServer

CANARY = "sk-canary-7f3e-never-print-me"
TEXTS = [f"text number {index} " * (1 + index % 3) for index in range(70)]


@dataclass(frozen=True)
class Provider:
    """One provider: its class, its fake and how it speaks."""

    cls: type[HttpEmbeddingFunction]
    fake: ModuleType
    registry_name: str
    env_var: str  # the variable the tests keep the key in
    base_path: str  # appended to the fake's URL to make api_base (TEI: the url)
    path: str  # the path every request goes to
    limit: int  # documented inputs per request
    auth_header: str
    auth_value: str  # with {key}
    document_kind: Any  # the task or input type documents are sent with
    query_kind: Any  # and queries
    kwargs: dict[str, Any] = field(default_factory=dict)
    checks_bearer: bool = True  # FakeServer checks bearer tokens only
    default_env_var: str | None = None  # documented defaults, where the class has them
    default_api_base: str | None = None

    def build(self, url: str, **options: Any) -> HttpEmbeddingFunction:
        """The provider pointed at the server at ``url``, backing off 10 ms at first."""
        options = {
            **self.kwargs,
            "api_key_env_var": self.env_var,
            "retry_backoff_seconds": 0.01,
            **options,
        }
        if self.cls is HuggingFaceEmbeddingServer:
            return self.cls(f"{url}{self.base_path}", **options)
        return self.cls(api_base=f"{url}{self.base_path}", **options)

    def expected_vectors(self, texts: list[str], *, query: bool = False) -> Any:
        return self.fake.expected_vectors(texts, self.query_kind if query else self.document_kind)


PROVIDERS = {
    "huggingface_server": Provider(
        HuggingFaceEmbeddingServer,
        tei,
        "huggingface_server",
        "TEI_TEST_KEY",
        "/embed",
        "/embed",
        tei.MAX_CLIENT_BATCH_SIZE,
        "authorization",
        "Bearer {key}",
        None,
        None,
    ),
    "openai": Provider(
        OpenAIEmbeddingFunction,
        openai_api,
        "openai",
        "OPENAI_TEST_KEY",
        "/v1",
        "/v1/embeddings",
        2048,
        "authorization",
        "Bearer {key}",
        None,
        None,
        default_env_var="OPENAI_API_KEY",
        default_api_base="https://api.openai.com/v1",
    ),
    "azure": Provider(
        OpenAIEmbeddingFunction,
        openai_api,
        "openai",
        "AZURE_TEST_KEY",
        "",
        "/openai/deployments/my-embeddings/embeddings?api-version=2024-10-21",
        2048,
        "api-key",
        "{key}",
        None,
        None,
        kwargs={"api_type": "azure", "api_version": "2024-10-21", "deployment_id": "my-embeddings"},
        checks_bearer=False,
    ),
    "cohere": Provider(
        CohereEmbeddingFunction,
        cohere,
        "cohere",
        "COHERE_TEST_KEY",
        "/v2",
        "/v2/embed",
        96,
        "authorization",
        "Bearer {key}",
        "search_document",
        "search_query",
        default_env_var="COHERE_API_KEY",
        default_api_base="https://api.cohere.com/v2",
    ),
    "gemini": Provider(
        GoogleGenerativeAiEmbeddingFunction,
        gemini,
        "google_generative_ai",
        "GEMINI_TEST_KEY",
        "/v1beta",
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        100,
        "x-goog-api-key",
        "{key}",
        "RETRIEVAL_DOCUMENT",
        "RETRIEVAL_QUERY",
        checks_bearer=False,
        default_env_var="GEMINI_API_KEY",
        default_api_base="https://generativelanguage.googleapis.com/v1beta",
    ),
    "huggingface": Provider(
        HuggingFaceEmbeddingFunction,
        huggingface_api,
        "huggingface",
        "HF_TEST_TOKEN",
        "/hf-inference",
        "/hf-inference/models/sentence-transformers/all-MiniLM-L6-v2/pipeline/feature-extraction",
        32,
        "authorization",
        "Bearer {key}",
        None,
        None,
        default_env_var="HF_TOKEN",
        default_api_base="https://router.huggingface.co/hf-inference",
    ),
    "jina": Provider(
        JinaEmbeddingFunction,
        jina,
        "jina",
        "JINA_TEST_KEY",
        "/v1",
        "/v1/embeddings",
        2048,
        "authorization",
        "Bearer {key}",
        "retrieval.passage",
        "retrieval.query",
        kwargs={"task": "retrieval.passage"},
        default_env_var="JINA_API_KEY",
        default_api_base="https://api.jina.ai/v1",
    ),
}


def only(*names: str) -> pytest.MarkDecorator:
    """Run a test for the named providers (as ``provider``)."""
    return pytest.mark.parametrize("provider", [PROVIDERS[name] for name in names], ids=names)


#: Run a test once for every provider.
each_provider = only(*PROVIDERS)
#: Providers whose fake checks the key it is sent (a bearer token).
each_provider_checking_keys = only(*[name for name, p in PROVIDERS.items() if p.checks_bearer])
#: Providers with a documented default endpoint and key variable.
each_provider_with_defaults = only(*[name for name, p in PROVIDERS.items() if p.default_api_base])


@pytest.fixture(name="server")
def server_fixture(provider: Provider) -> Iterator[FakeServer]:
    """The provider's fake, checking the canary key where it can."""
    server = FakeServer(
        provider.fake.answer,
        api_key=CANARY if provider.checks_bearer else None,
        refusal=getattr(provider.fake, "refusal", None),
    )
    yield server
    server.stop()


@pytest.fixture(name="make")
def make_fixture(
    provider: Provider, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., HttpEmbeddingFunction]:
    """Builds the provider against ``server``, its key in ``provider.env_var``."""
    monkeypatch.setenv(provider.env_var, CANARY)

    def make(**options: Any) -> HttpEmbeddingFunction:
        return provider.build(server.url, **options)

    return make
