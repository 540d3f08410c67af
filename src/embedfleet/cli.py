"""The ``embedfleet`` command: parse, call the library, print.

Exit codes: 0 success (a job: every shard committed); 1 the work failed (model,
provider, output, a destination's sync, or some shards failed: the advice printed says
what to fix, and a re-run retries only those); 2 bad usage, config or input (nothing was
embedded); 3 the output is locked by
another run; 4 a job stopped at its budget (budget.max_tokens / max_cost;
committed shards stay, re-run to resume, with a fresh per-run budget); 130 interrupted
(committed shards stay, the run is resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import fsspec

from embedfleet import cli_sync, embedding_functions
from embedfleet._version import __version__
from embedfleet.errors import ConfigError, EmbedfleetError, InvalidInputError, LockedError
from embedfleet.job import Job, JobSpec
from embedfleet.job.result import describe_quota
from embedfleet.job.spec import MODE_ALIASES, MODES
from embedfleet.job.store import OutputStore
from embedfleet.output_format import embedding_metadata, embeddings_table, write_parquet
from embedfleet.pricing import format_cost

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_BUDGET = 4
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments))
    except (ConfigError, InvalidInputError) as exc:
        print(f"embedfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LockedError as exc:
        print(f"embedfleet: locked: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except KeyboardInterrupt:
        print("embedfleet: interrupted; committed shards stay, re-run to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except EmbedfleetError as exc:
        print(f"embedfleet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedfleet",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("--version", action="version", version=f"embedfleet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed texts with one provider")
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="documents to embed")
    embed.add_argument(
        "--input",
        metavar="FILE",
        help="read documents from a .jsonl file (one object per line) or a text file "
        "(one document per line); any fsspec URL",
    )
    embed.add_argument("--text-field", default="text", help="JSON Lines field holding the text")
    embed.add_argument("--id-field", default="id", help="JSON Lines field holding the id")
    embed.add_argument("--provider", default="default", help="registry name (see `providers`)")
    embed.add_argument("--config", default="{}", help="provider config as a JSON object")
    embed.add_argument("--query", action="store_true", help="embed as search queries")
    embed.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    embed.add_argument("--output", metavar="PATH", help="output file (required for parquet)")
    embed.set_defaults(handler=_embed)

    providers = commands.add_parser("providers", help="list providers and whether they can run")
    providers.set_defaults(handler=_providers)

    run = commands.add_parser(
        "run",
        help="run a job spec: embed a dataset into Parquet",
        epilog="exit codes: 0 done (or up to date); 1 shards failed (the advice printed says "
        "what to fix; a re-run retries only them); 2 bad spec; "
        "3 locked; 4 stopped at the budget (re-run to resume, with a fresh per-run budget); "
        "130 interrupted",
    )
    _job_arguments(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary (cron)")
    run.add_argument("--report", metavar="PATH", help="write the run's summary as JSON")
    run.set_defaults(handler=_run)

    plan = commands.add_parser("plan", help="shards, rows and tokens of a job, embedding nothing")
    _job_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--exact",
        action="store_true",
        help="read every record of the source (and the latest snapshot's ids and hashes) and "
        "count new, changed, unchanged and deleted rows and the tokens to embed exactly "
        "(without it: a bounded estimate)",
    )
    plan.set_defaults(handler=_plan)

    status = commands.add_parser("status", help="summarise a job output's snapshots")
    status.add_argument("output", metavar="OUTPUT", help="the job's output URI")
    status.set_defaults(handler=_status)
    cli_sync.add_parser(commands)  # embedfleet sync OUTPUT --to URI

    bench = commands.add_parser("bench", help="throughput: encode vs in-process vs a full job")
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
    bench.set_defaults(handler=_bench)
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
    parser.add_argument("--replicas", type=int, help="override fleet.replicas")
    parser.add_argument("--num-cpus", type=float, help="override fleet.num_cpus")
    parser.add_argument("--num-gpus", type=float, help="override fleet.num_gpus")
    parser.add_argument("--address", help="override fleet.address (or set RAY_ADDRESS)")
    parser.add_argument(
        "--max-tokens", type=int, help="override budget.max_tokens (input tokens, this run)"
    )
    parser.add_argument("--max-cost", type=float, help="override budget.max_cost (USD, this run)")


def _load_job(arguments: argparse.Namespace) -> Job:
    spec = JobSpec.from_toml(arguments.spec)
    overrides = [
        (spec.output, "uri", arguments.output),
        (spec.output, "mode", arguments.mode),
        (spec.output, "rows_per_shard", arguments.rows_per_shard),
        (spec.fleet, "replicas", arguments.replicas),
        (spec.fleet, "num_cpus", arguments.num_cpus),
        (spec.fleet, "num_gpus", arguments.num_gpus),
        (spec.fleet, "address", arguments.address),
        (spec.budget, "max_tokens", arguments.max_tokens),
        (spec.budget, "max_cost", arguments.max_cost),
    ]
    for section, key, value in overrides:
        if value is not None:
            setattr(section, key, value)
    spec.check()
    return Job(spec)


def _run(arguments: argparse.Namespace) -> int:
    job = _load_job(arguments)
    result = job.run(progress=not arguments.quiet)
    summary = result.to_dict()
    if arguments.report:
        with fsspec.open(arguments.report, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    if not arguments.quiet:
        _print_table(result.summary_rows(job.spec.output.uri))
    for shard, error in sorted(result.failed_shards.items()):
        print(f"embedfleet: shard {shard} failed: {error}", file=sys.stderr)
    if result.budget_stopped:
        print(
            f"embedfleet: stopped at the budget ({result.token_limit:,} tokens for this run): "
            f"{result.tokens:,} tokens used ({format_cost(result.estimated_cost)}), "
            f"{result.shards_remaining} of {result.shards} shards remain. Committed shards stay; "
            "a re-run resumes them with a fresh budget of its own (the budget is per run: "
            "set budget.max_tokens / budget.max_cost, or --max-tokens / --max-cost, to what "
            "the rest may spend).",
            file=sys.stderr,
        )
    if result.provider_stopped:  # committed shards stay
        stop = f"stopped: {result.provider_stopped}; {result.shards_remaining} of {result.shards}"
        print(f"embedfleet: {stop} shards remain: re-run to resume", file=sys.stderr)
    for advice in result.advice():
        print(f"embedfleet: {advice}", file=sys.stderr)
    destinations_failed = cli_sync.print_job_destinations(result, quiet=arguments.quiet)
    if result.failed_shards or result.provider_stopped:
        return EXIT_FAILED
    if destinations_failed:
        return EXIT_FAILED
    return EXIT_BUDGET if result.budget_stopped else EXIT_OK


def _plan(arguments: argparse.Namespace) -> int:
    job = _load_job(arguments)
    plan = job.plan(exact=arguments.exact)
    destinations = cli_sync.plan_destinations(job.spec)  # what each sync would send now
    if arguments.json:
        print(json.dumps({**plan.summary(), "destinations": destinations}, indent=2))
        return EXIT_OK
    _print_table(plan.table_rows())
    cli_sync.print_destination_plans(destinations)
    return EXIT_OK


def _status(arguments: argparse.Namespace) -> int:
    output = OutputStore(arguments.output)
    lock = output.read_lock()
    print(f"output: {arguments.output}")
    print(f"lock: {'held by ' + lock.owner if lock else 'free'}")
    rows = [("SNAPSHOT", "STATE", "SHARDS", "VECTORS", "REJECTED")]
    for summary in output.summaries():
        rows.append(
            (
                summary.run_id,
                summary.state,
                f"{summary.committed}/{summary.planned}",
                str(summary.vectors),
                str(summary.rejected),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    latest = output.latest()
    quota = output.snapshot(latest).manifest().get("quota") if latest else None
    if quota:
        print(f"quota (latest): {describe_quota(quota)}")
    cli_sync.print_status(output)
    return EXIT_OK


def _bench(arguments: argparse.Namespace) -> int:
    from embedfleet.bench import run_benchmark

    results = run_benchmark(
        arguments.docs,
        replicas=arguments.replicas,
        num_cpus=arguments.num_cpus,
        device=arguments.device,
        num_gpus=arguments.num_gpus,
    )
    if arguments.report:
        with fsspec.open(arguments.report, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return EXIT_OK


def _print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


def _embed(arguments: argparse.Namespace) -> int:
    if arguments.format == "parquet" and not arguments.output:
        raise ConfigError("--format parquet needs --output PATH")
    if arguments.input and arguments.texts:
        raise ConfigError("give TEXT arguments or --input, not both")
    if arguments.input:
        ids, texts = read_documents(arguments.input, arguments.text_field, arguments.id_field)
    else:
        texts = list(arguments.texts)
        ids = [str(index) for index in range(len(texts))]
    if not texts:
        raise ConfigError("nothing to embed: give TEXT arguments or --input FILE")
    try:
        config = json.loads(arguments.config)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not valid JSON: {exc}") from exc
    ef = embedding_functions.build(arguments.provider, config)
    vectors = ef.embed_query(texts) if arguments.query else ef(texts)

    if arguments.format == "parquet":
        table = embeddings_table(
            ids, texts, vectors, columns={"text": texts}, metadata=embedding_metadata(ef)
        )
        write_parquet(table, arguments.output)
        print(f"wrote {len(texts)} embeddings ({ef.dimension}-d) to {arguments.output}")
        return EXIT_OK
    lines = (
        json.dumps({"id": id_, "embedding": vector.tolist()}) + "\n"
        for id_, vector in zip(ids, vectors, strict=True)
    )
    if arguments.output:
        with fsspec.open(arguments.output, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
    else:
        sys.stdout.writelines(lines)
    return EXIT_OK


def read_documents(uri: str, text_field: str, id_field: str) -> tuple[list[str], list[str]]:
    """Ids and texts from a JSON Lines or plain-text file; errors name the line."""
    json_lines = Path(uri.split("::")[0]).suffix in (".jsonl", ".ndjson") or uri.endswith(
        (".jsonl.gz", ".ndjson.gz")
    )
    ids: list[str] = []
    texts: list[str] = []
    try:
        with fsspec.open(uri, "r", encoding="utf-8", compression="infer") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\n")
                if not json_lines:
                    ids.append(str(number))
                    texts.append(line)
                    continue
                if not line.strip():
                    raise ConfigError(f"{uri} line {number}: empty line in JSON Lines")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{uri} line {number}: invalid JSON: {exc}") from exc
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise ConfigError(f"{uri} line {number}: field {text_field!r} is not a string")
                ids.append(str(record.get(id_field, number)))
                texts.append(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"input file not found: {uri}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{uri} is not UTF-8 text: {exc}") from exc
    duplicates = sorted(id_ for id_, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{uri}: duplicate ids {duplicates[:10]}")
    return ids, texts


def _providers(arguments: argparse.Namespace) -> int:
    rows = [("NAME", "CLASS", "STATUS", "NEEDS")]
    for name in embedding_functions.names():
        cls = embedding_functions.get(name)
        missing = cls.missing_requirements()
        rows.append(
            (name, cls.__name__, "missing" if missing else "ready", "; ".join(missing) or "-")
        )
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for *cells, needs in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)), needs
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
