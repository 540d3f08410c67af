"""``embedfleet sync`` and the destination lines of ``run``, ``plan`` and ``status``.

``embedfleet sync OUTPUT --to URI`` brings a destination to the output's latest snapshot
(``OUTPUT`` may also be a job spec: its output and its ``[[destination]]`` tables). It
holds the output's lock while it syncs, like a run, so a sync and a run never overlap.
Exit codes as for runs: 1 a destination failed (named, with the batch), 2 bad usage,
3 locked, 130 interrupted (re-run: the sync resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import fsspec

from embedfleet.destinations import DestinationSpec, parse_uri
from embedfleet.errors import ConfigError, DestinationError, EmbedfleetError
from embedfleet.job import JobResult, JobSpec
from embedfleet.job.store import OutputStore


def add_parser(commands: Any) -> None:
    sync = commands.add_parser(
        "sync",
        help="bring vector stores (Chroma, LanceDB) to an output's latest snapshot",
        epilog="--to URI: chroma:DIR?collection=NAME (embedded), "
        "chroma+http://HOST:PORT?collection=NAME (a server; tenant=, database=, "
        "headers_env_var=VAR), lancedb:PATH_OR_URL?table=NAME. Exit codes: 0 synced; "
        "1 a destination failed (re-run to resume); 2 bad usage; 3 locked; 130 interrupted",
    )
    sync.add_argument("output", metavar="OUTPUT", help="a job's output URI, or its spec (TOML)")
    sync.add_argument(
        "--to", action="append", default=[], metavar="URI", help="a destination (repeatable)"
    )
    sync.add_argument(
        "--force", action="store_true", help="rebuild a destination another output wrote"
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="say what would be sent; write nothing"
    )
    sync.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    sync.add_argument("--report", metavar="PATH", help="write each sync's summary as JSON")
    sync.set_defaults(command="sync")


def _targets(arguments: argparse.Namespace) -> tuple[OutputStore, list[DestinationSpec]]:
    destinations = [parse_uri(uri) for uri in arguments.to]
    if arguments.output.endswith(".toml") and Path(arguments.output).is_file():
        spec = JobSpec.from_toml(arguments.output)
        output = OutputStore(spec.output.uri, spec.output.storage_options)
        destinations = spec.destination + destinations
    else:
        output = OutputStore(arguments.output)
    if not destinations:
        raise ConfigError("nothing to sync to: give --to URI, or a spec with [[destination]]")
    return output, destinations


def run_sync(arguments: argparse.Namespace) -> int:
    from embedfleet.destinations.sync import plan_sync, sync_all
    from embedfleet.job.run_control import locked_run

    output, destinations = _targets(arguments)
    if arguments.dry_run:
        for destination in destinations:
            print_plan(plan_sync(output, dataclasses.replace(destination, max_retries=0)))
        return 0
    with locked_run(output) as signals:
        results = sync_all(
            output,
            destinations,
            progress=not arguments.quiet,
            stop=signals.stop,
            tolerate=(DestinationError,),
        )
    summaries = [result.to_dict() for result in results]
    if arguments.report:
        with fsspec.open(arguments.report, "w", encoding="utf-8") as handle:
            json.dump(summaries, handle, indent=2)
    return 1 if print_results(summaries, quiet=arguments.quiet) else 0


def print_results(summaries: list[dict[str, Any]], *, quiet: bool) -> bool:
    """Each sync's summary (unless quiet) and its error; True when one failed."""
    failed = False
    for item in summaries:
        if item.get("error"):
            failed = True
            print(
                f"embedfleet: destination {item['destination']}: {item['error']}", file=sys.stderr
            )
            continue
        if quiet:
            continue
        if item["base"] == "up to date":
            print(f"{item['destination']}: holds {item['snapshot']}, up to date: nothing sent")
            continue
        seconds = item["seconds"]
        rate = item["records_sent"] / seconds if seconds else 0.0
        _print_rows(
            [
                ("destination", f"{item['destination']} ({item['where']})"),
                ("snapshot", item["snapshot"]),
                ("diffed against", item["base"]),
                ("upserted", f"{item['upserted']} ({item['inserted']} new ids)"),
                ("deleted", item["deleted"]),
                ("unchanged", item["unchanged"]),
                ("rebuilt", "yes (written aside, swapped in)" if item["rebuilt"] else "no"),
                ("time", f"{seconds:.1f} s ({rate:.0f} records/s, {item['batches']} batches)"),
            ]
        )
    if failed:
        print(
            "embedfleet: the snapshot is untouched; re-run `embedfleet sync` (or the next run) "
            "to resume",
            file=sys.stderr,
        )
    return failed


def print_job_destinations(result: JobResult, *, quiet: bool) -> bool:
    """After ``embedfleet run``: each destination's sync; True when one failed."""
    return print_results(result.destinations, quiet=quiet)


def print_plan(plan: dict[str, Any]) -> None:
    where = f"destination {plan['destination']} ({plan['where']})"
    if "refused" in plan:
        print(f"{where}: a sync would be refused: {plan['refused']}")
    elif not plan["behind"]:
        print(f"{where}: holds {plan['snapshot']}, up to date: a sync sends nothing")
    else:
        rebuild = "; a rebuild, written aside and swapped in" if plan["rebuild"] else ""
        print(
            f"{where}: holds {plan['holds'] or 'nothing'}; a sync to {plan['snapshot']} "
            f"would send {plan['upserts']} upserts and {plan['deletes']} deletes "
            f"(diffed against {plan['base']}{rebuild})"
        )


def plan_destinations(spec: JobSpec) -> list[dict[str, Any]]:
    """For ``embedfleet plan``: what syncing each destination to the latest snapshot
    would send now (the run's own snapshot is synced after it completes)."""
    if not spec.destination:
        return []
    from embedfleet.destinations.sync import plan_sync

    output = OutputStore(spec.output.uri, spec.output.storage_options)
    if output.latest() is None:
        note = "no complete snapshot yet: the first sync, after the run, loads every row"
        return [{"destination": item.label, "error": note} for item in spec.destination]
    plans = []
    for destination in spec.destination:
        try:
            plans.append(plan_sync(output, dataclasses.replace(destination, max_retries=0)))
        except EmbedfleetError as exc:  # no snapshot yet, a store down, a column refused
            plans.append({"destination": destination.label, "error": str(exc)})
    return plans


def print_destination_plans(plans: list[dict[str, Any]]) -> None:
    for plan in plans:
        if "error" in plan:
            print(f"destination {plan['destination']}: {plan['error']}")
        else:
            print_plan(plan)


def print_status(output: OutputStore) -> None:
    """``embedfleet status``: each destination's synced snapshot and whether it is behind,
    from the records the output keeps (no connection to the stores)."""
    from embedfleet.destinations.records import records

    found = records(output)
    if not found:
        return
    latest = output.latest()
    print()
    rows = [("DESTINATION", "KIND", "SYNCED", "STATE", "WHERE")]
    for record in found:
        behind = record.get("snapshot") != latest
        state = f"behind (latest {latest})" if behind else "up to date"
        rows.append(
            (
                record["name"],
                record.get("kind", ""),
                record.get("snapshot", ""),
                state,
                record.get("where", ""),
            )
        )
    widths = [max(len(str(row[column])) for row in rows) for column in range(4)]
    for *cells, where in rows:
        line = "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))
        print(f"{line}  {where}")


def _print_rows(rows: list[tuple[str, object]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
