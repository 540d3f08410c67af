"""Quota benchmark: a fleet of API replicas against a server enforcing requests/min.

Usage: python scripts/bench_quota.py [--rpm 300] [--replicas 4] [--seconds 130]
       [--cases configured,headers,learned] [--timeline docs/bench_quota.json]

The server (:class:`embedfleet.testing.RateLimitedServer`) enforces the quota as
a continuously refilled bucket holding one second's worth of requests and
answers 429 with ``retry-after-ms`` when it is empty. Three cases, each against a
fresh server (so a fresh quota actor), with replicas sharing one budget:

* ``configured``: ``max_requests_per_minute`` set to the server's limit;
* ``headers``: no limit set, the server sends OpenAI's ``x-ratelimit-*`` headers;
* ``learned``: no limit set, no headers: the rate is learned from 429s.

Reported per case: sustained throughput as a share of the quota (from the first to
the last accepted request, less the bucket's initial fill), the same once learned
(from ``--learned-after`` seconds after the first 429, or after the first answer
with headers), the share of requests answered 429, and whether every document was
embedded exactly once. Targets: configured >= 0.90 and < 2% 429s; headers >= 0.90
once learned and <= 2%; learned >= 0.70 once learned and <= 20%. ``--timeline``
writes every case's accepted and refused requests per second to a JSON file
(``scripts/plot_quota.py`` draws it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

import embedfleet
from embedfleet.embedding_functions import HuggingFaceEmbeddingServer
from embedfleet.testing import HashEmbeddingFunction, RateLimitedServer

CASES = ("configured", "headers", "learned")
TARGETS = {  # (throughput share, at most this share of 429s)
    "configured": (0.90, 0.02),
    "headers": (0.90, 0.02),
    "learned": (0.70, 0.20),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=300)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=130, help="planned length of a case")
    parser.add_argument("--batch", type=int, default=8, help="documents per request")
    parser.add_argument("--latency", type=float, default=0.05, help="server service time, s")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {CASES}")
    parser.add_argument("--learned-after", type=float, default=5.0, help="seconds to learn")
    parser.add_argument("--timeline", metavar="PATH", help="write rates over time as JSON")
    arguments = parser.parse_args(argv)
    cases = [case.strip() for case in arguments.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {CASES}")

    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")
    try:
        results = {case: run_case(case, arguments) for case in cases}
    finally:
        ray.shutdown()
    summaries = {case: result["summary"] for case, result in results.items()}
    print(json.dumps(summaries, indent=2))
    if arguments.timeline:
        parameters = {key: value for key, value in vars(arguments).items() if key != "timeline"}
        with open(arguments.timeline, "w", encoding="utf-8") as handle:
            json.dump({"parameters": parameters, "cases": results}, handle, indent=1)
    passed = all(summary["targets_met"] for summary in summaries.values())
    print("targets met" if passed else "targets NOT met")
    return 0 if passed else 1


def run_case(case: str, arguments: argparse.Namespace) -> dict[str, Any]:
    """One case on a fresh server: the summary and the rates over time."""
    rpm = arguments.rpm
    requests = int(rpm / 60 * arguments.seconds)
    texts = [f"{case} document {index} about quotas" for index in range(requests * arguments.batch)]
    server = RateLimitedServer(
        rpm, latency_seconds=arguments.latency, rate_limit_headers=case == "headers"
    )
    limit = {"max_requests_per_minute": rpm} if case == "configured" else {}
    try:
        ef = HuggingFaceEmbeddingServer(server.url, batch_size=arguments.batch, **limit)
        name = f"bench-quota-{case}"
        with embedfleet.remote(ef, replicas=arguments.replicas, name=name) as fleet:
            fleet(["warm up"])  # starts replicas (and the quota actor) before timing
            server.embedded.clear()
            accepted_before, refused_before = server.accepted, server.refused
            start = time.monotonic()
            vectors = fleet(texts)
            elapsed = time.monotonic() - start
            quota = ef.quota_stats()  # the driver reads the quota actor
    finally:
        server.stop()

    accepted_at = [moment - start for moment in server.accepted_at if moment >= start]
    refused_at = [moment - start for moment in server.refused_at if moment >= start]
    accepted = server.accepted - accepted_before
    refused = server.refused - refused_before
    expected = np.stack(HashEmbeddingFunction(dimension=8)(texts))
    exactly_once = (
        len(server.embedded) == len(texts)
        and set(server.embedded.values()) == {1}
        and np.allclose(np.stack(vectors), expected, atol=1e-6)
    )
    # the server's bucket starts full: one second's worth may go before the rate applies
    sustained = (accepted - server.capacity) / elapsed * 60 / rpm
    learned_from = (refused_at[0] if refused_at and case == "learned" else 0.0) + (
        arguments.learned_after if case != "configured" else 0.0
    )
    once_learned = rate_between(accepted_at, learned_from) * 60 / rpm
    share_429 = refused / max(1, accepted + refused)
    throughput_target, share_target = TARGETS[case]
    throughput = sustained if case == "configured" else once_learned
    summary = {
        "rpm": rpm,
        "replicas": arguments.replicas,
        "requests": accepted,
        "elapsed_s": round(elapsed, 1),
        "throughput_share_of_quota": round(sustained, 3),
        "throughput_once_learned": round(once_learned, 3),
        "learned_from_s": round(learned_from, 1),
        "share_429": round(share_429, 4),
        "exactly_once": exactly_once,
        "quota": quota,
        "targets_met": throughput >= throughput_target
        and share_429 <= share_target
        and exactly_once,
    }
    seconds = int(elapsed) + 1
    return {
        "summary": summary,
        "accepted_per_second": per_second(accepted_at, seconds),
        "refused_per_second": per_second(refused_at, seconds),
    }


def rate_between(moments: list[float], since: float) -> float:
    """Requests/s from ``since`` to the last of ``moments``."""
    later = [moment for moment in moments if moment >= since]
    if len(later) < 2:
        return 0.0
    return (len(later) - 1) / (later[-1] - since)


def per_second(moments: list[float], seconds: int) -> list[int]:
    counts = [0] * seconds
    for moment in moments:
        counts[min(seconds - 1, int(moment))] += 1
    return counts


if __name__ == "__main__":
    sys.exit(main())
