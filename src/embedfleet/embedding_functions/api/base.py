"""What every API provider shares, written once: keys, options, and the embed flow.

A provider differs from the next only in its wire format, so that is all it
writes: :meth:`HttpEmbeddingFunction.build_request` turns texts into one
:class:`~.transport.ApiRequest`, :meth:`HttpEmbeddingFunction.parse_vectors` reads
the vectors out of the answer, and :meth:`HttpEmbeddingFunction.make_transport`
picks how requests travel (raw JSON over httpx unless it says otherwise).
Everything a user relies on behaving the same across providers lives here or in
the modules this one calls:

* keys come from the environment variable named by ``api_key_env_var``, read in
  the process that sends (a fleet replica reads its own environment), or from an
  explicit ``api_key`` that never enters ``get_config()``, reprs or messages;
* batches are cut to the provider's documented limits (:mod:`.splitting`);
* requests are paced through :mod:`embedfleet.quota`, shared by every replica
  using the same key (at the configured rate, or at the rate the quota learns from
  the provider's headers and 429s), and kept ``max_concurrency`` in flight per process;
* every attempt goes through one retry policy and one error mapping (:mod:`.retry`),
  and retryable failures are retried for as long as ``max_retry_seconds`` allows.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypedDict, TypeVar

from embedfleet.embedding_functions.api import attempts
from embedfleet.embedding_functions.api.ratelimits import advertised_limits
from embedfleet.embedding_functions.api.retry import redact, retry_after
from embedfleet.embedding_functions.api.splitting import cut_to_limit, split_requests
from embedfleet.embedding_functions.api.transport import (
    Answered,
    ApiRequest,
    HttpFailure,
    HttpxTransport,
    Transport,
    request_url,
)
from embedfleet.embedding_functions.base import (
    DEFAULT_BATCH_SIZE,
    Documents,
    EmbeddingFunction,
    Requirement,
)
from embedfleet.embedding_functions.batching import CallPlan
from embedfleet.errors import ConfigError, MissingDependencyError, ProviderError
from embedfleet.quota import (
    AdaptiveConcurrency,
    AdvertisedLimits,
    Pacer,
    RateLimits,
    ledger_stats,
    pacer_for,
    quota_key,
    quota_summary,
)
from embedfleet.tokens import count_tokens

API_INSTALL_HINT = 'pip install "embedfleet[api]"'
DEFAULT_MAX_CONCURRENCY = 8
#: How long retryable failures are retried without a single success on the budget.
DEFAULT_MAX_RETRY_SECONDS = 600.0

T = TypeVar("T")


class HttpOptions(TypedDict, total=False):
    """Keyword arguments every HTTP provider takes (see :class:`HttpEmbeddingFunction`)."""

    api_base: str | None
    api_key: str | None
    timeout: float
    max_retries: int | None
    max_retry_seconds: float
    retry_backoff_seconds: float
    max_requests_per_minute: float | None
    max_tokens_per_minute: float | None
    max_concurrency: int
    batch_size: int
    on_long: str


class HttpEmbeddingFunction(EmbeddingFunction):
    """Base of API providers: subclasses implement ``build_request`` and ``parse_vectors``.

    Shared keywords (every provider takes them, as :class:`HttpOptions`):
    ``api_base``, ``api_key_env_var`` / ``api_key``, ``timeout`` (seconds per
    request), ``max_retry_seconds`` (how long retryable failures are retried
    without a single success on the budget; 0: never retried), ``max_retries``
    (None, or at most this many retries of one request for failures other than
    429), ``retry_backoff_seconds`` (first backoff; doubles),
    ``max_requests_per_minute`` / ``max_tokens_per_minute`` (paced, shared by
    a fleet; with neither, the rate is learned), ``max_concurrency`` (requests in
    flight per process), ``batch_size``, ``on_long``.
    """

    requirements = (Requirement("httpx", API_INSTALL_HINT),)
    #: a provider's ``**options`` are the shared keywords, and only those
    passthrough_config_keys = frozenset(HttpOptions.__annotations__)
    workload = "io"  # waits on the provider: replicas reserve no CPU
    bills_per_token = True
    operational_keys = frozenset(
        {
            "api_key_env_var",
            "timeout",
            "max_retries",
            "max_retry_seconds",
            "retry_backoff_seconds",
            "max_requests_per_minute",
            "max_tokens_per_minute",
            "max_concurrency",
            "batch_size",
        }
    )
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
        max_retries: int | None = None,
        max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS,
        retry_backoff_seconds: float = 0.5,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_long: str = "truncate",
    ) -> None:
        super().__init__(batch_size=batch_size, on_long=on_long)
        if max_retries is not None and (
            not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0
        ):
            raise ConfigError(
                f"max_retries must be None or a non-negative integer, got {max_retries!r}"
            )
        number = isinstance(max_retry_seconds, (int, float)) and not isinstance(
            max_retry_seconds, bool
        )
        if not number or not max_retry_seconds >= 0:
            raise ConfigError(
                f"max_retry_seconds must be a non-negative number, got {max_retry_seconds!r}"
            )
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout!r}")
        self.api_base = (api_base or self.default_api_base).rstrip("/")
        if not self.api_base:
            raise ConfigError(f"{type(self).__name__} needs api_base (the server's URL)")
        self.api_key_env_var = api_key_env_var
        self._api_key = api_key  # never in get_config(), repr or messages
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_seconds = float(max_retry_seconds)
        self.retry_backoff_seconds = retry_backoff_seconds
        self.limits = RateLimits(max_requests_per_minute, max_tokens_per_minute)
        self.max_concurrency = max_concurrency
        self._concurrency = AdaptiveConcurrency(max_concurrency, adaptive=not self.limits.limited)
        self._pacer: Pacer | None = None
        self._transport: Transport | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the provider's part
    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        """The one request that embeds ``texts`` (documents, or queries when ``query``)."""
        raise NotImplementedError

    def parse_vectors(self, payload: Any) -> list[Any]:
        """The vectors in a successful answer, one per input, in order.

        ``payload`` is what the transport returned (decoded JSON for the default
        one). Raise :class:`~embedfleet.errors.ProviderError` for an answer without
        vectors, or :class:`~.transport.HttpFailure` for one too damaged to read,
        which is then retried like truncated JSON.
        """
        raise NotImplementedError

    @classmethod
    def missing_setup(cls) -> list[str]:
        """The key's variable when it is unset here (the default ``api_key_env_var``; a
        config may name another, or pass ``api_key``): "set OPENAI_API_KEY"."""
        default = inspect.signature(cls.__init__).parameters.get("api_key_env_var")
        variable = default.default if default is not None else None
        if isinstance(variable, str) and variable and not os.environ.get(variable):
            return [f"set {variable}"]
        return []

    def make_transport(self) -> Transport:
        """How requests travel; called once per process, on the first request."""
        try:
            return HttpxTransport(self.api_base, timeout=self.timeout)
        except ImportError as exc:
            raise MissingDependencyError(
                f"{type(self).__name__} needs httpx: {API_INSTALL_HINT}"
            ) from exc

    def headers(self) -> dict[str, str]:
        """Request headers; the default sends the key as a bearer token."""
        key = self.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def billed_tokens(self, texts: Documents) -> list[int]:
        """Tokens each text costs this provider, as it counts them against its limits
        and bills them; a count that never undercounts by default."""
        return count_tokens(texts, encoding=None)

    def refused_credentials(self, status: int, detail: str) -> bool:
        """Whether a non-401/403 answer means a bad key (providers that say so with 400)."""
        return False

    def quota_model(self) -> str | None:
        """The model part of the quota key (providers budget per model)."""
        return getattr(self, "model_name", None)

    def advertised_limits(
        self, headers: Any, failure: HttpFailure | None = None
    ) -> AdvertisedLimits | None:
        """The rate limits the provider states in an answer (its headers, or for
        ``failure`` also its body): the quota paces to them when none is configured.
        The default reads OpenAI's ``x-ratelimit-limit-*`` and the IETF draft's
        ``RateLimit-Policy`` (see :mod:`.ratelimits`)."""
        return advertised_limits(headers)

    def server_wait(self, failure: HttpFailure) -> float | None:
        """Seconds the provider asked to wait before trying ``failure`` again, if it said
        (``retry-after-ms``, ``Retry-After``, an exhausted limit's reset)."""
        return retry_after(failure.headers) if failure.status else None

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        return {
            "api_base": self.api_base,
            "api_key_env_var": self.api_key_env_var,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "max_retry_seconds": self.max_retry_seconds,
            "retry_backoff_seconds": self.retry_backoff_seconds,
            "max_requests_per_minute": self.limits.requests_per_minute,
            "max_tokens_per_minute": self.limits.tokens_per_minute,
            "max_concurrency": self.max_concurrency,
            **super().get_config(),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_lock", None)
        state["_transport"] = None
        state["_pacer"] = None
        state["_concurrency"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()
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
        return self.billed_tokens(texts) if self.max_tokens_per_input else None

    def embed_batch(self, texts: Documents, *, query: bool = False) -> list[Any]:
        counts = self.billed_tokens(texts)  # once per batch: truncation and splitting
        limit = self.max_tokens_per_input
        if limit is not None:
            texts, counts = cut_to_limit(texts, counts, limit, self.billed_tokens)
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
        (``counts``: each text's tokens, from :meth:`billed_tokens`)."""
        return split_requests(
            texts,
            counts,
            max_inputs=self.max_inputs_per_request,
            max_tokens=self.max_tokens_per_request,
            owner=type(self).__name__,
        )

    def embed_request(self, texts: Documents, *, query: bool, tokens: int = 0) -> list[Any]:
        """One request's vectors: ``build_request``, sent by the transport under the
        retry policy, read by ``parse_vectors``."""
        request = self.build_request(texts, query=query)
        request = dataclasses.replace(request, headers={**self.headers(), **request.headers})
        transport = self.transport()

        def attempt() -> Any:
            answer = transport.send(request)
            if isinstance(answer, Answered):  # keep its headers for the quota
                return Answered(self.parse_vectors(answer.payload), answer.headers)
            return self.parse_vectors(answer)

        return self.with_retries(attempt, request_url(self.api_base, request.path), tokens=tokens)

    def transport(self) -> Transport:
        """This process's transport, made by :meth:`make_transport` on first use."""
        with self._lock:
            if self._transport is None:
                self._transport = self.make_transport()
            return self._transport

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

    def with_retries(self, send: Callable[[], T], url: str, *, tokens: int = 0) -> T:
        """Call ``send()`` until it succeeds, retrying what is worth retrying, for as long
        as ``max_retry_seconds`` (and ``max_retries``) allow: see :mod:`.attempts`."""
        return attempts.with_retries(self, send, url, tokens=tokens)

    def quota_stats(self, since: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """What the provider allowed on this function's budget, as far as this process
        can see it (the quota actor when Ray is up), counted after ``since`` (an earlier
        answer): see :func:`embedfleet.quota.quota_summary`."""
        stats = ledger_stats(self._quota_key())
        return None if stats is None else quota_summary(stats, since)

    def pacer(self) -> Pacer:
        """This process's view of the quota shared by everything using the same key."""
        with self._lock:
            if self._pacer is None:
                self._pacer = pacer_for(self._quota_key(), self.limits)
            return self._pacer

    def _quota_key(self) -> str:
        return quota_key(self.provider_name, self.api_base, self.quota_model(), self._key())

    def _key(self) -> str | None:
        try:
            return self.api_key()
        except ConfigError:
            return None

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _redact(self, text: str) -> str:
        key = self._api_key
        if key is None and self.api_key_env_var:
            key = os.environ.get(self.api_key_env_var)
        return redact(text, key)
