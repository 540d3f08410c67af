"""Reading a model folder's small JSON files (configs, ``modules.json``), where absent or
broken means empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} where the file is missing, unreadable or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_modules(folder: Path) -> list[tuple[str, str]]:
    """``(type, path)`` of each module in ``folder``'s ``modules.json``, in order; [] where
    the file is missing or not a list of modules."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        return [(str(module["type"]), str(module.get("path", ""))) for module in modules]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
