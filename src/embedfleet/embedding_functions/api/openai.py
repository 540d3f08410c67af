"""OpenAI, Azure OpenAI and OpenAI-compatible servers, through the official SDK.

The SDK knows the routes (Azure's deployment paths, API versions) and headers,
so requests travel through it (:class:`OpenAISdkTransport`) instead of raw httpx;
the wire format itself is OpenAI's documented ``/embeddings`` body. The SDK's own
retries are off (``max_retries=0``): retries happen once, in the shared layer,
which sees the SDK's exceptions mapped to the same failures as any other HTTP
error. Vectors are requested base64-encoded, which is far smaller on the wire
than JSON floats, unless ``encoding_format="float"``; both are decoded here.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import numpy as np

from embedfleet.embedding_functions.api.base import (
    API_INSTALL_HINT,
    HttpEmbeddingFunction,
    HttpOptions,
)
from embedfleet.embedding_functions.api.transport import (
    Answered,
    ApiRequest,
    HttpFailure,
    Transport,
)
from embedfleet.embedding_functions.base import Documents, Requirement
from embedfleet.embedding_functions.registry import register
from embedfleet.embedding_functions.token_counter import TokenCounter
from embedfleet.errors import ConfigError
from embedfleet.tokens import count_tokens, encoding_for_model, tiktoken_encoding

if TYPE_CHECKING:
    from typing_extensions import Unpack


class OpenAISdkTransport:
    """Sends an ``/embeddings`` body as ``client.embeddings.create(**body)`` and returns
    the SDK's response with its headers (through ``with_raw_response``: OpenAI's
    ``x-ratelimit-*`` headers tell the quota the account's limits); every SDK failure
    becomes an :class:`HttpFailure`.

    The SDK's exceptions are never chained: their text may echo the key.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def send(self, request: ApiRequest) -> Any:
        import openai

        try:
            raw = getattr(self.client.embeddings, "with_raw_response", None)
            if raw is None:  # a client without it (a stand-in): the response alone
                return self.client.embeddings.create(**request.body)
            response = raw.create(**request.body)
            return Answered(response.parse(), response.headers)
        except openai.APIStatusError as exc:  # chained to nothing: its text may echo the key
            raise HttpFailure(exc.status_code, exc.response.headers, str(exc.message)) from None
        except openai.APIConnectionError as exc:
            raise HttpFailure(None, {}, f"{type(exc).__name__}: {exc}") from None
        except (ValueError, openai.APIResponseValidationError) as exc:  # truncated JSON
            raise HttpFailure(200, {}, f"unreadable answer: {type(exc).__name__}") from None


@register("openai")
class OpenAIEmbeddingFunction(HttpEmbeddingFunction):
    """``/embeddings`` of OpenAI, Azure OpenAI (``api_type="azure"``) or any
    OpenAI-compatible server (vLLM, Ollama, LM Studio, TEI's ``/v1``) via ``api_base``."""

    requirements = (Requirement("openai", API_INSTALL_HINT),)
    max_inputs_per_request = 2048  # OpenAI's documented limits per request
    max_tokens_per_request = 300_000
    max_tokens_per_input = 8192
    default_api_base = "https://api.openai.com/v1"

    def __init__(
        self,
        model_name: str = "text-embedding-3-small",
        *,
        api_key_env_var: str = "OPENAI_API_KEY",
        dimensions: int | None = None,
        organization_id: str | None = None,
        default_headers: dict[str, str] | None = None,
        api_type: str | None = None,
        api_version: str | None = None,
        deployment_id: str | None = None,
        encoding_format: str = "base64",
        **options: Unpack[HttpOptions],
    ) -> None:
        if api_type not in (None, "azure"):
            raise ConfigError(f"api_type must be None or 'azure', got {api_type!r}")
        if api_type == "azure" and not (options.get("api_base") and api_version):
            raise ConfigError("api_type='azure' needs api_base (the endpoint) and api_version")
        if encoding_format not in ("base64", "float"):
            raise ConfigError(
                f"encoding_format must be 'base64' or 'float', got {encoding_format!r}"
            )
        super().__init__(api_key_env_var=api_key_env_var, **options)
        self.model_name = model_name
        self.dimensions = dimensions
        self.organization_id = organization_id
        self.default_headers = dict(default_headers or {})
        self.api_type = api_type
        self.api_version = api_version
        self.deployment_id = deployment_id
        self.encoding_format = encoding_format

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            **super().get_config(),
            "dimensions": self.dimensions,
            "organization_id": self.organization_id,
            "default_headers": self.default_headers,
            "api_type": self.api_type,
            "api_version": self.api_version,
            "deployment_id": self.deployment_id,
            "encoding_format": self.encoding_format,
        }

    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        """The documented ``/embeddings`` body; no path, as the SDK picks the route (and
        errors name ``api_base``)."""
        body: dict[str, Any] = {
            "input": texts,
            "model": self.deployment_id or self.model_name,
            "encoding_format": self.encoding_format,
        }
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return ApiRequest("", body)

    def parse_vectors(self, payload: Any) -> list[Any]:
        """The SDK response's vectors in input order; damaged base64 or a damaged shape
        is an unreadable answer, retried."""
        try:
            return [_decode(item.embedding) for item in sorted(payload.data, key=_index)]
        except (AttributeError, TypeError, ValueError) as exc:
            raise HttpFailure(200, {}, f"unreadable vectors: {type(exc).__name__}") from None

    def make_transport(self) -> Transport:
        """The official SDK client, with its own retries off."""
        import openai

        common: dict[str, Any] = {
            # never None: the SDK would then read OPENAI_API_KEY itself and send it
            # to whatever server api_base names
            "api_key": self.api_key() or "no-key",
            "organization": self.organization_id,
            "default_headers": self.default_headers or None,
            "timeout": self.timeout,
            "max_retries": 0,  # retries live in the shared layer
        }
        if self.api_type == "azure":
            client: Any = openai.AzureOpenAI(
                azure_endpoint=self.api_base,
                api_version=self.api_version,
                azure_deployment=self.deployment_id,
                **common,
            )
        else:
            client = openai.OpenAI(base_url=self.api_base, **common)
        return OpenAISdkTransport(client)

    def headers(self) -> dict[str, str]:
        """None of ours: the SDK client sends the key itself (a bearer token, or Azure's
        ``api-key`` header)."""
        return {}

    def billed_tokens(self, texts: Documents) -> list[int]:
        """tiktoken's exact counts where its files are at hand, else a safe estimate."""
        return count_tokens(texts, encoding=encoding_for_model(self.model_name))

    def token_counter(self) -> TokenCounter:
        """tiktoken's count where its encoding file is local, else the estimate (which
        never counts fewer), against the 8,192 tokens OpenAI takes per input."""
        encoding = encoding_for_model(self.model_name)
        exact = tiktoken_encoding(encoding) is not None
        basis = f"tiktoken {encoding}" if exact else "a conservative estimate (no tiktoken files)"
        return TokenCounter.of(self.billed_tokens, self.max_tokens_per_input, basis)


def _index(item: Any) -> int:
    return item.index


def _decode(embedding: Any) -> Any:
    """A vector as floats: base64 of little-endian float32, or already a list."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return embedding
