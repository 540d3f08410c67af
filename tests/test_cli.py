"""The embedfleet command, run as a user runs it (a real subprocess where it matters)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import embedfleet
from embedfleet.cli import EXIT_USAGE, main
from embedfleet.output_format import METADATA_KEY, content_hash, read_metadata
from embedfleet.testing import HashEmbeddingFunction

HASH = ["--provider", "hash", "--config", '{"dimension": 8}']


def test_embed_prints_json_lines_in_input_order(capsys):
    assert main(["embed", *HASH, "foo", "bar baz"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = HashEmbeddingFunction(dimension=8)(["foo", "bar baz"])
    assert [line["id"] for line in lines] == ["0", "1"]
    for line, vector in zip(lines, expected, strict=True):
        np.testing.assert_allclose(line["embedding"], vector, rtol=1e-6)


def test_embed_query_flag_uses_embed_query(capsys):
    assert main(["embed", *HASH, "--query", "foo"]) == 0
    line = json.loads(capsys.readouterr().out)
    expected = HashEmbeddingFunction(dimension=8).embed_query(["foo"])[0]
    np.testing.assert_allclose(line["embedding"], expected, rtol=1e-6)


def test_embed_parquet_output_has_the_contract_columns_and_metadata(tmp_path):
    source = tmp_path / "docs.jsonl"
    rows = [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out" / "vectors.parquet"
    code = main(
        ["embed", *HASH, "--input", str(source), "--format", "parquet", "--output", str(output)]
    )
    assert code == 0
    table = pq.read_table(output)
    assert table.column_names == ["id", "embedding", "content_hash", "text"]
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[8]"
    assert table["id"].to_pylist() == ["a", "b"]
    assert table["content_hash"].to_pylist() == [content_hash("alpha"), content_hash("beta")]
    metadata = read_metadata(str(output))
    assert metadata["provider"] == "hash" and metadata["dimension"] == 8
    assert metadata["config"] == HashEmbeddingFunction(dimension=8).get_config()
    assert metadata["embedfleet_version"] == embedfleet.__version__
    assert METADATA_KEY in table.schema.metadata
    assert [path.name for path in output.parent.iterdir()] == ["vectors.parquet"]


def test_text_file_input_is_one_document_per_line(tmp_path, capsys):
    source = tmp_path / "docs.txt"
    source.write_text("first line\nsecond line\n")
    assert main(["embed", *HASH, "--input", str(source)]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["1", "2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": 5}\n', "line 2: field 'text' is not a string"),
        ('{"text": "ok"}\nnot json\n', "line 2: invalid JSON"),
        ('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', r"duplicate ids \['1'\]"),
    ],
)
def test_bad_input_file_exits_2_naming_file_and_line(tmp_path, capsys, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    assert main(["embed", *HASH, "--input", str(source)]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert str(source) in error and __import__("re").search(message, error)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["embed", "--provider", "nope", "x"], "no embedding function registered as 'nope'"),
        (["embed", "--provider", "hash", "--config", "{bad", "x"], "--config is not valid JSON"),
        (["embed", *HASH, "--format", "parquet", "x"], "--format parquet needs --output"),
        (["embed", *HASH], "nothing to embed"),
        (["embed", *HASH, "--input", "/no/such/file.jsonl"], "input file not found"),
    ],
)
def test_usage_errors_exit_2_with_a_message(capsys, arguments, message):
    assert main(arguments) == EXIT_USAGE
    assert message in capsys.readouterr().err


def write_job(tmp_path, mode_line: str = "") -> str:
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(6))
    )
    spec = tmp_path / "job.toml"
    spec.write_text(
        '[source]\nuri = "docs.jsonl"\nid_column = "id"\n[embedding]\nprovider = "hash"\n'
        f'[output]\nuri = "out"\n{mode_line}\n'
    )
    return str(spec)


def table_of(output: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in output.splitlines())


def test_plain_plan_says_it_is_an_estimate_and_never_prints_none(tmp_path, capsys):
    assert main(["plan", write_job(tmp_path)]) == 0
    table = table_of(capsys.readouterr().out)
    assert table["counts"].startswith("estimate") and "plan --exact" in table["counts"]
    assert table["snapshot"] == "a new snapshot"
    assert table["base"] == "none: every row is embedded"
    assert "None" not in "".join(table.values())


def test_plan_exact_prints_exact_counts_as_a_table_and_as_json(tmp_path, capsys):
    spec = write_job(tmp_path)
    assert main(["plan", "--exact", "--json", spec]) == 0
    plan = json.loads(capsys.readouterr().out)
    exact = plan["exact"]
    assert plan["counts"] == "exact" and (exact["records"], exact["new"]) == (6, 6)
    assert exact["tokens"] == plan["estimated_tokens"]  # six rows: the estimate counted all
    assert main(["plan", "--exact", spec]) == 0
    output = capsys.readouterr().out
    table = table_of(output)
    assert table["counts"].startswith("exact") and "None" not in output
    assert table["to embed"] == f"6 rows, {exact['tokens']} tokens"
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("old", ["resume", "incremental"])
def test_older_mode_names_mean_update_in_a_spec_and_on_the_command_line(tmp_path, capsys, old):
    for arguments in (
        [write_job(tmp_path, f'mode = "{old}"')],
        ["--mode", old, write_job(tmp_path)],
        ["--incremental", write_job(tmp_path)],
    ):
        assert main(["plan", "--json", *arguments]) == 0
        note = json.loads(capsys.readouterr().out)["note"]
        assert note == "no complete snapshot yet: every row is embedded"


def test_an_unknown_mode_says_what_to_write(tmp_path, capsys):
    assert main(["plan", write_job(tmp_path, 'mode = "nightly"')]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "output.mode must be one of ('update', 'overwrite')" in error
    assert "incremental and resume are older names of update" in error


KEY_VARIABLES = ("OPENAI_API_KEY", "COHERE_API_KEY", "GEMINI_API_KEY", "HF_TOKEN", "JINA_API_KEY")


def test_providers_lists_every_provider_and_its_status(capsys, monkeypatch):
    for variable in KEY_VARIABLES:
        monkeypatch.setenv(variable, "sk-test-not-a-real-key")
    assert main(["providers"]) == 0
    output = capsys.readouterr().out
    for name in embedfleet.embedding_functions.names():
        cls = embedfleet.embedding_functions.get(name)
        assert any(
            line.split()[:3] == [name, cls.__name__, "ready"] for line in output.splitlines()
        )
    assert "sk-test" not in output


def test_providers_shows_an_api_provider_without_its_key_as_not_ready(capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("COHERE_API_KEY", "secret-cohere-value")
    assert main(["providers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "not ready" in lines["openai"] and lines["openai"].endswith("set OPENAI_API_KEY")
    assert " ready " in lines["cohere"] and "secret-cohere-value" not in lines["cohere"]
    assert " ready " in lines["hash"]  # no key to set


def test_providers_reports_a_missing_module_and_how_to_install_it(capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sentence_transformers" else real_find_spec(name, *a),
    )
    assert main(["providers"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("default "))
    assert "missing" in line and 'sentence_transformers (pip install "embedfleet[local]")' in line


def test_version_flag_prints_the_package_version():
    result = subprocess.run(
        [sys.executable, "-m", "embedfleet.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"embedfleet {embedfleet.__version__}"


@pytest.mark.real_model
def test_readme_first_command_embeds_the_sample_offline(repo_root, tmp_path):
    """Runs the README's first command (make quickstart) against this environment,
    with the hub switched off and an empty Hugging Face cache."""
    readme = (repo_root / "README.md").read_text()
    assert "make quickstart" in readme.split("\n## ", 1)[0]
    if shutil.which("make") is None:
        pytest.fail("make is required to run the README's commands")
    venv = os.path.dirname(os.path.dirname(sys.executable))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("EMBEDFLEET_FLEET_MODE")  # the user's default: 240 documents embed in-process
    result = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            f"{venv}/.installed-local",
            "quickstart",
            f"VENV={venv}",
            f"OUT={tmp_path}/out",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr  # what a person reads, with the real model
    for alarm in ("Token authentication", "Loading weights", "pid=", "\x1b["):
        assert alarm not in console, alarm
    assert "embedded in    this process (a small job, about 240 rows to embed" in console
    table = embedfleet.read(str(tmp_path / "out")).to_table()
    with open(repo_root / "data/sample/docs.jsonl", encoding="utf-8") as handle:
        sample = [json.loads(line) for line in handle]
    assert sorted(table["id"].to_pylist()) == sorted(row["id"] for row in sample)
    assert table.schema.field("embedding").type.list_size == 384
    assert json.loads(table.schema.metadata[b"embedfleet"])["provider"] == "default"


def test_help_is_written_for_users(capsys):
    helps = {}
    for command in ("", "embed", "providers", "run", "plan", "status", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"] if command else ["--help"])
        helps[command] = capsys.readouterr().out
    top = helps[""].split("\n\n")[1]
    assert top.startswith("Embed text with local models or API providers")
    assert "exit codes:" in helps[""] and "130  interrupted" in helps[""]
    for name, text in helps.items():
        assert "``" not in text and "parse, call the library" not in text, name
        if name:  # each subcommand says what it does, in a sentence, under its usage
            assert text.split("\n\n")[1][0].isupper(), (name, text)


@pytest.mark.parametrize(
    ("provider", "config", "key"),
    [
        ("hash", {"dimenson": 8}, "dimension"),
        ("default", {"precison": "fp32"}, "precision"),
        ("sentence_transformer", {"model_name": "x", "precison": "bf16"}, "precision"),
        ("openai", {"max_concurency": 2}, "max_concurrency"),
    ],
)
def test_a_typo_in_embedding_config_exits_2_before_ray_starts(
    tmp_path, capsys, monkeypatch, provider, config, key
):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    typo = next(name for name in config if name != "model_name")
    spec = tmp_path / "job.toml"
    settings = "".join(f"{name} = {json.dumps(value)}\n" for name, value in config.items())
    spec.write_text(
        f'[source]\nuri = "docs.jsonl"\n[embedding]\nprovider = "{provider}"\n'
        f'[embedding.config]\n{settings}[output]\nuri = "out"\n'
    )
    for command in ("run", "plan"):
        assert main([command, str(spec)]) == EXIT_USAGE
        error = capsys.readouterr().err
        assert f"embedding.config.{typo}: unknown key for provider {provider!r}" in error
        assert f"did you mean {key!r}" in error and "valid keys: " in error
