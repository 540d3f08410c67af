"""Text templates: the text to embed, built from several columns of a row.

::

    [source]
    template = "{title}\\n\\n{body}"

Fields are ``str.format`` fields naming columns (a format spec such as ``{price:.2f}``
or a conversion such as ``{tags!r}`` applies as in Python); the columns they name are
read automatically, and ``text_column`` is not used. A row whose field is missing or
null (JSON Lines cannot tell the two apart) is a reject whose reason names the field,
never the text "None". The content hash covers the rendered text, so editing any
templated field re-embeds that row.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedfleet.errors import ConfigError


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

    def render(self, values: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(the text, None), or (None, why) when a field is missing or null."""
        for name in self.fields:
            if values.get(name) is None:
                return None, f"template field {name!r} is missing or null"
        try:
            return self.source.format_map(values), None
        except (ValueError, TypeError) as exc:  # a format spec the value does not take
            return None, f"template {self.source!r} cannot format this row: {exc}"

    def render_columns(
        self, columns: Mapping[str, Sequence[Any]], count: int
    ) -> list[tuple[str | None, str | None]]:
        """Each of ``count`` rows rendered from per-column values."""
        return [
            self.render({name: columns[name][row] for name in self.fields if name in columns})
            for row in range(count)
        ]
