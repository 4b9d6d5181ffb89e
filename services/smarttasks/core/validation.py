"""Field types that keep hostile text out of PostgreSQL (NUL bytes, lone surrogates)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


StorableStr = Annotated[str, AfterValidator(_storable)]
"""A string PostgreSQL can store as `text`; anything else is a 422 naming the field."""
