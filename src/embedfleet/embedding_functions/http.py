"""The shared HTTP layer of API providers: keys, retries, error mapping, splitting.

An HTTP provider describes its wire format with two small hooks: ``request(texts,
query)`` returns the path and JSON body of one request, and ``vectors(payload)``
reads the vectors out of the JSON answer (an SDK provider overrides
``embed_request`` instead). Everything else is written once here:

* keys come from the environment variable named by ``api_key_env_var`` (read
  where the request is made: a fleet replica's own environment), or from an
  explicit ``api_key`` that is kept out of ``get_config()``, reprs and error
  messages;
* batches are split to the provider's documented ``max_inputs_per_request``;
* retries with exponential backoff and jitter on 408, 429, 5xx, timeouts,
  connection errors and unreadable JSON, honouring ``retry-after-ms`` and
  ``Retry-After``; never on 400/401/403/404/413/422;
* errors are mapped to the typed tree (``AuthenticationError``,
  ``BadRequestError``, ``RateLimitError``, ``ProviderError``) with ``raise ... from``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from embedfleet.embedding_functions.base import (
    DEFAULT_BATCH_SIZE,
    Documents,
    EmbeddingFunction,
    Requirement,
)
from embedfleet.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ProviderError,
    RateLimitError,
)

API_INSTALL_HINT = 'pip install "embedfleet[api]"'
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BAD_INPUT_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})
MAX_BACKOFF_SECONDS = 30.0


class HttpEmbeddingFunction(EmbeddingFunction):
    """Base of API providers: subclasses implement ``request`` and ``vectors``."""

    requirements = (Requirement("httpx", API_INSTALL_HINT),)
    #: The provider's documented limit of inputs in one request.
    max_inputs_per_request: ClassVar[int] = 96
    #: Where requests go unless ``api_base`` says otherwise.
    default_api_base: ClassVar[str] = ""

    def __init__(
        self,
        *,
        api_base: str | None = None,
        api_key_env_var: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff_seconds: float = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_long: str = "truncate",
    ) -> None:
        super().__init__(batch_size=batch_size, on_long=on_long)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout!r}")
        self.api_base = (api_base or self.default_api_base).rstrip("/")
        if not self.api_base:
            raise ConfigError(f"{type(self).__name__} needs api_base (the server's URL)")
        self.api_key_env_var = api_key_env_var
        self._api_key = api_key  # never in get_config(), repr or messages
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff_seconds = retry_backoff_seconds
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ the wire format
    def request(self, texts: Documents, *, query: bool) -> tuple[str, dict[str, Any]]:
        """Path (relative to ``api_base``, may be empty) and JSON body for one request."""
        raise NotImplementedError

    def vectors(self, payload: Any) -> list[list[float]]:
        """The vectors in a successful JSON answer, one per input, in order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        return {
            "api_base": self.api_base,
            "api_key_env_var": self.api_key_env_var,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_backoff_seconds": self.retry_backoff_seconds,
            **super().get_config(),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_client_lock", None)
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ embedding
    def embed_batch(self, texts: Documents, *, query: bool = False) -> list[Any]:
        vectors: list[Any] = []
        for start in range(0, len(texts), self.max_inputs_per_request):
            chunk = texts[start : start + self.max_inputs_per_request]
            got = self.embed_request(chunk, query=query)
            if len(got) != len(chunk):
                raise ProviderError(
                    f"{type(self).__name__} got {len(got)} vectors for {len(chunk)} texts "
                    f"from {self.api_base}"
                )
            vectors.extend(got)
        return vectors

    def embed_request(self, texts: Documents, *, query: bool) -> list[Any]:
        """One request's vectors: ``request`` -> POST with retries -> ``vectors``.

        SDK providers override this alone; splitting and count checks stay here."""
        path, body = self.request(texts, query=query)
        return self.vectors(self._post(path, body))

    def api_key(self) -> str | None:
        """The key for this process: explicit, or from ``api_key_env_var``."""
        if self._api_key is not None:
            return self._api_key
        if self.api_key_env_var is None:
            return None
        key = os.environ.get(self.api_key_env_var)
        if not key:
            raise ConfigError(
                f"{type(self).__name__} needs an API key: set the environment variable "
                f"{self.api_key_env_var}"
            )
        return key

    def headers(self) -> dict[str, str]:
        """Request headers; the default sends the key as a bearer token."""
        key = self.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _http(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    import httpx
                except ImportError as exc:
                    from embedfleet.errors import MissingDependencyError

                    raise MissingDependencyError(
                        f"{type(self).__name__} needs httpx: {API_INSTALL_HINT}"
                    ) from exc
                self._client = httpx.Client(timeout=self.timeout)
            return self._client

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON through httpx under the shared retry policy."""
        import httpx

        url = f"{self.api_base}/{path}" if path else self.api_base
        headers = self.headers()

        def send() -> Any:
            try:
                response = self._http().post(url, json=body, headers=headers)
            except httpx.TransportError as exc:  # timeouts and connection errors
                raise HttpFailure(None, {}, f"{type(exc).__name__}: {exc}") from exc
            if response.status_code >= 300:
                raise HttpFailure(response.status_code, response.headers, response.text[:500])
            try:
                return response.json()
            except ValueError as exc:
                raise HttpFailure(response.status_code, {}, "unreadable JSON") from exc

        return self.with_retries(send, url)

    def with_retries(self, send: Any, url: str) -> Any:
        """Call ``send()`` until it succeeds, retrying what is worth retrying.

        ``send`` raises :class:`HttpFailure` for any failed attempt; this loop
        alone decides what is retried, how long to wait and which error to raise.
        """
        name = type(self).__name__
        for attempt in range(self.max_retries + 1):
            try:
                return send()
            except HttpFailure as failure:
                status, detail = failure.status, self._redact(failure.detail)
                retryable = status is None or status < 300 or status in RETRY_STATUSES
                retryable = retryable or status >= 500
                if retryable and attempt < self.max_retries:
                    wait = _retry_after(failure.headers) if status else None
                    self._sleep(wait if wait is not None else self._backoff(attempt))
                    continue
                where = f"{name}: {url}"
                if status is None:
                    message = f"{where} unreachable after {attempt + 1} tries: {detail}"
                    raise ProviderError(message) from failure
                if retryable:
                    error = RateLimitError if status == 429 else ProviderError
                    message = f"{where} answered {status} after {attempt + 1} tries: {detail}"
                    raise error(message, status=status) from failure
                if status in AUTH_STATUSES:
                    variable = self.api_key_env_var or "the api_key argument"
                    raise AuthenticationError(
                        f"{where} refused the credentials ({status}); check {variable}: {detail}",
                        status=status,
                    ) from failure
                if status in BAD_INPUT_STATUSES:
                    raise BadRequestError(
                        f"{where} refused the input ({status}): {detail}", status=status
                    ) from failure
                raise ProviderError(
                    f"{where} answered {status}: {detail}", status=status
                ) from failure
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int) -> float:
        """Exponential with full jitter: spreads retries of many replicas apart."""
        ceiling = min(MAX_BACKOFF_SECONDS, self.retry_backoff_seconds * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _redact(self, text: str) -> str:
        key = self._api_key
        if key is None and self.api_key_env_var:
            key = os.environ.get(self.api_key_env_var)
        return text.replace(key, "***") if key else text


class HttpFailure(Exception):
    """One failed attempt: ``status`` None for no answer (timeout, connection)."""

    def __init__(self, status: int | None, headers: Any, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.headers = headers
        self.detail = detail


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, then Retry-After."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
