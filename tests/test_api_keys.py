"""API keys: read from the environment variable the config names, in the process that
sends; sent the way each provider expects; never in a config, a repr, an error
message or anything chained under it."""

from __future__ import annotations

import json
import traceback

import numpy as np
import pytest

pytest.importorskip("httpx")

from embedfleet.embedding_functions import OpenAIEmbeddingFunction, build
from embedfleet.errors import AuthenticationError, ConfigError, ProviderError
from tests.fakes import openai_api
from tests.fakes.providers import (  # noqa: F401 - fixtures
    CANARY,
    each_provider,
    each_provider_checking_keys,
    each_provider_with_defaults,
    make_fixture,
    only,
    server_fixture,
)
from tests.fakes.server import FakeServer, Fault


@each_provider
def test_the_key_comes_from_the_env_var_in_the_providers_header(provider, make, server):
    make()(["a"])
    headers = server.requests[0].headers
    assert headers[provider.auth_header] == provider.auth_value.format(key=CANARY)
    if provider.auth_header != "authorization":
        assert "authorization" not in headers


@each_provider
def test_a_missing_env_var_is_a_config_error_naming_it(provider, server, monkeypatch):
    monkeypatch.delenv("EMBEDFLEET_MISSING_KEY", raising=False)
    ef = provider.build(server.url, api_key_env_var="EMBEDFLEET_MISSING_KEY")
    with pytest.raises(ConfigError, match="set the environment variable EMBEDFLEET_MISSING_KEY"):
        ef(["a"])
    assert server.requests == []


@each_provider_with_defaults
def test_the_documented_default_env_var_and_api_base(provider):
    config = provider.cls().get_config()
    assert config["api_key_env_var"] == provider.default_env_var
    assert config["api_base"] == provider.default_api_base


@each_provider_checking_keys
def test_a_refused_key_is_an_authentication_error_naming_the_variable(
    provider, make, server, monkeypatch
):
    wrong = "sk-wrong-" + CANARY[::-1]
    monkeypatch.setenv(provider.env_var, wrong)
    with pytest.raises(AuthenticationError, match=f"check {provider.env_var}") as caught:
        make()(["a"])
    assert len(server.requests) == 1  # not retried
    assert wrong not in str(caught.value) and "***" in str(caught.value)  # the fake echoes it


@each_provider
def test_the_key_never_appears_in_config_repr_or_errors(provider, server):
    ef = provider.build(server.url, api_key=CANARY, api_key_env_var=None, max_retries=0)
    assert CANARY not in json.dumps(ef.get_config()) and CANARY not in repr(ef)
    echo = json.dumps({"error": {"message": f"bad key {CANARY}"}}).encode()
    server.faults.extend([Fault(401, echo), Fault(500, echo)])
    for error in (AuthenticationError, ProviderError):
        with pytest.raises(error) as caught:
            ef(["a"])
        assert CANARY not in str(caught.value) and "***" in str(caught.value)


@each_provider
def test_no_part_of_an_error_chain_holds_the_key(provider, make, server):
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {CANARY}"}}).encode()
    server.faults.append(Fault(401, echo))
    with pytest.raises(AuthenticationError) as caught:
        make()(["a"])
    assert CANARY not in "".join(traceback.format_exception(caught.value))


@each_provider
def test_config_round_trips_through_build_without_the_key(provider, make, server):
    ef = make()
    config = json.loads(json.dumps(ef.get_config()))
    assert CANARY not in json.dumps(config) and CANARY not in repr(ef)
    assert not [key for key in config if "key" in key.lower() and not key.endswith("_env_var")]
    rebuilt = build(provider.registry_name, config)
    assert type(rebuilt) is provider.cls and rebuilt.get_config() == ef.get_config()
    np.testing.assert_array_equal(np.stack(rebuilt(["x", "y"])), np.stack(ef(["x", "y"])))


def test_a_keyless_compatible_server_never_gets_the_openai_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)  # set for api.openai.com, not for this server
    server = FakeServer(openai_api.answer)
    try:
        ef = OpenAIEmbeddingFunction(api_base=f"{server.url}/v1", api_key_env_var=None)
        assert len(ef(["a"])) == 1
    finally:
        server.stop()
    assert CANARY not in server.requests[0].headers["authorization"]
