"""Draw the rates over time that ``scripts/bench_quota.py --timeline`` recorded.

Usage: python scripts/plot_quota.py docs/bench_quota.json docs/bench_quota.png

One line per case (configured, learned from headers, learned from 429s): requests
accepted per second, the 429s as markers, and the server's limit dashed.
Needs matplotlib (``pip install "embedfleet[notebooks]"``).
"""

from __future__ import annotations

import json
import sys

LABELS = {
    "configured": "limit configured",
    "headers": "learned from x-ratelimit-* headers",
    "learned": "learned from 429s (no headers)",
}


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    source, target = arguments
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(source, encoding="utf-8") as handle:
        recorded = json.load(handle)
    limit = recorded["parameters"]["rpm"] / 60
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for case, result in recorded["cases"].items():
        accepted = result["accepted_per_second"]
        line = axes.plot(range(len(accepted)), accepted, label=LABELS.get(case, case))[0]
        refused = result["refused_per_second"]
        seconds = [second for second, count in enumerate(refused) if count]
        axes.scatter(
            seconds, [refused[second] for second in seconds], marker="x", color=line.get_color()
        )
    axes.axhline(limit, linestyle="--", color="grey", label="server limit")
    axes.set_xlabel("seconds since the call started")
    axes.set_ylabel("requests per second (x: answered 429)")
    parameters = recorded["parameters"]
    axes.set_title(
        f"{parameters['replicas']} replicas sharing one quota of {parameters['rpm']:g} requests/min"
    )
    axes.set_ylim(bottom=0)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
