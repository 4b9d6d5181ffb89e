"""Request and response bodies of the users service."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
)

from smarttasks.core.validation import StorableStr

MIN_PASSWORD_LENGTH = 10


def _time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name like Europe/Berlin)"
        ) from None
    return value


TimeZoneName = Annotated[
    StorableStr, Field(min_length=1, max_length=64), AfterValidator(_time_zone)
]
DisplayName = Annotated[StorableStr, Field(min_length=1, max_length=100)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: StorableStr = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    display_name: DisplayName

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "password": "correct horse battery",
                    "display_name": "Ada",
                }
            ]
        },
    )

    @field_validator("password")
    @classmethod
    def _not_the_email(cls, value: str, info: ValidationInfo) -> str:
        email = info.data.get("email")
        if isinstance(email, str) and value.strip().lower() == email.lower():
            raise ValueError("password must not be the email address")
        return value


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    display_name: str
    time_zone: str
    email_notifications: bool
    is_admin: bool
    created_at: datetime


class UserPatch(Strict):
    display_name: DisplayName | None = None
    time_zone: TimeZoneName | None = None
    email_notifications: bool | None = None


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class RefreshIn(Strict):
    refresh_token: StorableStr = Field(min_length=1, max_length=256)


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None = None
