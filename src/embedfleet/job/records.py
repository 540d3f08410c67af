"""Record-level problems: one bad record is one row of ``_rejects/``, never a lost shard.

A *record* is what a source holds per document: a JSON Lines line, a CSV row, a
text line, a Parquet row, a whole file for ``text_file``. A record that cannot be
embedded is a :class:`BadRecord` with a ``kind`` that tells the cases apart::

    invalid_json         a JSON Lines line that does not parse
    not_an_object        a JSON Lines line that is an array, a string, a number ...
    invalid_utf8         bytes that are not UTF-8 (a line, a CSV row, a text file)
    wrong_field_count    a CSV row with more or fewer fields than the header
    missing_id           source.id_column absent or null in the record
    invalid_id           an id that is not a string or an integer
    missing_text         the text field absent from the record
    null_text            the text is null
    empty_text           the text is ""
    blank_text           the text is whitespace only
    not_a_string         the text is a number, a list, an object, bytes ...
    unformattable_field  a [source] template field whose format spec the value does not take
    refused_by_provider  the provider refused the text as bad input (HTTP 400)

With a ``[source] template``, a missing or null template field is a ``missing_text`` /
``null_text`` reject whose reason names the field. With ``[chunking]``, a row of
``_rejects/`` is a document (or, refused by the provider, one of its chunks), and
``doc_id`` names its document.

and where it is (:class:`Where`): the 1-based line in the file where that is cheap
to know (whole files, and the first byte range of a split file), else, in a byte
range that starts mid-file, the line's byte offset in the file and its 1-based line
within the shard (``tail -c +$((byte_offset + 1)) FILE | head -1`` prints it); the
0-based row of a Parquet file or record of a CSV file. A record whose id cannot be
read keeps the id derived from its place (``path@offset``, ``path#index``), the id
it would have had without ``source.id_column``: no two records share it, and it
never replaces a good row (rejects live in ``_rejects/``, never in a part).

The other failures are not records' fault and fail their shard by name: a file
that cannot be opened, decompressed or parsed as a whole (a corrupt Parquet file,
a broken gzip stream, an object that cannot be read).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

REJECT_KINDS = (
    "invalid_json",
    "not_an_object",
    "invalid_utf8",
    "wrong_field_count",
    "missing_id",
    "invalid_id",
    "missing_text",
    "null_text",
    "empty_text",
    "blank_text",
    "not_a_string",
    "unformattable_field",
    "refused_by_provider",
)

REJECTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("kind", pa.string()),
        ("reason", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("byte_offset", pa.int64()),
        ("line_in_shard", pa.int64()),
        ("row", pa.int64()),
    ]
)


class _Missing:
    """A key the record does not have (``None`` is a key whose value is null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}
_TYPES = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of invalid bytes


class Where(NamedTuple):
    """Where a record is in its file; fields that are not cheap to know are None."""

    line: int | None = None  # 1-based line in the file
    byte_offset: int | None = None  # of the line's first byte, in an uncompressed file
    line_in_shard: int | None = None  # 1-based, in a byte-range shard starting mid-file
    row: int | None = None  # 0-based: Parquet row or CSV record in the file

    def describe(self) -> str:
        if self.line is not None:
            return f"line {self.line}"
        if self.byte_offset is not None:
            return (
                f"byte offset {self.byte_offset} (line {self.line_in_shard} of the shard "
                "that starts mid-file)"
            )
        if self.row is not None:
            return f"row {self.row}"
        return "the file"

    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.byte_offset or 0, self.line or 0, self.line_in_shard or 0, self.row or 0)


@dataclass(frozen=True)
class BadRecord:
    """A record that is not embedded, and why: one row of ``_rejects/``."""

    id: str
    kind: str  # one of REJECT_KINDS
    reason: str  # for people
    where: Where
    file: str = ""  # relative to the source root ("": the shard's one file)
    doc_id: str | None = None  # the document a rejected chunk is of (None: ``id`` itself)


class RecordProblem(Exception):
    """Raised and caught inside the readers: this record is bad (never leaves them)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def decode_utf8(raw: bytes) -> str:
    """``raw`` as text, or ``invalid_utf8`` naming the first bad byte (1-based)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.end]
        raise RecordProblem(
            "invalid_utf8", f"not valid UTF-8: byte {exc.start + 1} ({bad!r}) {exc.reason}"
        ) from None


def parse_json_line(raw: bytes) -> dict[str, Any]:
    """One JSON Lines record, or the problem: invalid UTF-8, invalid JSON (its column in
    the line, not Python's "line 1"), or a JSON value that is not an object."""
    text = decode_utf8(raw)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordProblem(
            "invalid_json", f"invalid JSON at column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise RecordProblem("invalid_json", "invalid JSON: nested too deeply") from None
    if not isinstance(record, dict):
        kind = "null" if record is None else _JSON_TYPES.get(type(record), "a boolean")
        raise RecordProblem("not_an_object", f"the line is {kind}, not a JSON object")
    return record


def check_csv_row(row: list[str], header: list[str]) -> None:
    """A CSV row has the header's number of fields and only UTF-8 (read with
    ``surrogateescape``, an invalid byte is a lone surrogate)."""
    if len(row) != len(header):
        raise RecordProblem(
            "wrong_field_count",
            f"the row has {len(row)} field{'s' * (len(row) != 1)}, the header has {len(header)}",
        )
    for field in row:
        if _SURROGATE.search(field):
            bad = field.encode("utf-8", "surrogateescape")
            try:
                bad.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecordProblem(
                    "invalid_utf8", f"not valid UTF-8: {bad[exc.start : exc.end]!r} in a field"
                ) from None


def check_id(value: Any, column: str) -> str:
    """The record's id as a string: a string, or an integer made one."""
    if value is MISSING or value is None:
        state = "missing" if value is MISSING else "null"
        raise RecordProblem("missing_id", f"id field {column!r} is {state}")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RecordProblem(
        "invalid_id",
        f"id field {column!r} is {_type_of(value)} ({value!r:.40}), not a string or an integer",
    )


def check_text(value: Any, column: str) -> str:
    """The record's text, if it is a string with something besides whitespace."""
    if isinstance(value, str) and value.strip():
        return value
    if value is MISSING:
        raise RecordProblem("missing_text", f"text field {column!r} is missing")
    if value is None:
        raise RecordProblem("null_text", f"text field {column!r} is null")
    if not isinstance(value, str):
        raise RecordProblem(
            "not_a_string", f"text field {column!r} is {_type_of(value)}, not a string"
        )
    if not value:
        raise RecordProblem("empty_text", f"text field {column!r} is empty")
    raise RecordProblem("blank_text", f"text field {column!r} is whitespace only")


def _type_of(value: Any) -> str:
    return _TYPES.get(type(value), f"of type {type(value).__name__}")


def rejects_table(file: str, records: Iterable[BadRecord], files: Sequence[str] = ()) -> pa.Table:
    """A ``_rejects/`` file: the records of one shard, in file order (``files``: the
    order of a packed shard's files; a record without a file of its own is in ``file``)."""
    rank = {name: position for position, name in enumerate(files)}
    ordered = sorted(
        records, key=lambda record: (rank.get(record.file, 0), record.where.sort_key())
    )
    columns: dict[str, list[Any]] = {
        "id": [record.id for record in ordered],
        "doc_id": [record.doc_id or record.id for record in ordered],
        "kind": [record.kind for record in ordered],
        "reason": [record.reason for record in ordered],
        "file": [record.file or file for record in ordered],
    }
    for name in Where._fields:
        columns[name] = [getattr(record.where, name) for record in ordered]
    return pa.table(columns, schema=REJECTS_SCHEMA)


def count_kinds(records: Iterable[BadRecord]) -> dict[str, int]:
    """Rejected records per kind, in ``REJECT_KINDS`` order."""
    return add_kinds({}, Counter(record.kind for record in records))


def add_kinds(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Two counts of rejects per kind added up, in ``REJECT_KINDS`` order."""
    counts = Counter(total)
    counts.update(more)
    known = [kind for kind in REJECT_KINDS if counts[kind]]
    return {kind: counts[kind] for kind in [*known, *sorted(set(counts) - set(known))]}
