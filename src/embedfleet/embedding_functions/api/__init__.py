"""API providers: embedding functions that call a remote service over HTTP.

A provider here writes its wire format and nothing else (``build_request``,
``parse_vectors``, and ``make_transport`` when it does not speak raw JSON over
httpx); keys, limits, pacing, retries and error mapping live once in
:mod:`.base` and the modules it calls, so every provider fails, waits and
redacts the same way. The provider classes are exported from
:mod:`embedfleet.embedding_functions`; this package exports the pieces a new
provider is built from.
"""

from embedfleet.embedding_functions.api.base import (
    API_INSTALL_HINT,
    HttpEmbeddingFunction,
    HttpOptions,
)
from embedfleet.embedding_functions.api.transport import (
    ApiRequest,
    HttpFailure,
    HttpxTransport,
    Transport,
)

__all__ = [
    "API_INSTALL_HINT",
    "ApiRequest",
    "HttpEmbeddingFunction",
    "HttpFailure",
    "HttpOptions",
    "HttpxTransport",
    "Transport",
]
