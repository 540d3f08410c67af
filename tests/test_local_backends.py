"""A local function's backend (torch or ONNX Runtime) is chosen from its ``backend``
setting once, in the process that runs the model, and chosen again where a pickled
function lands."""

from __future__ import annotations

import inspect
import pickle
import re

import pytest

from embedfleet.embedding_functions import SentenceTransformerEmbeddingFunction
from embedfleet.embedding_functions.local import backends, sentence_transformer
from embedfleet.embedding_functions.local.backends import OnnxBackend, TorchBackend


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFLEET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def choices(monkeypatch) -> list[str]:
    """The backends functions choose, in order."""
    chosen: list[str] = []

    def recording(backend, *arguments):
        chosen.append(backend)
        return backends.choose_backend(backend, *arguments)

    monkeypatch.setattr(sentence_transformer, "choose_backend", recording)
    return chosen


@pytest.mark.parametrize(("backend", "kind"), [("torch", TorchBackend), ("onnx", OnnxBackend)])
def test_the_backend_setting_picks_the_backend(tiny_model_dir, backend, kind):
    ef = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), backend=backend)
    assert type(ef.runner) is kind and ef.runner.name == backend


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_backend_is_chosen_once_per_function(tiny_model_dir, cache, choices, backend):
    ef = SentenceTransformerEmbeddingFunction(
        str(tiny_model_dir), backend=backend, precision="fp32", batch_size=2
    )
    ef.warm_up()
    ef(["a comet", "an orbit", "a nebula, further away"])
    ef.embed_query(["where is the comet"])
    ef.describe()
    assert choices == [backend]


def test_nothing_is_chosen_until_the_model_is_needed(tiny_model_dir, choices):
    ef = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), backend="onnx")
    rebuilt = SentenceTransformerEmbeddingFunction.build_from_config(ef.get_config())
    assert choices == [] and rebuilt._runner is None


def test_a_pickled_function_chooses_its_backend_again_where_it_lands(tiny_model_dir, choices):
    ef = SentenceTransformerEmbeddingFunction(str(tiny_model_dir), device="cpu", precision="fp32")
    ef.set_num_threads(1)  # what a fleet replica does first
    copy = pickle.loads(pickle.dumps(ef))
    assert copy._runner is None
    assert copy.runner is not ef.runner and copy.runner.threads == 1
    assert choices == ["torch", "torch"]


def test_the_function_never_asks_which_backend_it_holds():
    """One place maps the setting to a class (``backends``); the function only delegates."""
    source = inspect.getsource(sentence_transformer)
    assert not re.search(r"backend\s*[!=]=", source)
    imports = re.findall(r"^\s*(?:from|import) (\S+)", source, re.MULTILINE)
    assert not [name for name in imports if "onnx" in name or name.startswith("torch")]
