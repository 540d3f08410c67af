"""Which keys a provider's config may hold, checked once for every provider.

A config is the constructor's keyword arguments (``get_config()`` /
``build_from_config()``), so the valid keys are the constructor's keyword
parameters. A constructor that also takes ``**kwargs`` hands them on to something
else (an API provider's shared HTTP options, a local model's loader): the class
says which keys that accepts in :attr:`~.base.EmbeddingFunction.passthrough_config_keys`.
A key outside both is a typo: it fails here, naming the key's path and the valid
keys, before anything starts (not when a fleet replica loads the model).

A third-party class that takes ``**kwargs`` and declares nothing is not checked:
its own constructor is the only judge of what it accepts.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from embedfleet.errors import ConfigError

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def valid_config_keys(cls: type) -> tuple[frozenset[str], frozenset[str]] | None:
    """The keys ``cls``'s config may hold: its constructor's keywords, and the keys it
    hands on through ``**kwargs``; None where those cannot be known (``**kwargs`` and
    no ``passthrough_config_keys`` declared)."""
    parameters = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    named = frozenset(p.name for p in parameters if p.kind in _KEYWORD_KINDS and p.name != "self")
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return named, frozenset()
    passthrough = getattr(cls, "passthrough_config_keys", None)
    if passthrough is None:
        return None
    return named, frozenset(passthrough) - named


def check_config_keys(cls: type, config: dict[str, Any], *, where: str | None = "config") -> None:
    """Raise :class:`ConfigError` for the first key ``cls`` does not accept, naming its
    path (``where``.key; None: the key alone), the provider, a close match and every
    valid key."""
    keys = valid_config_keys(cls)
    if keys is None:
        return
    named, passthrough = keys
    unknown = sorted(str(key) for key in config if key not in named | passthrough)
    if not unknown:
        return
    key = unknown[0]
    provider = getattr(cls, "provider_name", "") or cls.__name__
    close = difflib.get_close_matches(key, sorted(named | passthrough), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    handed_on = (
        f"; also accepted (passed on): {', '.join(sorted(passthrough))}" if passthrough else ""
    )
    path = f"{where}.{key}" if where else repr(key)
    raise ConfigError(
        f"{path}: unknown key for provider {provider!r} ({cls.__name__}); "
        f"{hint}valid keys: {', '.join(sorted(named))}{handed_on}"
    )


def non_default(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` that differ from ``cls``'s constructor defaults (what
    tells two functions of one provider apart in a message)."""
    parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return {
        key: value
        for key, value in config.items()
        if key not in parameters or parameters[key].default != value
    }
