"""The shared HTTP layer of API providers: keys, retries, error mapping, splitting.

An HTTP provider describes its wire format with two small hooks: ``request(texts,
query)`` returns the path and JSON body of one request, and ``vectors(payload)``
reads the vectors out of the JSON answer (an SDK provider overrides
``embed_request`` instead). Everything else is written once here:

* keys come from the environment variable named by ``api_key_env_var`` (read
  where the request is made: a fleet replica's own environment), or from an
  explicit ``api_key`` that is kept out of ``get_config()``, reprs and error
  messages;
* batches are split to the provider's documented ``max_inputs_per_request``
  (and ``max_tokens_per_request`` where it has one, counted by
  :mod:`embedfleet.tokens`);
* batches run ``max_concurrency`` at a time, adapted by AIMD when no rate
  limit is configured; ``max_requests_per_minute`` / ``max_tokens_per_minute``
  pace every request through :mod:`embedfleet.quota` (shared by every replica
  of a fleet); a 429 pauses them all until its Retry-After;
* retries with exponential backoff and jitter on 408, 429, 5xx, timeouts,
  connection errors and unreadable JSON, honouring ``retry-after-ms`` and
  ``Retry-After`` (or the ``x-ratelimit-reset-*`` headers); never on
  400/401/403/404/413/422;
* errors are mapped to the typed tree (``AuthenticationError``,
  ``BadRequestError``, ``RateLimitError``, ``ProviderError``) with ``raise ... from``.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypedDict

from embedfleet.embedding_functions.base import (
    DEFAULT_BATCH_SIZE,
    Documents,
    EmbeddingFunction,
    Requirement,
)
from embedfleet.embedding_functions.batching import CallPlan
from embedfleet.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ProviderError,
    RateLimitError,
)
from embedfleet.quota import AdaptiveConcurrency, Pacer, RateLimits, pacer_for, quota_key
from embedfleet.tokens import count_tokens

API_INSTALL_HINT = 'pip install "embedfleet[api]"'
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BAD_INPUT_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})
MAX_BACKOFF_SECONDS = 30.0
DEFAULT_MAX_CONCURRENCY = 8


class HttpOptions(TypedDict, total=False):
    """Keyword arguments every HTTP provider takes (see :class:`HttpEmbeddingFunction`)."""

    api_base: str | None
    api_key: str | None
    timeout: float
    max_retries: int
    retry_backoff_seconds: float
    max_requests_per_minute: float | None
    max_tokens_per_minute: float | None
    max_concurrency: int
    batch_size: int
    on_long: str


class HttpEmbeddingFunction(EmbeddingFunction):
    """Base of API providers: subclasses implement ``request`` and ``vectors``.

    Shared keywords (every provider takes them, as :class:`HttpOptions`):
    ``api_base``, ``api_key_env_var`` / ``api_key``, ``timeout`` (seconds per
    request), ``max_retries``, ``retry_backoff_seconds`` (first backoff; doubles),
    ``max_requests_per_minute`` / ``max_tokens_per_minute`` (paced, shared by
    a fleet), ``max_concurrency`` (requests in flight per process), ``batch_size``,
    ``on_long``.
    """

    requirements = (Requirement("httpx", API_INSTALL_HINT),)
    workload = "io"  # waits on the provider: replicas reserve no CPU
    #: The provider's documented limit of inputs in one request.
    max_inputs_per_request: ClassVar[int] = 96
    #: The provider's documented limit of tokens summed over one request, if any.
    max_tokens_per_request: ClassVar[int | None] = None
    #: The provider's limit of tokens in one input, if it refuses (not cuts) longer ones:
    #: such texts are cut here (``on_long="truncate"``) or refused by name (``"error"``).
    max_tokens_per_input: ClassVar[int | None] = None
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
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
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
        self.limits = RateLimits(max_requests_per_minute, max_tokens_per_minute)
        self.max_concurrency = max_concurrency
        self._concurrency = AdaptiveConcurrency(max_concurrency, adaptive=not self.limits.limited)
        self._pacer: Pacer | None = None
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
            "max_requests_per_minute": self.limits.requests_per_minute,
            "max_tokens_per_minute": self.limits.tokens_per_minute,
            "max_concurrency": self.max_concurrency,
            **super().get_config(),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_client_lock", None)
        state["_client"] = None
        state["_pacer"] = None
        state["_concurrency"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._client_lock = threading.Lock()
        self._concurrency = AdaptiveConcurrency(
            self.max_concurrency, adaptive=not self.limits.limited
        )

    # ------------------------------------------------------------------ embedding
    def concurrent_batches(self) -> int:
        """A fleet replica serves as many batches at once as requests are kept in flight."""
        return self.max_concurrency

    def _embed_batches(self, batches: list[Documents], plan: CallPlan) -> Iterator[Any]:
        """Batches of one call go out ``max_concurrency`` at a time, results in order."""
        query = plan.query
        if len(batches) == 1 or self.max_concurrency == 1:
            yield from super()._embed_batches(batches, plan)
            return
        workers = min(self.max_concurrency, len(batches))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="embedfleet-http")
        try:
            futures = [pool.submit(self.embed_batch, batch, query=query) for batch in batches]
            for future in futures:
                yield future.result()
        finally:  # on an error, do not sit out the other batches' retries
            pool.shutdown(wait=False, cancel_futures=True)

    def max_tokens(self) -> int | None:
        return self.max_tokens_per_input

    def token_lengths(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        return self.request_tokens(texts) if self.max_tokens_per_input else None

    def embed_batch(self, texts: Documents, *, query: bool = False) -> list[Any]:
        counts = self.request_tokens(texts)  # once per batch: truncation and splitting
        limit = self.max_tokens_per_input
        if limit is not None and any(count > limit for count in counts):
            texts = [
                self._truncate(text, limit) if count > limit else text
                for text, count in zip(texts, counts, strict=True)
            ]
            counts = [min(count, limit) for count in counts]
        vectors: list[Any] = []
        for chunk, tokens in self.split_requests(texts, counts):
            got = self.embed_request(chunk, query=query, tokens=tokens)
            if len(got) != len(chunk):
                raise ProviderError(
                    f"{type(self).__name__} got {len(got)} vectors for {len(chunk)} texts "
                    f"from {self.api_base}"
                )
            vectors.extend(got)
        return vectors

    def split_requests(self, texts: Documents, counts: list[int]) -> list[tuple[Documents, int]]:
        """Consecutive requests within the documented limits, each with its token count
        (``counts``: each text's tokens, from :meth:`request_tokens`)."""
        token_limit = self.max_tokens_per_request
        requests: list[tuple[Documents, int]] = []
        chunk: Documents = []
        chunk_tokens = 0
        for index, (text, count) in enumerate(zip(texts, counts, strict=True)):
            if token_limit is not None and count > token_limit:
                raise BadRequestError(
                    f"text at index {index} of the batch is about {count} tokens, over "
                    f"{type(self).__name__}'s {token_limit} tokens per request"
                )
            full = len(chunk) >= self.max_inputs_per_request
            if full or (token_limit is not None and chunk_tokens + count > token_limit):
                requests.append((chunk, chunk_tokens))
                chunk, chunk_tokens = [], 0
            chunk.append(text)
            chunk_tokens += count
        if chunk:
            requests.append((chunk, chunk_tokens))
        return requests

    def _truncate(self, text: str, limit: int) -> str:
        """The longest prefix of ``text`` that counts at most ``limit`` tokens here."""
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if self.request_tokens([text[:middle]])[0] <= limit:
                low = middle
            else:
                high = middle - 1
        return text[:low]

    def request_tokens(self, texts: Documents) -> list[int]:
        """Tokens each text costs this provider; a conservative estimate by default."""
        return count_tokens(texts, encoding=None)

    def embed_request(self, texts: Documents, *, query: bool, tokens: int = 0) -> list[Any]:
        """One request's vectors: ``request`` -> POST with retries -> ``vectors``.

        SDK providers override this alone; splitting and count checks stay here."""
        path, body = self.request(texts, query=query)
        return self.vectors(self._post(path, body, tokens=tokens))

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

    def _post(self, path: str, body: dict[str, Any], *, tokens: int = 0) -> Any:
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

        return self.with_retries(send, url, tokens=tokens)

    def with_retries(self, send: Any, url: str, *, tokens: int = 0) -> Any:
        """Call ``send()`` until it succeeds, retrying what is worth retrying.

        Every attempt waits for its quota slot and holds a concurrency slot.
        ``send`` raises :class:`HttpFailure` for any failed attempt; this loop
        alone decides what is retried, how long to wait and which error to raise.
        """
        name = type(self).__name__
        for attempt in range(self.max_retries + 1):
            self.pacer().acquire(tokens)
            try:
                with self._concurrency.slot():
                    result = send()
                self._concurrency.succeeded()
                return result
            except HttpFailure as raw:
                status, detail = raw.status, self._redact(raw.detail)
                # what gets chained to the typed error: redacted, and nothing under it
                failure = HttpFailure(status, raw.headers, detail)
                retryable = status is None or status < 300 or status in RETRY_STATUSES
                retryable = retryable or status >= 500
                if retryable and attempt < self.max_retries:
                    wait = _retry_after(failure.headers) if status else None
                    wait = wait if wait is not None else self._backoff(attempt)
                    if status == 429:  # every thread and replica on this budget waits
                        self._concurrency.throttled()
                        self.pacer().pause(wait)
                    self._sleep(wait)
                    continue
                where = f"{name}: {url}"
                if status is None:
                    message = f"{where} unreachable after {attempt + 1} tries: {detail}"
                    raise ProviderError(message) from failure
                if retryable:
                    error = RateLimitError if status == 429 else ProviderError
                    message = f"{where} answered {status} after {attempt + 1} tries: {detail}"
                    raise error(message, status=status) from failure
                if status in AUTH_STATUSES or self.refused_credentials(status, detail):
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

    def refused_credentials(self, status: int, detail: str) -> bool:
        """Whether a non-401/403 answer means a bad key (providers that say so with 400)."""
        return False

    def pacer(self) -> Pacer:
        """This process's view of the quota shared by everything using the same key."""
        with self._client_lock:
            if self._pacer is None:
                key = quota_key(self.provider_name, self.api_base, self.quota_model(), self._key())
                self._pacer = pacer_for(key, self.limits)
            return self._pacer

    def quota_model(self) -> str | None:
        """The model part of the quota key (providers budget per model)."""
        return getattr(self, "model_name", None)

    def _key(self) -> str | None:
        try:
            return self.api_key()
        except ConfigError:
            return None

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
    """Seconds the server asked us to wait: retry-after-ms, Retry-After, then the
    ``x-ratelimit-reset-*`` header of an exhausted limit ("1s", "6m0s", "20ms")."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return _reset_after(headers)
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _reset_after(headers: Any) -> float | None:
    """The reset time of whichever rate limit is exhausted (remaining 0), if given."""
    waits = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if reset and remaining in (None, "0"):
            seconds = _duration(reset)
            if seconds is not None:
                waits.append(seconds)
    return max(waits) if waits else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(text: str) -> float | None:
    """A Go-style duration ("1s", "6m0s", "1h2m3.5s", "20ms") in seconds."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        try:
            return max(0.0, float(text))
        except ValueError:
            return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
