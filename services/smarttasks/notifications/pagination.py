"""Opaque keyset cursors over (created_at, id), newest first: no row is repeated or skipped."""

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
    created_at: datetime
    last_id: uuid.UUID

    def encode(self) -> str:
        raw = [self.created_at.isoformat(), str(self.last_id)]
        return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            created_at, last_id = json.loads(base64.urlsafe_b64decode(padded))
            cursor = cls(datetime.fromisoformat(created_at), uuid.UUID(str(last_id)))
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise BadRequest("cursor is not valid; pass `next_cursor` unchanged") from None
        if cursor.created_at.tzinfo is None:
            raise BadRequest("cursor is not valid; pass `next_cursor` unchanged")
        return cursor
