"""Shared fixtures. Nothing here reaches the internet: the hub is switched off
before transformers is imported, and models are the packaged all-MiniLM-L6-v2
weights or tiny random BERTs built in a temp dir, and ONNX exports go to a temp
cache for the session."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ONNX exports and precision guard results of the session, never in the user's own
# cache; set before Ray starts so its workers share it.
os.environ["EMBEDFLEET_CACHE_DIR"] = tempfile.mkdtemp(prefix="embedfleet-test-cache-")
# Jobs whose spec leaves [fleet] mode unset run on Ray, as large jobs do (that is what
# most job tests check); tests/test_job_in_process.py and the README's command remove
# it and run small jobs the default way, in their own process.
os.environ.setdefault("EMBEDFLEET_FLEET_MODE", "ray")

from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_sentence_transformer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sentence-transformer (mean pooling, 32-d, 64 tokens max)
    with prompts named "query" and "passage"."""
    return build_tiny_sentence_transformer(
        tmp_path_factory.mktemp("tiny-model"),
        prompts={"query": "query: ", "passage": "passage: "},
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray instance for the session: 2 CPUs, 2 logical GPUs and 4 units of a
    custom node resource ``tagged_node`` (what ``ray start --resources`` gives a node)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            num_gpus=2,
            resources={"tagged_node": 4},
            include_dashboard=False,
            logging_level="ERROR",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _remove_the_sessions_export_cache():
    yield
    import shutil

    shutil.rmtree(os.environ["EMBEDFLEET_CACHE_DIR"], ignore_errors=True)
