"""Administration commands that talk to the database directly."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pydantic import ValidationError

from smarttasks.core.db import create_engine, create_sessionmaker, unit_of_work
from smarttasks.core.errors import Conflict
from smarttasks.gateway.embedded import open_database
from smarttasks.users import service
from smarttasks.users.passwords import PasswordHasher
from smarttasks.users.schemas import RegisterIn
from smarttasks.users.settings import UsersSettings


async def create_admin(
    *, email: str, password: str, display_name: str, data_dir: Path
) -> uuid.UUID:
    """Create an administrator in the configured database, or in the embedded one."""
    try:
        data = RegisterIn(email=email, password=password, display_name=display_name)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(reasons) from None
    settings = UsersSettings()
    url = os.environ.get("SMARTTASKS_DATABASE_URL") or open_database(data_dir.resolve()).url
    engine = create_engine(url, pool_size=1)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            user = await service.register(
                session,
                data=data,
                hasher=PasswordHasher(memory_kib=settings.password_memory_kib),
                is_admin=True,
            )
            return user.id
    except Conflict as exc:
        raise ValueError(exc.message) from None
    finally:
        await engine.dispose()
