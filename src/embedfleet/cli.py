"""The ``embedfleet`` command: parse, call the library, print.

The arguments and the help a user reads are in :mod:`embedfleet.cli_parser`; this
module runs each subcommand and owns the exit codes (``EXIT_*``, listed in the help).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import fsspec

from embedfleet import cli_sync, embedding_functions, timings
from embedfleet.cli_parser import build_parser
from embedfleet.errors import ConfigError, EmbedfleetError, InvalidInputError, LockedError
from embedfleet.job import Job, JobSpec
from embedfleet.job.in_process import choose_mode, where
from embedfleet.job.plan import JobPlan
from embedfleet.job.result import describe_quota
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
    arguments = build_parser().parse_args(argv)
    handler = {
        "embed": _embed,
        "providers": _providers,
        "run": _run,
        "plan": _plan,
        "status": _status,
        "bench": _bench,
        "sync": cli_sync.run_sync,
    }[arguments.command]
    try:
        return int(handler(arguments))
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


def _load_job(arguments: argparse.Namespace) -> Job:
    spec = JobSpec.from_toml(arguments.spec)
    overrides = [
        (spec.output, "uri", arguments.output),
        (spec.output, "mode", arguments.mode),
        (spec.output, "rows_per_shard", arguments.rows_per_shard),
        (spec.fleet, "mode", arguments.fleet_mode),
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
    command = timings.process_age()  # interpreter start, imports, the spec: before run()
    result = job.run(progress=not arguments.quiet)
    if command is not None:  # the user waited from the command's start: in the totals too
        result.startup_phases = {"command": command, **result.startup_phases}
        result.startup_seconds += command
        result.seconds += command
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
    embeds_in = _embeds_in(job, plan)
    if arguments.json:
        summary = {**plan.summary(), "embeds_in": embeds_in, "destinations": destinations}
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    _print_table([*plan.table_rows(), ("embeds in", embeds_in)])
    cli_sync.print_destination_plans(destinations)
    return EXIT_OK


def _embeds_in(job: Job, plan: JobPlan) -> str:
    """Where a run would embed (``[fleet] mode``), from the rows the plan has left."""
    if plan.up_to_date or not plan.shards:
        return "nothing to embed"
    left = plan.estimated_rows * (len(plan.shards) - plan.committed) // len(plan.shards)
    mode, reason = choose_mode(job.spec.fleet, left)
    return where(mode, reason, job.spec.fleet)


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
    if not isinstance(config, dict):
        raise ConfigError(f"--config must be a JSON object, got {type(config).__name__}")
    ef = embedding_functions.build(arguments.provider, config, where="--config")
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
        missing, setup = cls.missing_requirements(), cls.missing_setup()
        status = "missing" if missing else "not ready" if setup else "ready"
        rows.append((name, cls.__name__, status, "; ".join(missing + setup) or "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for *cells, needs in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)),
            needs,
            sep="  ",
        )
    return EXIT_OK


def command() -> None:
    """The ``embedfleet`` console script: :func:`main`, then exit. What is alive by then is
    frozen out of the garbage collector's last sweep (``gc.freeze``), which in a process
    that loaded a model (about 3,900 modules: torch, transformers, scikit-learn) took 2 s
    of the quickstart's exit; files are closed and ``atexit`` handlers (Ray's) run as usual."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    command()
