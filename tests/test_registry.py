"""Provider registry: names, lookups, config round-trips and entry points."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from embedfleet import EmbeddingFunction, embedding_functions
from embedfleet.embedding_functions import SentenceTransformerEmbeddingFunction, registry
from embedfleet.errors import ConfigError, RegistryError, UnknownProviderError
from embedfleet.testing import HashEmbeddingFunction

BUILT_IN = {"default", "hash", "instructor", "sentence_transformer"}
# Names chromadb 1.x registers for its own functions; a collection registers an
# embedding function under name(), so ours must never be one of these.
CHROMA_NAMES = {"default", "sentence_transformer", "instructor", "openai", "cohere", "jina"}


def config_for(name: str, tiny_model_dir) -> dict:
    """A config each built-in provider can embed with offline, quickly."""
    if name in ("sentence_transformer", "instructor"):
        return {"model_name": str(tiny_model_dir), "precision": "fp32"}
    if name == "default":
        return {"precision": "fp32"}
    return {}


def test_built_in_providers_are_listed():
    assert set(embedding_functions.names()) >= BUILT_IN


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_chroma_name_is_static_prefixed_and_not_chromas_own(name):
    cls = embedding_functions.get(name)
    assert cls.name() == f"embedfleet.{name}"
    assert isinstance(cls.__dict__["name"], staticmethod)
    assert cls.name() not in CHROMA_NAMES
    assert embedding_functions.get(cls.name()) is cls


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_config_round_trip_embeds_identically(name, tiny_model_dir):
    original = embedding_functions.build(name, config_for(name, tiny_model_dir))
    config = original.get_config()
    rebuilt = embedding_functions.build(name, json.loads(json.dumps(config)))
    assert type(rebuilt) is type(original)
    assert rebuilt.get_config() == config
    texts = ["a short text", "another, somewhat longer text about something"]
    np.testing.assert_array_equal(np.stack(original(texts)), np.stack(rebuilt(texts)))
    np.testing.assert_array_equal(
        np.stack(original.embed_query(texts)), np.stack(rebuilt.embed_query(texts))
    )


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_config_has_no_secret_looking_keys(name, tiny_model_dir):
    config = embedding_functions.build(name, config_for(name, tiny_model_dir)).get_config()
    assert not [key for key in config if "key" in key.lower() and not key.endswith("_env_var")]


def test_unknown_provider_names_the_known_ones():
    with pytest.raises(UnknownProviderError, match="no embedding function registered as 'nope'"):
        embedding_functions.get("nope")
    with pytest.raises(KeyError):
        embedding_functions.build("nope", {})


def test_unknown_config_key_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="colour"):
        embedding_functions.build("hash", {"colour": "blue"})


@pytest.mark.parametrize("name", embedding_functions.names())
def test_every_provider_refuses_an_unknown_config_key_naming_its_path_and_the_valid_ones(name):
    """Shared behaviour: a typo fails when the function is built, not when a replica runs."""
    with pytest.raises(ConfigError) as caught:
        embedding_functions.build(name, {"precison": "bf16"}, where="embedding.config")
    message = str(caught.value)
    assert message.startswith(f"embedding.config.precison: unknown key for provider {name!r}")
    assert "valid keys: " in message and "batch_size" in message


def test_sentence_transformer_passes_on_only_what_the_model_loader_takes(tiny_model_dir):
    config = {"model_name": str(tiny_model_dir), "attn_implementation": "eager"}
    built = embedding_functions.build("sentence_transformer", config)
    assert built.get_config()["attn_implementation"] == "eager"
    with pytest.raises(ConfigError, match=r"'precison': unknown key.*did you mean 'precision'"):
        SentenceTransformerEmbeddingFunction(str(tiny_model_dir), precison="bf16")
    with pytest.raises(ConfigError, match="set the dtype with precision="):  # its own hint
        embedding_functions.build("sentence_transformer", {**config, "torch_dtype": "bf16"})


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(RegistryError, match="'hash' is already registered"):

        @embedding_functions.register("hash")
        class Another(HashEmbeddingFunction):
            pass


def test_registering_a_non_embedding_function_is_an_error():
    with pytest.raises(RegistryError, match="must be an EmbeddingFunction subclass"):
        embedding_functions.register("not-a-function")(dict)


def write_plugin(root, package: str, entry_name: str, body: str) -> None:
    (root / f"{package}.py").write_text(textwrap.dedent(body))
    dist = root / f"{package}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{embedding_functions.ENTRY_POINT_GROUP}]\n{entry_name} = {package}:Plugin\n"
    )


@pytest.fixture
def fresh_entry_points(monkeypatch, tmp_path):
    """Let the registry scan entry points again, with tmp_path on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_providers", dict(registry._providers))
    yield tmp_path
    for module in [name for name in sys.modules if name.startswith("plugin_")]:
        del sys.modules[module]


def test_third_party_entry_point_is_found_by_name(fresh_entry_points):
    write_plugin(
        fresh_entry_points,
        "plugin_ok",
        "thirdparty",
        """
        from embedfleet.testing import HashEmbeddingFunction

        class Plugin(HashEmbeddingFunction):
            pass
        """,
    )
    cls = embedding_functions.get("thirdparty")
    assert cls.__name__ == "Plugin" and issubclass(cls, EmbeddingFunction)
    assert "thirdparty" in embedding_functions.names()
    assert len(embedding_functions.build("thirdparty", {"dimension": 4})(["x"])[0]) == 4


def test_broken_entry_point_is_a_registry_error(fresh_entry_points):
    write_plugin(fresh_entry_points, "plugin_broken", "broken", "raise RuntimeError('boom')\n")
    with pytest.raises(RegistryError, match=r"cannot load .* 'broken'.*boom"):
        embedding_functions.names()


def test_entry_point_clashing_with_a_built_in_is_an_error(fresh_entry_points):
    write_plugin(
        fresh_entry_points,
        "plugin_clash",
        "hash",
        """
        from embedfleet.testing import HashEmbeddingFunction

        class Plugin(HashEmbeddingFunction):
            pass
        """,
    )
    with pytest.raises(RegistryError, match="'hash' is already registered"):
        embedding_functions.names()


def test_list_is_kept_as_the_earlier_name_of_names():
    assert embedding_functions.list() == embedding_functions.names()
