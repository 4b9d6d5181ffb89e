"""Email as `.eml` files in a local folder: the email channel of embedded mode (no SMTP)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from smarttasks.notifications.channels.base import OutboundMessage, Result
from smarttasks.notifications.channels.mime import Composer, InvalidEmail, parse_mailbox


class EmlFileChannel:
    """Writes each email, exactly as it would be submitted, to `<folder>/<delivery-id>.eml`.

    Any mail client opens these files. The write is atomic (temporary file, then rename), so
    a reader never sees half an email; a retry overwrites the same file.
    """

    def __init__(self, folder: Path, *, sender: str, message_id_domain: str) -> None:
        self._folder = folder
        self._composer = Composer(sender=parse_mailbox(sender), message_id_domain=message_id_domain)

    async def send(self, message: OutboundMessage) -> Result:
        try:
            data = self._composer.compose(message).data
        except InvalidEmail as exc:
            return Result.permanent(f"cannot build the email: {exc}")
        path = self._folder / f"{message.delivery_id}.eml"
        try:
            await asyncio.to_thread(self._write, path, data)
        except OSError as exc:
            return Result.temporary(f"cannot write {path}: {exc}")
        return Result.sent(f"no SMTP server configured: written to {path}")

    def _write(self, path: Path, data: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".eml.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
