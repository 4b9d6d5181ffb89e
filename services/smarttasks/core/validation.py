"""Field types that keep hostile text out of PostgreSQL (NUL bytes, lone surrogates)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator


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


def _iso_text_only(value: object) -> object:
    if isinstance(value, int | float):
        raise ValueError(
            "must be an ISO 8601 date-time with a UTC offset, e.g. 2030-01-01T09:00+01:00"
        )
    return value


AwareIsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text_only)]
"""A date-time given as ISO 8601 text with an offset; naive times and epoch numbers are refused."""
