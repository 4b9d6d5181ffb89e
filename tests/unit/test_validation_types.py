"""Field types that keep unstorable text and ambiguous times out."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from smarttasks.core.validation import AwareIsoDatetime, StorableStr


class Model(BaseModel):
    text: StorableStr = ""
    when: AwareIsoDatetime | None = None


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "x\udfff"])
def test_unstorable_text_is_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        Model(text=text)


def test_unicode_is_fine() -> None:
    assert Model(text="日本語 🧑‍💻 עברית").text == "日本語 🧑‍💻 עברית"


@pytest.mark.parametrize("when", ["2030-01-01T10:00:00", 1893456000, 1.5, "2030-13-01T00:00Z"])
def test_ambiguous_or_invalid_times_are_refused(when: object) -> None:
    with pytest.raises(ValidationError):
        Model(when=when)


def test_offsets_are_kept() -> None:
    model = Model(when="2030-03-31T02:30:00+02:00")
    assert model.when is not None and model.when.utcoffset() is not None
