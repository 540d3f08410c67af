"""Provider names -> classes: built-ins by decorator, third parties by entry point.

Built-in providers register with ``@register("name")``. Third-party packages
add an entry point in the group ``embedfleet.embedding_functions`` whose value
is their class; they are loaded the first time a name is looked up or listed.
When chromadb is imported, every registered class is also added to Chroma's own
registry under ``name()``, so Chroma can rebuild a persisted collection's function.
Registering a name twice is an error, never a silent overwrite.

The registry key (``"default"``) is what job specs and the CLI use. The
Chroma-facing ``name()`` is the key prefixed with ``embedfleet.``, so an
embedfleet class can never replace one of Chroma's own registry entries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from embedfleet.embedding_functions.base import (
    CHROMA_REGISTRY_MODULE,
    EmbeddingFunction,
    make_known_to_chroma,
)
from embedfleet.embedding_functions.config_keys import check_config_keys
from embedfleet.errors import MissingDependencyError, RegistryError, UnknownProviderError

ENTRY_POINT_GROUP = "embedfleet.embedding_functions"
CHROMA_NAME_PREFIX = "embedfleet."

_providers: dict[str, type[EmbeddingFunction]] = {}
_entry_points_loaded = False
_lock = threading.RLock()

T = TypeVar("T", bound=type[EmbeddingFunction])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a provider available under ``name``."""

    def decorate(cls: T) -> T:
        _add(name, cls)
        return cls

    return decorate


def _add(name: str, cls: type[EmbeddingFunction]) -> None:
    if not isinstance(cls, type) or not issubclass(cls, EmbeddingFunction):
        raise RegistryError(f"provider {name!r} must be an EmbeddingFunction subclass, got {cls!r}")
    with _lock:
        existing = _providers.get(name)
        if existing is not None and existing is not cls:
            raise RegistryError(
                f"provider name {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        chroma_name = CHROMA_NAME_PREFIX + name
        cls.provider_name = name
        cls.name = staticmethod(lambda: chroma_name)  # type: ignore[method-assign]
        _providers[name] = cls
    make_known_to_chroma(cls)


def register_with_chroma() -> None:
    """Make every embedfleet provider known to Chroma (imports chromadb).

    Needed only to reopen a persisted collection *without* passing an
    embedding function when chromadb was imported after embedfleet and no
    embedfleet function was created yet; otherwise registration is automatic.
    """
    try:
        __import__(CHROMA_REGISTRY_MODULE)
    except ImportError as exc:
        raise MissingDependencyError(
            "register_with_chroma needs chromadb: pip install chromadb"
        ) from exc
    for cls in _all_providers():
        make_known_to_chroma(cls)


def _all_providers() -> list[type[EmbeddingFunction]]:
    _load_entry_points()
    with _lock:
        return [*_providers.values()]


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = entry_point.load()
            except Exception as exc:
                raise RegistryError(
                    f"cannot load embedding function entry point {entry_point.name!r} "
                    f"({entry_point.value}): {exc}"
                ) from exc
            _add(entry_point.name, cls)


def get(name: str) -> type[EmbeddingFunction]:
    """The provider class registered as ``name`` (Chroma's ``embedfleet.`` name works too)."""
    key = name.removeprefix(CHROMA_NAME_PREFIX) if isinstance(name, str) else name
    with _lock:
        if key not in _providers:
            _load_entry_points()
        try:
            return _providers[key]
        except KeyError:
            known = ", ".join(sorted(_providers))
            raise UnknownProviderError(
                f"no embedding function registered as {name!r}; known: {known}"
            ) from None


def build(
    name: str, config: dict[str, Any] | None = None, *, where: str = "config"
) -> EmbeddingFunction:
    """Build provider ``name`` from a config (as returned by ``get_config()``). A key the
    provider does not take is a ``ConfigError`` naming its path (``where``.key, e.g.
    ``embedding.config.precison`` in a job spec) and the provider's valid keys."""
    cls = get(name)
    config = dict(config or {})
    check_config_keys(cls, config, where=where)
    return cls.build_from_config(config)


def names() -> list[str]:
    """Every registered provider name, sorted."""
    _load_entry_points()
    with _lock:
        return sorted(_providers)
