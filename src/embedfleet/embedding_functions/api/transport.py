"""The one seam between a provider and the network: ``Transport.send(request)``.

Keys, pacing, retries, splitting and error mapping are the same for every API
provider; only how one request reaches the server differs (raw JSON over httpx,
or an official SDK). Putting that difference behind a single method keeps every
shared rule in one place, and lets a test (or a user with an unusual gateway)
swap the network for anything that answers ``send``, the way httpx separates its
client from its transports.

A transport makes exactly one attempt. Whatever goes wrong (no answer, an error
status, an answer it cannot read) it reports as :class:`HttpFailure`, and the
retry policy (:mod:`.retry`) alone decides what happens next. A transport that
can see the answer's headers returns :class:`Answered` (payload + headers), so that
the provider's rate-limit headers reach the quota; a bare payload works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ApiRequest:
    """One request as a provider describes it: ``path`` relative to ``api_base`` (empty
    for ``api_base`` itself), the JSON ``body``, and the request's ``headers`` (the
    shared layer adds the provider's :meth:`headers`, which carry the key)."""

    path: str
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answered:
    """A successful answer with its headers (names case-insensitive where the transport's
    own mapping is, as httpx's and the OpenAI SDK's are)."""

    payload: Any
    headers: Mapping[str, str]


#: How much of a failed answer's body a failure keeps (a Gemini 429 puts its retry
#: delay at the end of a long body); messages show the first MESSAGE_DETAIL characters.
DETAIL_CHARACTERS = 4000


class HttpFailure(Exception):
    """One failed attempt: ``status`` None for no answer (timeout, connection)."""

    def __init__(self, status: int | None, headers: Any, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.headers = headers
        self.detail = detail


class Transport(Protocol):
    """Sends one request, once: returns the answer (or :class:`Answered`), or raises
    :class:`HttpFailure`."""

    def send(self, request: ApiRequest) -> Any: ...


def request_url(api_base: str, path: str) -> str:
    """Where a request goes (and what error messages name)."""
    return f"{api_base}/{path}" if path else api_base


class HttpxTransport:
    """POSTs the body as JSON with httpx and returns the decoded JSON answer, with its
    headers."""

    def __init__(self, api_base: str, *, timeout: float) -> None:
        import httpx  # an ImportError here names the provider where it is caught

        self.api_base = api_base
        self._client = httpx.Client(timeout=timeout)

    def send(self, request: ApiRequest) -> Any:
        import httpx

        url = request_url(self.api_base, request.path)
        try:
            response = self._client.post(url, json=request.body, headers=dict(request.headers))
        except httpx.TransportError as exc:  # timeouts and connection errors
            raise HttpFailure(None, {}, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            detail = response.text[:DETAIL_CHARACTERS]
            raise HttpFailure(response.status_code, response.headers, detail)
        try:
            return Answered(response.json(), response.headers)
        except ValueError as exc:
            raise HttpFailure(response.status_code, {}, "unreadable JSON") from exc
