"""Loading a component's frozen config dataclass from a JSON file, with unknown keys refused."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["load_config"]

C = TypeVar("C")


def load_config(cls: type[C], path: Path) -> C:
    """``cls()`` with the fields a JSON object in ``path`` sets; ValueError naming unknown keys."""
    data: dict[str, Any] = json.loads(path.read_text())
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return replace(cls(), **data)  # type: ignore[type-var]
