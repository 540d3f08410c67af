"""Plain sentence-transformers models load with transformers alone (``lean_model.py``):
which models qualify, read from their files, and that their vectors and inputs are
sentence-transformers' own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from embedfleet.embedding_functions.local import lean_model
from embedfleet.embedding_functions.local.models import ModelSpec, load_uncached
from tests.tiny_models import build_tiny_sentence_transformer

TEXTS = ["hello world", "A longer sentence about vectors, with punctuation!", "word " * 90, "ü"]


@pytest.fixture(scope="module")
def tiny_normalized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(
        tmp_path_factory.mktemp("tiny-normalized"), normalize=True, prompts={"query": "q: "}
    )


def spec_of(folder: Path, **changes) -> ModelSpec:
    return replace(ModelSpec(str(folder), None, "cpu", "fp32"), **changes)


def edited(folder: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of ``folder`` with the JSON file ``name`` changed by ``edit(data)``."""
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    path = copy / name
    data = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(edit(data) or data))
    return copy


def test_plain_models_are_read_from_their_files(tiny_model_dir, tiny_normalized):
    layout = lean_model.plain_layout(spec_of(tiny_model_dir))
    assert layout is not None and (layout.pooling, layout.normalize) == ("mean", False)
    assert layout.prompts["query"] == "query: "
    assert lean_model.plain_layout(spec_of(tiny_normalized)).normalize


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("modules.json", lambda m: m.append({"path": "2_Dense", "type": "x.models.Dense"})),
        ("1_Pooling/config.json", lambda c: c.update(pooling_mode="lasttoken")),
        ("1_Pooling/config.json", lambda c: c.update(pooling_mode=["mean", "max"])),
        ("1_Pooling/config.json", lambda c: c.update(include_prompt=False)),
        ("sentence_bert_config.json", lambda c: c.update(do_lower_case=True)),
        ("sentence_bert_config.json", lambda c: c.update(transformer_task="text-generation")),
        ("config_sentence_transformers.json", lambda c: c.update(truncate_dim=16)),
    ],
)
def test_other_models_load_through_sentence_transformers(tiny_model_dir, tmp_path, name, edit):
    folder = edited(tiny_model_dir, tmp_path, name, edit)
    assert lean_model.plain_layout(spec_of(folder)) is None


def test_load_arguments_it_does_not_know_go_to_sentence_transformers(tiny_model_dir, monkeypatch):
    assert lean_model.plain_layout(spec_of(tiny_model_dir, trust_remote_code=True)) is None
    assert lean_model.plain_layout(spec_of(tiny_model_dir, pooling_include_prompt=False)) is None
    kwargs = spec_of(tiny_model_dir, model_kwargs_json='{"attn_implementation": "eager"}')
    assert lean_model.plain_layout(kwargs) is None
    monkeypatch.setenv(lean_model.FORCE_VARIABLE, "1")
    assert lean_model.plain_layout(spec_of(tiny_model_dir)) is None


def both(spec: ModelSpec, monkeypatch) -> tuple:
    lean = load_uncached(spec)
    with monkeypatch.context() as patched:
        patched.setenv(lean_model.FORCE_VARIABLE, "1")
        full = load_uncached(spec)
    assert type(lean).__name__ == "LeanSentenceModel"
    assert type(full).__name__ == "SentenceTransformer"
    return lean, full


def vectors(model, texts: list[str], prompt: str | None = None) -> np.ndarray:
    features = model.preprocess(texts, prompt=prompt)
    with torch.inference_mode():
        return model(features)["sentence_embedding"].float().numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_vectors_and_inputs_are_sentence_transformers_own(
    tiny_normalized, tmp_path, monkeypatch, pooling, precision
):
    folder = edited(
        tiny_normalized, tmp_path, "1_Pooling/config.json", lambda c: c.update(pooling_mode=pooling)
    )
    lean, full = both(spec_of(folder, precision=precision), monkeypatch)
    for prompt in (None, "q: "):
        expected = {k: v for k, v in full.preprocess(TEXTS, prompt=prompt).items()}
        got = lean.preprocess(TEXTS, prompt=prompt)
        for key, value in got.items():
            assert torch.equal(value, expected[key]), key
        np.testing.assert_array_equal(vectors(lean, TEXTS, prompt), vectors(full, TEXTS, prompt))
    assert lean.max_seq_length == full.max_seq_length == 64
    assert lean.get_embedding_dimension() == full.get_embedding_dimension()
    assert lean._resolve_prompt(None, "query") == full._resolve_prompt(None, "query")
    # one batch: sentence-transformers' encode sorts texts by length, so smaller batches
    # would pad differently (bf16 rounds the difference)
    np.testing.assert_allclose(lean.encode(TEXTS, batch_size=8), full.encode(TEXTS), atol=1e-6)


def test_a_set_max_seq_length_truncates_as_sentence_transformers_does(tiny_model_dir, monkeypatch):
    lean, full = both(spec_of(tiny_model_dir), monkeypatch)
    lean.max_seq_length = full.max_seq_length = 8
    np.testing.assert_array_equal(vectors(lean, TEXTS), vectors(full, TEXTS))


@pytest.mark.real_model
def test_the_default_model_embeds_without_importing_sentence_transformers(monkeypatch):
    """Nor transformers' BERT modeling code, in a fresh process (as a replica or an
    in-process job starts), with the same vectors as the model loaded through
    sentence-transformers."""
    script = (
        "import sys, json\n"
        "from embedfleet.embedding_functions import DefaultEmbeddingFunction\n"
        "ef = DefaultEmbeddingFunction(precision='fp32')\n"
        f"vectors = ef({TEXTS!r})\n"
        "print(json.dumps(['sentence_transformers' in sys.modules, type(ef.model).__name__,"
        " [v.tolist() for v in vectors], 'transformers.models.bert.modeling_bert' in sys.modules,"
        " type(ef.model[0].auto_model).__name__]))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    imported, kind, lean, modeling, encoder = json.loads(answer.stdout.strip().splitlines()[-1])
    assert (imported, kind) == (False, "LeanSentenceModel")
    assert (modeling, encoder) == (False, "BertEncoder")  # nor transformers' BERT code
    monkeypatch.setenv(lean_model.FORCE_VARIABLE, "1")
    full = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    imported, kind, reference, _, _ = json.loads(full.stdout.strip().splitlines()[-1])
    assert (imported, kind) == (True, "SentenceTransformer")
    np.testing.assert_array_equal(np.asarray(lean), np.asarray(reference))
