"""Opaque keyset cursors: a page continues after the last row seen, so rows are never repeated."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from smarttasks.core.errors import BadRequest


@dataclass(frozen=True)
class Cursor:
    sort: str
    value: datetime | None
    last_id: uuid.UUID

    def encode(self) -> str:
        raw = [self.sort, self.value.isoformat() if self.value else None, str(self.last_id)]
        return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, *, sort: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            sort_seen, value, last_id = json.loads(base64.urlsafe_b64decode(padded))
            cursor = cls(
                sort=str(sort_seen),
                value=datetime.fromisoformat(value) if value is not None else None,
                last_id=uuid.UUID(str(last_id)),
            )
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise BadRequest("cursor is not valid; pass `next_cursor` unchanged") from None
        if cursor.sort != sort:
            raise BadRequest("cursor belongs to another sort order; start again without it")
        return cursor
