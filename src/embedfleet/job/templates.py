"""Text templates: the text to embed, built from several columns of a row.

::

    [source]
    template = "{title}\\n\\n{body}"

Fields are ``str.format`` fields naming columns (a format spec such as ``{price:.2f}``
or a conversion such as ``{tags!r}`` applies as in Python); the columns they name are
read automatically, and ``text_column`` is not used. A record whose field is missing or
null is a reject whose reason names the field (kinds ``missing_text`` / ``null_text``),
never the text "None"; one whose value the field's format spec cannot take is an
``unformattable_field`` reject. The content hash covers the rendered text, so editing
any templated field re-embeds that row.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedfleet.errors import ConfigError
from embedfleet.job.records import MISSING, RecordProblem


@dataclass(frozen=True)
class Template:
    """A parsed ``[source] template``: its text and the columns it names, in order."""

    source: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, template: str, key: str = "source.template") -> Template:
        """Check a template; errors name ``key`` and say how to write the field."""
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(
                f"{key}: {exc} in {template!r} (write a literal brace as {{{{ or }}}})"
            ) from exc
        fields: list[str] = []
        for _, name, spec, _ in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise ConfigError(
                    f"{key}: field {{{name}}} in {template!r} names no column: write the "
                    "column's name, as in {title}"
                )
            if "." in name or "[" in name:
                raise ConfigError(
                    f"{key}: field {{{name}}} in {template!r}: attribute and index access "
                    "are not supported; name a column"
                )
            if spec and "{" in spec:
                raise ConfigError(
                    f"{key}: field {{{name}:{spec}}}: nested fields are not supported"
                )
            fields.append(name)
        if not fields:
            raise ConfigError(f"{key}: {template!r} names no column (fields look like {{title}})")
        return cls(template, tuple(dict.fromkeys(fields)))

    def render_record(self, values: Mapping[str, Any]) -> str:
        """The text of one record (``values``: each field's value, ``records.MISSING``
        for a key the record lacks), or the ``RecordProblem`` naming the field."""
        for name in self.fields:
            value = values.get(name, MISSING)
            if value is MISSING:
                raise RecordProblem("missing_text", f"template field {name!r} is missing")
            if value is None:
                raise RecordProblem("null_text", f"template field {name!r} is null")
        try:
            text = self.source.format_map(values)
        except (ValueError, TypeError) as exc:  # a format spec the value does not take
            raise RecordProblem(
                "unformattable_field", f"template {self.source!r} cannot format the record: {exc}"
            ) from None
        if not text.strip():
            kind, what = (
                ("empty_text", "an empty text") if not text else ("blank_text", "whitespace only")
            )
            raise RecordProblem(kind, f"the template renders {what}")
        return text
