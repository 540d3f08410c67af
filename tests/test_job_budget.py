"""Costs and budgets: prices, token estimates in `plan`, jobs that stop at
`budget.max_tokens` / `max_cost` and resume, and an API key that never leaves
the process environment (a canary searched for in everything a job leaves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedfleet
from embedfleet import pricing, tokens
from embedfleet.cli import EXIT_BUDGET, EXIT_FAILED, EXIT_OK, main
from embedfleet.errors import ConfigError
from embedfleet.job import Job, JobSpec
from embedfleet.job import plan as job_plan
from embedfleet.pricing import Price, TokenBudget, format_cost
from tests.fakes import openai_api, tei
from tests.fakes.server import FakeServer, Fault

HASH = {"provider": "hash", "config": {"dimension": 8}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def documents(count: int) -> list[dict]:
    return [
        {"id": f"d{index}", "text": f"document {index} " + "word " * (index % 7)}
        for index in range(count)
    ]


def make_spec(tmp_path: Path, count: int, rows_per_shard: int, **sections) -> JobSpec:
    source = write_jsonl(tmp_path / "docs.jsonl", documents(count))
    return JobSpec.from_dict(
        {
            "source": {"uri": str(source), "id_column": "id"},
            "embedding": sections.pop("embedding", HASH),
            "fleet": sections.pop("fleet", {"replicas": 2, "num_cpus": 0}),
            "output": {"uri": str(tmp_path / "out"), "rows_per_shard": rows_per_shard},
            **sections,
        }
    )


def toml_text(sections: dict[str, dict]) -> str:
    """A spec as TOML (JSON scalars and arrays are valid TOML values)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def local_token_total(count: int) -> int:
    return sum(tokens.estimate_tokens(row["text"]) for row in documents(count))


def snapshot_dir(output: Path) -> Path:
    (snapshot,) = output.glob("snapshots/*")
    return snapshot


def markers(output: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in output.glob("snapshots/*/_commits/*.json")]


# ---------------------------------------------------------------- prices and the ledger
def test_default_prices_are_dated_estimates_per_million_tokens():
    assert pricing.PRICES_AS_OF == "2026-11-25"
    assert pricing.DEFAULT_PRICES[("openai", "text-embedding-3-small")] == 0.02
    assert pricing.DEFAULT_PRICES[("openai", "text-embedding-3-large")] == 0.13
    assert pricing.DEFAULT_PRICES[("openai", "text-embedding-ada-002")] == 0.10
    assert pricing.DEFAULT_PRICES[("cohere", "embed-v4.0")] == 0.12
    assert pricing.DEFAULT_PRICES[("google_generative_ai", "gemini-embedding-001")] == 0.15
    price = pricing.price_for("openai", "text-embedding-3-small", api=True)
    assert price.cost(2_000_000) == pytest.approx(0.04)
    assert "estimate" in price.source and "2026-11-25" in price.source


def test_local_models_are_free_unknown_api_models_unknown_and_the_spec_wins():
    assert pricing.price_for("sentence_transformer", "x", api=False).cost(10**9) == 0
    unknown = pricing.price_for("openai", "my-finetune", api=True)
    assert unknown.cost(100) is None
    assert format_cost(unknown.cost(100)) == "unknown (set budget.price_per_million_tokens)"
    override = pricing.price_for("openai", "text-embedding-3-small", api=True, override=1.5)
    assert override.cost(1_000_000) == 1.5 and override.source == "budget.price_per_million_tokens"


def test_token_limit_is_the_smaller_of_max_tokens_and_what_max_cost_buys():
    price = Price(0.02, "test")
    assert pricing.token_limit(None, None, price) is None
    assert pricing.token_limit(None, 1.0, price) == 50_000_000
    assert pricing.token_limit(1000, 1.0, price) == 1000
    assert pricing.token_limit(None, 1.0, Price(0.0, "local model")) is None
    with pytest.raises(ConfigError, match=r"budget\.max_cost.*budget\.price_per_million_tokens"):
        pricing.token_limit(None, 1.0, Price(None, "no price known"))


def test_the_ledger_refuses_what_does_not_fit_and_everything_after_it():
    budget = TokenBudget(100)
    assert budget.reserve(60) and budget.reserve(40)
    assert not budget.reserve(1)
    assert not budget.reserve(0)  # once refused, no further shard starts, even an empty one
    assert budget.state() == {"limit": 100, "reserved": 100, "refused": 2, "exhausted": True}
    unlimited = TokenBudget(None)
    assert all(unlimited.reserve(10**9) for _ in range(3))
    assert unlimited.reserved == 3 * 10**9


def test_max_cost_for_a_model_without_a_price_is_refused_naming_the_key(tmp_path):
    spec = make_spec(
        tmp_path,
        3,
        10,
        embedding={"provider": "openai", "config": {"model_name": "my-finetune"}},
        budget={"max_cost": 5.0},
    )
    with pytest.raises(ConfigError, match=r"budget\.max_cost.*price_per_million_tokens"):
        Job(spec)
    spec.budget.price_per_million_tokens = 0.5
    assert Job(spec).budget() == (Price(0.5, "budget.price_per_million_tokens"), 10_000_000)


# ---------------------------------------------------------------- plan
@pytest.fixture
def no_openai_calls(monkeypatch):
    """Plan must not call the API: any embedding request fails the test."""
    from embedfleet.embedding_functions import OpenAIEmbeddingFunction

    def refuse(*args, **kwargs):
        pytest.fail("plan called the embedding API")

    monkeypatch.setattr(OpenAIEmbeddingFunction, "embed_request", refuse)
    monkeypatch.setattr(OpenAIEmbeddingFunction, "embed_batch", refuse)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_bundled_openai_spec_parses(repo_root):
    spec = JobSpec.from_toml(repo_root / "jobs/openai.toml")
    assert spec.source.uri == str(repo_root / "jobs/../data/sample/docs.jsonl")
    assert spec.embedding.provider == "openai"
    config = spec.embedding.config
    assert config["model_name"] == "text-embedding-3-small"
    assert config["api_key_env_var"] == "OPENAI_API_KEY"
    assert config["max_requests_per_minute"] == 3000
    assert config["max_tokens_per_minute"] == 1_000_000
    assert spec.fleet.replicas > 1 and spec.fleet.num_cpus == 0
    assert spec.budget.max_cost is not None and spec.budget.max_cost > 0


def test_plan_of_the_openai_example_prints_tokens_and_cost_offline(
    repo_root, no_openai_calls, capsys
):
    from embedfleet.embedding_functions import OpenAIEmbeddingFunction

    with open(repo_root / "data/sample/docs.jsonl", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    expected = sum(OpenAIEmbeddingFunction("text-embedding-3-small").billed_tokens(texts))
    assert main(["plan", str(repo_root / "jobs/openai.toml")]) == EXIT_OK
    table = {
        label.strip(): value
        for label, value in (line.split("  ", 1) for line in capsys.readouterr().out.splitlines())
    }
    assert table["estimated tokens"].strip() == f"{expected:,} (counted over all 240 rows)"
    assert table["estimated cost"].strip() == format_cost(expected * 0.02 / 1_000_000)

    assert main(["plan", "--json", str(repo_root / "jobs/openai.toml")]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["estimated_tokens"] == expected
    assert plan["estimated_cost"] == pytest.approx(expected * 0.02 / 1_000_000)
    assert plan["price_per_million_tokens"] == 0.02 and "2026-11-25" in plan["price_source"]
    assert plan["token_limit"] == pricing.token_limit(None, 0.05, Price(0.02, ""))
    assert "fits" in plan["budget"]


def test_plan_says_when_the_price_is_unknown(tmp_path, no_openai_calls, capsys):
    spec = tmp_path / "job.toml"
    write_jsonl(tmp_path / "docs.jsonl", documents(5))
    spec.write_text(
        toml_text(
            {
                "source": {"uri": "docs.jsonl"},
                "embedding": {"provider": "openai"},
                "embedding.config": {"model_name": "my-finetune"},
                "output": {"uri": "out"},
            }
        )
    )
    assert main(["plan", str(spec)]) == EXIT_OK
    output = capsys.readouterr().out
    assert "estimated cost    unknown (set budget.price_per_million_tokens)" in output
    assert main(["plan", str(spec), "--max-cost", "1"]) == 2
    assert "budget.max_cost" in capsys.readouterr().err


def test_plan_counts_small_datasets_whole_and_scales_a_sample_of_large_ones(tmp_path, monkeypatch):
    (tmp_path / "small").mkdir()
    small = make_spec(tmp_path / "small", 30, 10)
    plan = Job(small).plan()
    assert plan.estimated_tokens == local_token_total(30)
    assert plan.token_basis == "counted over all 30 rows"

    monkeypatch.setattr(job_plan, "PLAN_SAMPLE_ROWS", 60)
    monkeypatch.setattr(job_plan, "PLAN_SAMPLE_PIECES", 4)
    (tmp_path / "large").mkdir()
    large = make_spec(tmp_path / "large", 2000, 100)
    plan = Job(large).plan()
    assert plan.token_basis.startswith("estimated from 60 sampled rows (4 of ")
    assert plan.estimated_tokens == pytest.approx(local_token_total(2000), rel=0.1)


def test_plan_survives_an_unreadable_file_and_still_estimates(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", documents(20))
    (folder / "b.parquet").write_bytes(b"not parquet at all")
    spec = JobSpec.from_dict(
        {"source": {"uri": str(folder)}, "embedding": HASH, "output": {"uri": str(tmp_path / "o")}}
    )
    plan = Job(spec).plan()
    assert plan.estimated_tokens >= local_token_total(20)
    assert "sampled" in plan.token_basis


# ---------------------------------------------------------------- budgets on a real Ray
@pytest.mark.usefixtures("local_ray")
def test_a_job_stops_before_its_token_budget_and_a_higher_budget_resumes_it(tmp_path):
    total = local_token_total(300)
    limit = total * 2 // 5
    spec = make_spec(tmp_path, 300, 20, budget={"max_tokens": limit})
    output = Path(spec.output.uri)

    first = Job(spec).run(progress=False)
    assert first.budget_stopped and not first.complete and not first.failed_shards
    assert first.token_limit == limit and 0 < first.tokens <= limit
    committed = markers(output)
    assert committed and sum(marker["tokens"] for marker in committed) == first.tokens
    assert first.shards_remaining == first.shards - len(committed) > 0
    # no part exists without its marker: nothing beyond the budget was committed
    snapshot = snapshot_dir(output)
    parts = {path.name for path in snapshot.glob("*.parquet")}
    assert parts == {marker["part"] for marker in committed}
    assert sum(pq.read_metadata(snapshot / name).num_rows for name in parts) == first.embedded
    assert not (output / "_latest").exists() and not (snapshot / "_manifest.json").exists()

    spec.budget.max_tokens = total * 2
    second = Job(spec).run(progress=False)
    assert second.complete and second.run_id == first.run_id and not second.budget_stopped
    assert second.resumed == first.embedded and second.embedded == 300 - first.embedded
    assert second.shards_skipped == len(committed) and second.shards_remaining == 0
    ids = embedfleet.read(str(output)).to_table()["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == {f"d{index}" for index in range(300)}

    manifest = json.loads((snapshot / "_manifest.json").read_text())
    shard_tokens = [shard["tokens"] for shard in manifest["shards"]]
    assert manifest["tokens"] == sum(shard_tokens) == first.tokens + second.tokens == total
    # it stopped at the shard that did not fit, not earlier
    assert first.tokens > limit - max(shard_tokens)
    assert manifest["estimated_cost"] == 0.0 and manifest["price"]["source"] == "local model"


@pytest.mark.usefixtures("local_ray")
def test_the_cli_exits_4_at_the_budget_and_says_how_to_resume(tmp_path, capsys):
    spec = make_spec(tmp_path, 120, 20)
    path = tmp_path / "job.toml"
    path.write_text(
        toml_text(
            {
                "source": {"uri": spec.source.uri, "id_column": "id"},
                "embedding": {"provider": "hash"},
                "embedding.config": {"dimension": 8},
                "fleet": {"replicas": 2, "num_cpus": 0},
                "output": {"uri": spec.output.uri, "rows_per_shard": 20},
                "budget": {"max_tokens": local_token_total(120) // 3},
            }
        )
    )
    report = tmp_path / "report.json"
    assert main(["run", "--quiet", "--report", str(report), str(path)]) == EXIT_BUDGET
    error = capsys.readouterr().err
    assert "stopped at the budget" in error and "a re-run resumes them with a fresh budget" in error
    summary = json.loads(report.read_text())
    assert summary["budget_stopped"] and not summary["complete"]
    assert 0 < summary["tokens"] <= local_token_total(120) // 3
    assert f"{summary['shards_remaining']} of {summary['shards']} shards remain" in error

    assert main(["run", "--quiet", "--max-tokens", "100000000", str(path)]) == EXIT_OK
    assert embedfleet.read(spec.output.uri).count_rows() == 120


@pytest.mark.usefixtures("local_ray")
def test_a_shard_larger_than_the_whole_budget_embeds_nothing(tmp_path):
    spec = make_spec(tmp_path, 40, 20, budget={"max_tokens": 1})
    result = Job(spec).run(progress=False)
    assert result.budget_stopped and result.embedded == result.tokens == 0
    assert result.shards_remaining == result.shards
    assert not list(Path(spec.output.uri).glob("snapshots/*/*.parquet"))


@pytest.mark.usefixtures("local_ray")
def test_shards_in_parallel_never_send_the_provider_more_than_the_budget(tmp_path):
    from embedfleet.embedding_functions import HuggingFaceEmbeddingServer

    server = FakeServer(tei.answer)  # no key: local Ray workers keep the driver's old env
    try:
        config = {"url": f"{server.url}/embed", "retry_backoff_seconds": 0.01}
        counter = HuggingFaceEmbeddingServer(**config)
        total = sum(counter.billed_tokens([row["text"] for row in documents(200)]))
        limit = total * 3 // 10
        spec = make_spec(
            tmp_path,
            200,
            10,
            embedding={"provider": "huggingface_server", "config": config},
            fleet={"replicas": 2, "num_cpus": 0},
            budget={"max_tokens": limit},
        )
        result = Job(spec).run(progress=False)
    finally:
        server.stop()
    sent = [text for request in server.requests for text in request.body["inputs"]]
    assert result.budget_stopped and 0 < result.tokens <= limit
    assert len(sent) == result.embedded  # refused shards never reached the provider
    assert sum(counter.billed_tokens(sent)) == result.tokens <= limit


@pytest.mark.usefixtures("local_ray")
def test_tokens_and_cost_are_recorded_in_the_report_and_manifest(tmp_path):
    spec = make_spec(tmp_path, 50, 20, budget={"price_per_million_tokens": 2.0})
    result = Job(spec).run(progress=False)
    assert result.complete and result.tokens == local_token_total(50)
    assert result.to_dict()["estimated_cost"] == pytest.approx(result.tokens * 2 / 1_000_000)
    manifest = json.loads((snapshot_dir(Path(spec.output.uri)) / "_manifest.json").read_text())
    assert manifest["tokens"] == result.tokens
    assert manifest["estimated_cost"] == pytest.approx(result.tokens * 2 / 1_000_000)
    assert manifest["price"] == {
        "per_million_tokens": 2.0,
        "source": "budget.price_per_million_tokens",
    }


# ---------------------------------------------------------------- the key never leaks
CANARY = "sk-canary-job-3b9c-never-write-me"


def files_holding(needle: str, paths: Iterable[Path]) -> tuple[list[Path], int]:
    """Files whose raw bytes contain ``needle`` (Parquet footers are not compressed),
    and how many files were searched."""
    found, searched = [], 0
    for path in paths:
        try:
            if not path.is_file():
                continue
            data = path.read_bytes()
        except OSError:  # a socket or a file that vanished
            continue
        searched += 1
        if needle.encode() in data:
            found.append(path)
    return found, searched


def every_file(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*")]


def ray_sessions() -> set[Path]:
    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    return {path for path in root.glob("session_2*") if path.is_dir()}


def test_the_leak_search_finds_a_planted_key(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "worker.err").write_text(f"Traceback ... key={CANARY}\n")
    table = pa.table({"id": ["a"]}).replace_schema_metadata({"embedfleet": f'{{"k": "{CANARY}"}}'})
    pq.write_table(table, tmp_path / "part.parquet", compression="zstd")
    (tmp_path / "clean.txt").write_text("nothing here")
    found, searched = files_holding(CANARY, every_file(tmp_path))
    assert sorted(path.name for path in found) == ["part.parquet", "worker.err"]
    assert searched == 3


def test_an_openai_job_through_the_cli_never_writes_the_api_key(tmp_path):
    server = FakeServer(openai_api.answer, api_key=CANARY)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {CANARY}"}}).encode()
    server.faults.extend(
        [
            Fault(429, echo, {"retry-after-ms": "10"}),
            Fault(500, echo),
            Fault(401, echo),  # not retried: fails one shard, its message goes to stderr
        ]
    )
    write_jsonl(tmp_path / "docs.jsonl", documents(60))
    output = tmp_path / "out"
    spec = tmp_path / "openai.toml"
    spec.write_text(
        toml_text(
            {
                "source": {"uri": "docs.jsonl", "id_column": "id"},
                "embedding": {"provider": "openai"},
                "embedding.config": {
                    "model_name": "text-embedding-3-small",
                    "api_base": f"{server.url}/v1",
                    "api_key_env_var": "OPENAI_API_KEY",
                    "retry_backoff_seconds": 0.01,
                    "max_retries": 3,
                    "max_requests_per_minute": 3000,
                    "max_tokens_per_minute": 1_000_000,
                },
                "fleet": {"replicas": 2, "num_cpus": 0},
                "output": {"uri": "out", "rows_per_shard": 10},
                "budget": {"max_cost": 1.0},
            }
        )
    )
    env = {**os.environ, "RAY_ADDRESS": "", "OPENAI_API_KEY": CANARY}
    logs = tmp_path / "logs"
    logs.mkdir()
    sessions_before = ray_sessions()
    codes = []
    try:
        for attempt in (1, 2):
            with (
                open(logs / f"stdout-{attempt}.txt", "w") as stdout,
                open(logs / f"stderr-{attempt}.txt", "w") as stderr,
            ):
                command = [sys.executable, "-m", "embedfleet.cli", "run", str(spec)]
                command += ["--report", str(logs / f"report-{attempt}.json")]
                process = subprocess.run(
                    command, env=env, stdout=stdout, stderr=stderr, timeout=300
                )
            codes.append(process.returncode)
    finally:
        server.stop()
    first_error = (logs / "stderr-1.txt").read_text()
    assert codes == [EXIT_FAILED, EXIT_OK], first_error + (logs / "stderr-2.txt").read_text()
    assert "refused the credentials (401)" in first_error  # the error path really ran
    assert {request.headers["authorization"] for request in server.requests} == {
        f"Bearer {CANARY}"
    }  # the key was really in use
    ids = embedfleet.read(str(output)).to_table()["id"].to_pylist()
    assert sorted(ids) == sorted(f"d{index}" for index in range(60))

    sessions = sorted(ray_sessions() - sessions_before)
    assert sessions, "the runs started no Ray session of their own"
    found, searched = files_holding(CANARY, every_file(output, logs, *sessions))
    assert searched > 20 and list((output).rglob("*.parquet"))
    assert not found, f"the key was written to {found}"
