"""kopf's read-only body views as plain data, for the pure code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """Mappings to dicts and lists to lists, recursively (kopf hands out mapping views)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


__all__ = ["plain"]
