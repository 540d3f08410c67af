"""What a person sees when they run a job: `embedfleet run` in a real subprocess.

One run of a small job on its own local Ray instance (2 replicas of a tiny model
whose checkpoint lacks its pooler weights, loaded through sentence-transformers, so
that transformers warns in every replica as it loads and progress bars are drawn),
read by the tests below: the console carries no Ray alarm,
no ANSI codes, no replica progress bars or worker lines, the replicas' warning
once, and the summary last; the report says where start-up went.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("sentence_transformers")

from embedfleet.embedding_functions.local import lean_model
from tests.tiny_models import build_tiny_sentence_transformer

DOCS = 40
# The CLI as `python -m embedfleet.cli`, noting afterwards whether the driver imported torch.
RUN_CLI = """
import runpy, sys
try:
    runpy.run_module("embedfleet.cli", run_name="__main__")
finally:
    with open(sys.argv[-1] + ".modules", "w") as handle:
        handle.write("torch" if "torch" in sys.modules else "-")
"""


def model_without_pooler(directory: Path) -> Path:
    """A tiny model whose checkpoint lacks the pooler: transformers warns on every load."""
    from safetensors.torch import load_file, save_file

    model = build_tiny_sentence_transformer(directory)
    weights = model / "model.safetensors"
    tensors = {k: v for k, v in load_file(weights).items() if not k.startswith("pooler.")}
    save_file(tensors, weights, metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def console_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("console")
    model = model_without_pooler(folder / "model")
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as handle:
        for index in range(DOCS):
            text = f"document {index} about " + "words " * (index % 7)
            handle.write(json.dumps({"id": str(index), "text": text}) + "\n")
    spec = folder / "job.toml"
    spec.write_text(
        '[source]\nuri = "docs.jsonl"\nid_column = "id"\n'
        '[embedding]\nprovider = "sentence_transformer"\n'
        f'[embedding.config]\nmodel_name = "{model}"\nprecision = "fp32"\n'
        "[fleet]\nreplicas = 2\nnum_cpus = 1\n"
        '[output]\nuri = "out"\nrows_per_shard = 10\n'
    )
    report = folder / "report.json"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env[lean_model.FORCE_VARIABLE] = "1"  # the noisiest loader, not embedfleet's quiet one
    result = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "run", str(spec), "--report", str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "report": json.loads(report.read_text()),
        "driver_imported": Path(f"{report}.modules").read_text(),
    }


def test_the_console_has_no_ray_alarm_no_ansi_codes_and_no_replica_output(console_run):
    both = console_run["stdout"] + console_run["stderr"]
    assert "Token authentication" not in both and "RAY_AUTH_MODE" not in both
    assert "\x1b[" not in both
    assert "Loading weights" not in both
    assert "pid=" not in both  # Ray's "(Replica pid=...)" worker lines


def test_the_summary_is_the_last_thing_printed(console_run):
    lines = console_run["stdout"].rstrip("\n").splitlines()
    assert lines[0].startswith("snapshot ") and lines[-1].startswith("rows/s ")
    assert any(line.startswith("start-up ") and "ray_init" in line for line in lines)


def test_a_replica_warning_reaches_the_user_once_naming_the_replicas(console_run):
    stderr = console_run["stderr"]
    assert stderr.count("LOAD REPORT") == 1, stderr
    (line,) = [line for line in stderr.splitlines() if "LOAD REPORT" in line]
    assert line.startswith("fleet 'job:") and " replicas 0, 1: " in line
    assert "pooler.dense.weight | MISSING" in stderr


def test_the_report_says_where_start_up_went(console_run):
    report = console_run["report"]
    phases = report["startup_phases"]
    for phase in ("command", "lock", "plan", "ray_init", "fleet", "metadata", "shard_workers"):
        assert phases[phase] >= 0, phase
    for phase in ("replica", "imports", "model_load", "precision_guard"):
        assert f"fleet.{phase}" in phases
    assert phases["fleet.model_load"] > 0 and phases["fleet"] >= phases["fleet.replica"]
    # every phase that ran one after another, the command's own included: the summary's
    # start-up is what the user waited for
    one_after_another = ("command", "lock", "ray_init", "fleet", "shard_workers.after_fleet")
    assert report["startup_seconds"] >= sum(phases[phase] for phase in one_after_another) - 0.05
    assert report["seconds"] >= report["startup_seconds"] + report["finish_seconds"]
    assert report["embedded"] == DOCS


def test_the_driver_never_imports_torch(console_run):
    """The model runs on the replicas: the driver has no use for torch's import time."""
    assert console_run["driver_imported"] == "-"
