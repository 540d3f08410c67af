"""The ``embedfleet`` command's arguments and the help a user reads.

``build_parser()`` describes every subcommand; each sets ``command`` to its name,
which :mod:`embedfleet.cli` maps to the function that runs it. The texts are
written for users: what embedfleet does, each subcommand, examples, exit codes.
"""

from __future__ import annotations

import argparse

from embedfleet import cli_sync
from embedfleet._version import __version__
from embedfleet.job.spec import MODE_ALIASES, MODES

DESCRIPTION = """\
Embed text with local models or API providers, in this process or on a fleet of
Ray workers, and turn whole datasets into Parquet snapshots that resume after a
crash and re-embed only what changed."""
EPILOG = """\
examples:
  embedfleet run jobs/quickstart.toml          embed a dataset described by a job spec
  embedfleet plan jobs/quickstart.toml         what a run would do, and what it would cost
  embedfleet embed "some text" "more text"     vectors as JSON lines
  embedfleet providers                         which providers can run here

exit codes:
  0    done (a job: every shard written)
  1    the work failed: the model, the provider, the output, a destination's
       sync, or some shards (the advice printed says what to fix; a re-run
       retries only those)
  2    bad usage, job spec, provider config or input (nothing was embedded)
  3    the output is locked by another run
  4    a job stopped at its budget (written shards stay; re-run to resume)
  130  interrupted (written shards stay; re-run to resume)
"""
RUN_DESCRIPTION = (
    "Embed the dataset a job spec describes (TOML: source, embedding, fleet, output, "
    "budget) and write a Parquet snapshot. Shows a progress bar and a summary; a run that "
    "stops part-way is resumed by running it again. Flags override the spec."
)
PLAN_DESCRIPTION = (
    "Show what a run of a job spec would do, embedding nothing: the shards, the rows, the "
    "estimated tokens and cost, and which snapshot it would write or resume."
)
EMBED_DESCRIPTION = (
    "Embed a few texts, or a JSON Lines / text file, with one provider. Prints one JSON "
    "line per text, or writes Parquet."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"embedfleet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser(
        "embed", help="embed texts or a file with one provider", description=EMBED_DESCRIPTION
    )
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="documents to embed")
    embed.add_argument(
        "--input",
        metavar="FILE",
        help="read documents from a .jsonl file (one object per line) or a text file "
        "(one document per line); any fsspec URL",
    )
    embed.add_argument("--text-field", default="text", help="JSON Lines field holding the text")
    embed.add_argument("--id-field", default="id", help="JSON Lines field holding the id")
    embed.add_argument(
        "--provider",
        default="default",
        help="provider name, as `embedfleet providers` lists them (default: all-MiniLM-L6-v2)",
    )
    embed.add_argument(
        "--config",
        default="{}",
        help='provider settings as a JSON object, e.g. \'{"precision": "fp32"}\'',
    )
    embed.add_argument("--query", action="store_true", help="embed as search queries")
    embed.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    embed.add_argument("--output", metavar="PATH", help="output file (required for parquet)")
    embed.set_defaults(command="embed")

    providers = commands.add_parser(
        "providers",
        help="list providers and whether they can run here",
        description="List every embedding provider, whether it can run on this machine, "
        "and what it needs if not: a Python package to install, or an environment "
        "variable holding the API key to set.",
    )
    providers.set_defaults(command="providers")

    run = commands.add_parser(
        "run",
        help="embed a dataset described by a job spec into Parquet",
        description=RUN_DESCRIPTION,
        epilog="exit codes: 0 done (or up to date); 1 shards failed (the advice printed says "
        "what to fix; a re-run retries only them); 2 bad spec; "
        "3 locked; 4 stopped at the budget (re-run to resume, with a fresh per-run budget); "
        "130 interrupted",
    )
    _job_arguments(run)
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar or summary (for cron); errors still print",
    )
    run.add_argument(
        "--report",
        metavar="PATH",
        help="write the run's summary as JSON (start-up phases included)",
    )
    run.set_defaults(command="run")

    plan = commands.add_parser(
        "plan", help="what a run would do and cost, embedding nothing", description=PLAN_DESCRIPTION
    )
    _job_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--exact",
        action="store_true",
        help="read every record of the source (and the latest snapshot's ids and hashes) and "
        "count new, changed, unchanged and deleted rows and the tokens to embed exactly "
        "(without it: a bounded estimate)",
    )
    plan.set_defaults(command="plan")

    status = commands.add_parser(
        "status",
        help="a job output's snapshots and lock",
        description="Summarise a job's output: each snapshot, whether it is complete, its "
        "shards, vectors and rejected rows, and which run holds the lock.",
    )
    status.add_argument("output", metavar="OUTPUT", help="the job's output URI")
    status.set_defaults(command="status")
    cli_sync.add_parser(commands)  # embedfleet sync OUTPUT --to URI

    bench = commands.add_parser(
        "bench",
        help="compare throughput and start-up of every path on one corpus",
        description="Embed one generated corpus with plain sentence-transformers, the "
        "in-process default model (and ONNX Runtime and Chroma's own function where "
        "installed) and a full job; print documents per second, quality against fp32, "
        "padding, memory and where the job's start-up went.",
    )
    bench.add_argument("--docs", type=int, default=10_000, help="documents in the corpus")
    bench.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where every path runs (auto: the GPU where one is visible)",
    )
    bench.add_argument(
        "--replicas", type=int, help="the job's replicas (default: 2 on CPU, one per GPU)"
    )
    bench.add_argument("--num-cpus", type=float, default=1, help="CPUs per job replica")
    bench.add_argument(
        "--num-gpus", type=float, help="GPUs per job replica (default: 1 on a GPU, else 0)"
    )
    bench.add_argument("--report", metavar="PATH", help="write the results as JSON")
    bench.set_defaults(command="bench")
    return parser


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="job spec (TOML)")
    parser.add_argument("--output", help="override output.uri")
    parser.add_argument(
        "--mode",
        choices=[*MODES, *MODE_ALIASES],
        help="override output.mode: update (the default: resume, else embed only new and "
        "changed rows) or overwrite (embed everything again); incremental and resume are "
        "older names of update",
    )
    parser.add_argument(
        "--incremental",
        action="store_const",
        const="update",
        dest="mode",
        help="same as --mode update (the default): embed only new and changed rows",
    )
    parser.add_argument("--rows-per-shard", type=int, help="override output.rows_per_shard")
    parser.add_argument(
        "--fleet-mode",
        choices=("auto", "ray", "in_process"),
        help="override fleet.mode: ray (a fleet of replicas), in_process (this process), auto "
        "(the default: jobs of up to 5,000 rows to embed with a local model run in this process)",
    )
    parser.add_argument("--replicas", type=int, help="override fleet.replicas")
    parser.add_argument("--num-cpus", type=float, help="override fleet.num_cpus")
    parser.add_argument("--num-gpus", type=float, help="override fleet.num_gpus")
    parser.add_argument("--address", help="override fleet.address (or set RAY_ADDRESS)")
    parser.add_argument(
        "--max-tokens", type=int, help="override budget.max_tokens (input tokens, this run)"
    )
    parser.add_argument("--max-cost", type=float, help="override budget.max_cost (USD, this run)")
