"""Quota benchmark: a fleet of API replicas against a server enforcing requests/min.

Usage: python scripts/bench_quota.py [--rpm 300] [--replicas 4] [--seconds 130]

The server (:class:`embedfleet.testing.RateLimitedServer`) enforces the quota as
a continuously refilled bucket holding one second's worth of requests and
answers 429 with ``retry-after-ms`` when it is empty. The fleet is configured
with the same ``max_requests_per_minute``; its replicas share one budget
through the quota actor. Reported: sustained throughput as a share of the
quota (measured from the first to the last accepted request), the share of
requests answered 429, and whether every document was embedded exactly once.
Targets: throughput >= 0.90 of the quota, 429s < 2%, exactly once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import embedfleet
from embedfleet.embedding_functions import HuggingFaceEmbeddingServer
from embedfleet.testing import HashEmbeddingFunction, RateLimitedServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=300)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=130, help="planned length of the run")
    parser.add_argument("--batch", type=int, default=8, help="documents per request")
    parser.add_argument("--latency", type=float, default=0.05, help="server service time, s")
    arguments = parser.parse_args(argv)

    requests = int(arguments.rpm / 60 * arguments.seconds)
    texts = [f"document {index} about quotas" for index in range(requests * arguments.batch)]
    server = RateLimitedServer(arguments.rpm, latency_seconds=arguments.latency)
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")
    try:
        ef = HuggingFaceEmbeddingServer(
            server.url, max_requests_per_minute=arguments.rpm, batch_size=arguments.batch
        )
        with embedfleet.remote(ef, replicas=arguments.replicas, name="bench-quota") as fleet:
            fleet(["warm up"])  # starts replicas (and the quota actor) before timing
            server.embedded.clear()
            accepted_before, refused_before = server.accepted, server.refused
            start = time.perf_counter()
            vectors = fleet(texts)
            elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
        server.stop()

    accepted = server.accepted - accepted_before
    refused = server.refused - refused_before
    expected = np.stack(HashEmbeddingFunction(dimension=8)(texts))
    exactly_once = (
        len(server.embedded) == len(texts)
        and set(server.embedded.values()) == {1}
        and np.allclose(np.stack(vectors), expected, atol=1e-6)
    )
    # the server's bucket starts full: one second's worth may go before the rate applies
    sustained = (accepted - server.capacity) / elapsed * 60 / arguments.rpm
    result = {
        "rpm": arguments.rpm,
        "replicas": arguments.replicas,
        "requests": accepted,
        "elapsed_s": round(elapsed, 1),
        "throughput_share_of_quota": round(sustained, 3),
        "share_429": round(refused / max(1, accepted + refused), 4),
        "exactly_once": exactly_once,
    }
    print(json.dumps(result, indent=2))
    passed = sustained >= 0.90 and result["share_429"] < 0.02 and exactly_once
    print("targets met" if passed else "targets NOT met")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
