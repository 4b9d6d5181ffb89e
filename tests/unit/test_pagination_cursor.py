"""Cursors survive a round trip and refuse tampering with a 400."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from smarttasks.core.errors import BadRequest
from smarttasks.tasks.pagination import Cursor


@pytest.mark.parametrize("value", [datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), None])
def test_round_trip(value: datetime | None) -> None:
    cursor = Cursor(sort="-due_at", value=value, last_id=uuid.uuid4())
    assert Cursor.decode(cursor.encode(), sort="-due_at") == cursor


@pytest.mark.parametrize("token", ["", "%%%", "bm90IGpzb24", "WzEsMl0", "WyJhIiwgbnVsbCwgIngiXQ"])
def test_garbage_is_a_bad_request(token: str) -> None:
    with pytest.raises(BadRequest):
        Cursor.decode(token, sort="created_at")


def test_a_cursor_only_continues_its_own_sort_order() -> None:
    token = Cursor(sort="created_at", value=None, last_id=uuid.uuid4()).encode()
    with pytest.raises(BadRequest, match="another sort"):
        Cursor.decode(token, sort="-created_at")
