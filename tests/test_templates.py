"""``[source] template``: the text to embed built from several columns."""

from __future__ import annotations

import pytest

from embedfleet.errors import ConfigError
from embedfleet.job import JobSpec
from embedfleet.job.records import MISSING, RecordProblem
from embedfleet.job.templates import Template


def test_a_template_names_its_columns_once_in_order():
    template = Template.parse("{title}\n\n{body} ({title}, {price:.2f} EUR, {tags!r})")
    assert template.fields == ("title", "body", "price", "tags")
    text = template.render_record({"title": "Tea", "body": "Green.", "price": 3, "tags": ["a"]})
    assert text == "Tea\n\nGreen. (Tea, 3.00 EUR, ['a'])"


def test_column_names_need_not_be_identifiers():
    assert (
        Template.parse("{first name}: {e-mail}").render_record(
            {"first name": "Ada", "e-mail": "ada@example.org"}
        )
        == "Ada: ada@example.org"
    )


@pytest.mark.parametrize(
    ("values", "kind", "state"),
    [
        ({"title": "Tea"}, "missing_text", "missing"),
        ({"title": "Tea", "body": MISSING}, "missing_text", "missing"),
        ({"title": "Tea", "body": None}, "null_text", "null"),
    ],
)
def test_a_missing_or_null_field_is_a_reject_naming_it_not_the_text_none(values, kind, state):
    with pytest.raises(RecordProblem) as caught:
        Template.parse("{title}\n\n{body}").render_record(values)
    assert caught.value.kind == kind
    assert caught.value.reason == f"template field 'body' is {state}"


def test_a_value_its_format_spec_does_not_take_is_a_reject():
    with pytest.raises(RecordProblem) as caught:
        Template.parse("{price:.2f}").render_record({"price": "cheap"})
    assert caught.value.kind == "unformattable_field"
    assert "cannot format the record" in caught.value.reason


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{title", "literal brace"),
        ("{} and {0}", "names no column"),
        ("{meta.title}", "attribute and index access"),
        ("{row[0]}", "attribute and index access"),
        ("{price:{width}}", "nested fields"),
        ("no fields at all", "names no column"),
    ],
)
def test_bad_templates_are_refused_naming_the_key(template, message):
    with pytest.raises(ConfigError, match=rf"source\.template: .*{message}"):
        Template.parse(template)


def test_the_spec_checks_its_template_and_it_changes_the_fingerprint():
    spec = {"source": {"uri": "docs.jsonl", "template": "{title}"}, "output": {"uri": "out"}}
    with pytest.raises(ConfigError, match=r"source\.template"):
        JobSpec.from_dict({**spec, "source": {"uri": "docs.jsonl", "template": "{}"}})
    plain = JobSpec.from_dict({**spec, "source": {"uri": "docs.jsonl"}})
    templated = JobSpec.from_dict(spec)
    other = JobSpec.from_dict({**spec, "source": {"uri": "docs.jsonl", "template": "{body}"}})
    prints = {s.fingerprint("hash", {}) for s in (plain, templated, other)}
    assert len(prints) == 3
    # specs without the new settings keep the fingerprint they always had
    assert plain.fingerprint("hash", {}) == JobSpec.from_dict(
        {"source": {"uri": "docs.jsonl"}, "output": {"uri": "out"}}
    ).fingerprint("hash", {})
