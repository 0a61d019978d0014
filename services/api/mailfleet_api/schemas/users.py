"""Users and API keys."""

from datetime import datetime
from typing import Annotated
from uuid import UUID

from limits import parse
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SecretStr,
    model_validator,
)

from mailfleet_api.auth import password_problem
from mailfleet_api.schemas.common import Body, CursorPage, EmailAddress, Name, Role


class UserCreate(Body):
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
    id: UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime


class UserPage(CursorPage[User]):
    """A page of users, oldest first."""


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
    name: Name
    # Defaults to the caller's role; never above it.
    role: Role | None = None
    rate_limit: KeyRate | None = Field(default=None, description=_KEY_RATE)


class ApiKey(BaseModel):
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


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The full key. Shown this once; only a hash is stored.")
