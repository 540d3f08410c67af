"""The plain-torch BERT encoder (``bert_encoder.py``): bitwise transformers' own last hidden
state, and every model it does not take loads through transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embedfleet.embedding_functions.local import bert_encoder, lean_model
from embedfleet.embedding_functions.local.lean_modules import LeanSentenceModel

TEXTS = [
    "hello world",
    "A longer sentence about vectors, with punctuation!",
    "word " * 300,  # past the 256 tokens the batch is cut to
    "ü Ünïcödé 中文 ",
]


@pytest.fixture(scope="module")
def bert_folder(tiny_model_dir: Path) -> Path:
    """The tiny model's Transformer module: a 2-layer random BERT saved by transformers."""
    return tiny_model_dir


def transformer_folder(model_dir: Path) -> Path:
    return model_dir if (model_dir / "config.json").is_file() else model_dir / "0_Transformer"


def reference_and_ours(folder: Path, dtype: torch.dtype):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    reference = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype).eval()
    ours = bert_encoder.load(folder, dtype)
    assert isinstance(ours, bert_encoder.BertEncoder)
    return tokenizer, reference, ours


def assert_same_states(tokenizer, reference, ours, batches) -> None:
    for batch in batches:
        inputs = dict(
            tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        )
        with torch.inference_mode():
            expected = reference(**inputs).last_hidden_state
            got = ours(**inputs).last_hidden_state
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected), (len(batch), (got - expected).abs().max())


@pytest.mark.real_model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_default_model_states_are_transformers_own(dtype):
    """Padded batches (a mask), unpadded ones (no mask), the eager attention of ONNX export."""
    from embedfleet.embedding_functions.local.models import packaged_default_model

    folder = transformer_folder(packaged_default_model())
    tokenizer, reference, ours = reference_and_ours(folder, dtype)
    batches = [TEXTS, TEXTS[:1], TEXTS[2:3]]
    assert_same_states(tokenizer, reference, ours, batches)
    reference.set_attn_implementation("eager")
    ours.set_attn_implementation("eager")
    assert_same_states(tokenizer, reference, ours, batches)


def test_a_random_bert_states_are_transformers_own(bert_folder):
    folder = transformer_folder(bert_folder)
    tokenizer, reference, ours = reference_and_ours(folder, torch.float32)
    assert_same_states(tokenizer, reference, ours, [TEXTS, TEXTS[:2]])
    assert ours.config.hidden_size == reference.config.hidden_size == 32
    with pytest.raises(ValueError, match="'sdpa' and 'eager'"):
        ours.set_attn_implementation("flash_attention_2")


def copy_of(bert_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(bert_folder, copy)
    return copy


def edit_config(folder: Path, **changes) -> None:
    path = transformer_folder(folder) / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(folder: Path, edit) -> None:
    path = transformer_folder(folder) / bert_encoder.WEIGHTS_FILE
    weights = load_file(str(path))
    save_file(edit(weights), str(path))


@pytest.mark.parametrize(
    "change",
    [
        lambda f: edit_config(f, position_embedding_type="relative_key"),
        lambda f: edit_config(f, hidden_act="gelu_new"),
        lambda f: edit_config(f, is_decoder=True),
        lambda f: edit_config(f, model_type="roberta"),
        lambda f: edit_config(f, chunk_size_feed_forward=4),
        lambda f: edit_config(f, attn_implementation="eager"),
        lambda f: edit_weights(f, lambda w: {f"bert.{k}": v for k, v in w.items()}),
        lambda f: edit_weights(
            f, lambda w: {**w, "encoder.layer.9.extra": w["pooler.dense.bias"].clone()}
        ),
        lambda f: edit_weights(
            f, lambda w: {k: v for k, v in w.items() if k != "embeddings.LayerNorm.bias"}
        ),
        lambda f: (transformer_folder(f) / bert_encoder.WEIGHTS_FILE).rename(
            transformer_folder(f) / "other.safetensors"
        ),
    ],
    ids=[
        "relative-positions",
        "other-activation",
        "decoder",
        "other-architecture",
        "chunked-feed-forward",
        "other-attention",
        "prefixed-names",
        "unknown-weight",
        "missing-weight",
        "no-single-weights-file",
    ],
)
def test_any_other_model_is_left_to_transformers(bert_folder, tmp_path, change):
    folder = copy_of(bert_folder, tmp_path)
    change(folder)
    assert bert_encoder.load(transformer_folder(folder), torch.float32) is None


def test_a_plain_model_runs_on_it_and_any_other_on_transformers(bert_folder, tmp_path):
    from embedfleet.embedding_functions.local.models import ModelSpec

    layout = lean_model.plain_layout(ModelSpec(str(bert_folder), None, "cpu", "fp32"))
    assert layout is not None
    model = lean_model.load(layout, "cpu", torch.float32)
    assert isinstance(model, LeanSentenceModel)
    assert isinstance(model[0].auto_model, bert_encoder.BertEncoder)

    other = copy_of(bert_folder, tmp_path)
    edit_weights(other, lambda w: {f"bert.{k}": v for k, v in w.items()})
    layout = lean_model.plain_layout(ModelSpec(str(other), None, "cpu", "fp32"))
    fallback = lean_model.load(layout, "cpu", torch.float32)
    assert type(fallback[0].auto_model).__name__ == "BertModel"
    features = model.preprocess(TEXTS)
    with torch.inference_mode():
        ours = model(dict(features))["sentence_embedding"]
        theirs = fallback(dict(features))["sentence_embedding"]
    assert torch.equal(ours, theirs)
