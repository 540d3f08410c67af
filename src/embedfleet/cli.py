"""The ``embedfleet`` command: parse, call the library, print.

Exit codes: 0 success; 1 the work failed (model, provider, output); 2 bad
usage, config or input (nothing was embedded).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import fsspec

from embedfleet import __version__, embedding_functions
from embedfleet.errors import ConfigError, EmbedfleetError, InvalidInputError
from embedfleet.output import embedding_metadata, embeddings_table, write_parquet

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments))
    except (ConfigError, InvalidInputError) as exc:
        print(f"embedfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EmbedfleetError as exc:
        print(f"embedfleet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedfleet", description=__doc__.splitlines()[0])
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
    return parser


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
    for name in embedding_functions.list():
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
