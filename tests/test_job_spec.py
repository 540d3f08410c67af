"""Job specs: the TOML contract, errors naming the key, fingerprints."""

from __future__ import annotations

import pytest

from embedfleet.errors import ConfigError
from embedfleet.job.spec import BudgetSpec, JobSpec

MINIMAL = '[source]\nuri = "data.jsonl"\n\n[output]\nuri = "out"\n'


def write(tmp_path, text):
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_bundled_quickstart_spec_loads_with_paths_resolved(repo_root):
    spec = JobSpec.from_toml(repo_root / "jobs/quickstart.toml")
    assert spec.source.uri == str(repo_root / "jobs/../data/sample/docs.jsonl")
    assert spec.embedding.provider == "default"
    assert spec.fleet.replicas == 2 and spec.output.mode == "update"


def test_every_bundled_spec_is_valid(repo_root):
    for path in sorted((repo_root / "jobs").glob("*.toml")):
        JobSpec.from_toml(path)


def test_defaults_fill_what_the_spec_leaves_out(tmp_path):
    spec = JobSpec.from_toml(write(tmp_path, MINIMAL))
    assert spec.source.text_column == "text" and spec.source.bad_record_policy == "reject"
    assert spec.output.mode == "update" and spec.output.policy == "update"
    assert spec.output.rows_per_shard == 10_000 and spec.output.keep_snapshots == 3
    assert spec.embedding.provider == "default" and spec.fleet.replicas == 1


def test_remote_uris_are_kept_as_they_are(tmp_path):
    spec = JobSpec.from_toml(
        write(tmp_path, '[source]\nuri = "s3://b/x/*.parquet"\n[output]\nuri = "memory://o"\n')
    )
    assert spec.source.uri == "s3://b/x/*.parquet" and spec.output.uri == "memory://o"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "[fleet]\nreplica = 2\n", "unknown key 'fleet.replica'"),
        (
            MINIMAL.replace('uri = "out"', 'uri = "out"\nrows_per_shard = "many"'),
            "output.rows_per_shard: expected int, got str",
        ),
        (MINIMAL + "[fleet]\nreplicas = true\n", "fleet.replicas: expected int, got bool"),
        (
            MINIMAL.replace('uri = "data.jsonl"', 'uri = "d"\ncolumns = ["a", 3]'),
            r"source.columns\[1\]: expected str",
        ),
        ('[source]\nuri = "x"\n', "missing required key '\\[output\\]'"),
        (MINIMAL + "[extra]\na = 1\n", "unknown key 'extra'"),
        (MINIMAL.replace('uri = "out"', 'uri = "out"\nmode = "sometimes"'), "output.mode must be"),
        (
            MINIMAL.replace('uri = "data.jsonl"', 'uri = "d"\nformat = "xml"'),
            "source.format must be",
        ),
        ("[source\n", "invalid TOML"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        JobSpec.from_toml(write(tmp_path, text))


def test_fingerprint_changes_with_provider_config_and_columns(tmp_path):
    spec = JobSpec.from_toml(write(tmp_path, MINIMAL))
    base = spec.fingerprint("hash", {"dimension": 8})
    assert base == spec.fingerprint("hash", {"dimension": 8})
    assert base != spec.fingerprint("hash", {"dimension": 16})
    assert base != spec.fingerprint("default", {"dimension": 8})
    spec.source.text_column = "body"
    assert base != spec.fingerprint("hash", {"dimension": 8})


def test_budget_defaults_to_no_limit_and_parses_every_key(tmp_path):
    assert JobSpec.from_toml(write(tmp_path, MINIMAL)).budget == BudgetSpec()
    text = MINIMAL + "[budget]\nmax_tokens = 1000\nmax_cost = 2\nprice_per_million_tokens = 0.5\n"
    budget = JobSpec.from_toml(write(tmp_path, text)).budget
    assert budget == BudgetSpec(max_tokens=1000, max_cost=2.0, price_per_million_tokens=0.5)
    assert isinstance(budget.max_cost, float) and budget.limited


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("max_tokens = 0", "budget.max_tokens must be a positive integer, got 0"),
        ("max_tokens = 1.5", "budget.max_tokens: expected int"),
        ('max_tokens = "lots"', "budget.max_tokens: expected int"),
        ("max_cost = 0", "budget.max_cost must be a positive number, got 0.0"),
        ("max_cost = -3.5", "budget.max_cost must be a positive number"),
        ("max_cost = inf", "budget.max_cost must be a positive number"),
        ("max_cost = true", "budget.max_cost: expected float"),
        ("price_per_million_tokens = -0.1", "budget.price_per_million_tokens must be"),
        ("max_dollars = 5", "unknown key 'budget.max_dollars'"),
    ],
)
def test_bad_budgets_name_the_key(tmp_path, budget, message):
    with pytest.raises(ConfigError, match=message):
        JobSpec.from_toml(write(tmp_path, MINIMAL + f"[budget]\n{budget}\n"))


def test_a_free_price_is_allowed_for_self_hosted_servers(tmp_path):
    text = MINIMAL + "[budget]\nprice_per_million_tokens = 0\n"
    assert JobSpec.from_toml(write(tmp_path, text)).budget.price_per_million_tokens == 0.0


def test_the_budget_is_not_part_of_the_fingerprint(tmp_path):
    spec = JobSpec.from_toml(write(tmp_path, MINIMAL))
    before = spec.fingerprint("hash", {"dimension": 8})
    spec.budget = BudgetSpec(max_tokens=10, max_cost=1.0)
    assert spec.fingerprint("hash", {"dimension": 8}) == before


def test_a_key_in_the_spec_is_refused_naming_the_variable_option():
    data = {
        "source": {"uri": "data.jsonl"},
        "embedding": {"provider": "openai", "config": {"api_key": "sk-in-the-spec"}},
        "output": {"uri": "out"},
    }
    with pytest.raises(ConfigError, match="api_key_env_var") as caught:
        JobSpec.from_dict(data)
    assert "sk-in-the-spec" not in str(caught.value)


def test_fleet_resources_and_start_timeout_are_read_and_checked():
    data = {
        "source": {"uri": "data.jsonl"},
        "fleet": {"resources": {"gpu_node": 1}, "start_timeout": 600},
        "output": {"uri": "out"},
    }
    spec = JobSpec.from_dict(data)
    assert spec.fleet.resources == {"gpu_node": 1} and spec.fleet.start_timeout == 600.0
    data["fleet"]["start_timeout"] = 0
    with pytest.raises(ConfigError, match=r"fleet\.start_timeout"):
        JobSpec.from_dict(data)


def test_tuning_how_calls_run_never_changes_a_jobs_fingerprint():
    """Pacing, retries and concurrency are operational: changing them must not re-embed."""
    from embedfleet.job import Job

    def fingerprint(**config):
        spec = JobSpec.from_dict(
            {
                "source": {"uri": "docs.jsonl"},
                "embedding": {"provider": "huggingface_server", "config": config},
                "output": {"uri": "out"},
            }
        )
        return Job(spec).fingerprint

    base = fingerprint(url="http://127.0.0.1:9/embed")
    tuned = fingerprint(
        url="http://127.0.0.1:9/embed",
        max_retries=2,
        max_retry_seconds=30,
        max_concurrency=2,
        max_requests_per_minute=60,
        timeout=5,
    )
    assert tuned == base
    assert fingerprint(url="http://127.0.0.1:9/embed", normalize=False) != base
    assert fingerprint(url="http://127.0.0.1:10/embed") != base
