"""Users and API keys."""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from limits import parse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from mailfleet_api.auth import password_problem
from mailfleet_api.schemas.common import Body, CursorPage, EmailAddress, Name, Role, page_config

_USER_EXAMPLE: dict[str, Any] = {
    "id": "3f1e9a52-7c4d-4b8e-a1f6-2d9c0e5b7a13",
    "email": "ops@example.com",
    "role": "operator",
    "disabled": False,
    "created_at": "2025-03-01T08:12:45Z",
}
_API_KEY_EXAMPLE: dict[str, Any] = {
    "id": "8a2d4c6e-1b3f-4a5c-9e7d-0f2b4d6a8c1e",
    "user_id": "3f1e9a52-7c4d-4b8e-a1f6-2d9c0e5b7a13",
    "name": "newsletter importer",
    "prefix": "5e0c9a1b7d24",
    "role": "operator",
    "created_at": "2025-03-02T10:00:00Z",
    "last_used_at": "2025-03-14T09:30:02Z",
    "revoked_at": None,
    "rate_limit": "600/minute",
}


class UserCreate(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "ops@example.com",
                    "password": "lantern orbit cobalt 77",
                    "role": "operator",
                }
            ]
        }
    )

    email: EmailAddress
    password: Annotated[
        SecretStr,
        Field(
            min_length=12,
            max_length=1024,
            description="At least 12 characters, not blank, and hard to guess (zxcvbn score 3+).",
        ),
    ]
    role: Role

    @model_validator(mode="after")
    def _strong_password(self) -> "UserCreate":
        problem = password_problem(self.password.get_secret_value(), self.email)
        if problem is not None:
            raise ValueError(problem)
        return self


class User(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_USER_EXAMPLE]})

    id: UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime


class UserPage(CursorPage[User]):
    """A page of users, oldest first."""

    model_config = page_config(_USER_EXAMPLE)


# A key's own rate: fixed windows of a second up to a day, so a key cannot be handed a budget
# it could spend at once and then wait weeks on.
MAX_KEY_RATE_WINDOW_S = 86_400


def _key_rate(value: str) -> str:
    if parse(value).get_expiry() > MAX_KEY_RATE_WINDOW_S:
        raise ValueError("the window is at most one day")
    return value


KeyRate = Annotated[
    str,
    Field(
        max_length=40,
        # One rate in the `limits` notation, stricter than what it parses ("1/0 minutes"
        # reads as 1/minute; "1/minute;5/hour" as its first rate only).
        pattern=r"^[1-9][0-9]{0,8}/([1-9][0-9]{0,4} )?(second|minute|hour|day)s?$",
        description="Requests per window, e.g. 600/minute, 50/second, 10000/day or "
        "100/15 minutes; counted instead of the server's default rate.",
    ),
    AfterValidator(_key_rate),
]
_KEY_RATE = "The key's own rate limit; null: the server's default (MAILFLEET_RATE_LIMIT__DEFAULT)."


class ApiKeyCreate(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "newsletter importer", "role": "operator", "rate_limit": "600/minute"}
            ]
        }
    )

    name: Name
    # Defaults to the caller's role; never above it.
    role: Role | None = None
    rate_limit: KeyRate | None = Field(default=None, description=_KEY_RATE)


class ApiKey(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_API_KEY_EXAMPLE]})

    id: UUID
    user_id: UUID
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    rate_limit: str | None = Field(default=None, description=_KEY_RATE)


class ApiKeyPage(CursorPage[ApiKey]):
    """A page of API keys, oldest first."""

    model_config = page_config(_API_KEY_EXAMPLE)


class ApiKeyCreated(ApiKey):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_API_KEY_EXAMPLE,
                    "last_used_at": None,
                    "key": "mf_5e0c9a1b7d24_q3Vb8Xk2LmN0pR7sT1uW4yZ6aC9dE5fG2hJ8kM0nP3r",
                }
            ]
        }
    )

    key: str = Field(description="The full key. Shown this once; only a hash is stored.")
