"""Users and API keys."""

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    model_validator,
)

from mailfleet_api.auth import password_problem
from mailfleet_api.schemas.common import Body, EmailAddress, Name, Role


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


class ApiKeyCreate(Body):
    name: Name
    # Defaults to the caller's role; never above it.
    role: Role | None = None


class ApiKey(BaseModel):
    id: UUID
    user_id: UUID
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The full key. Shown this once; only a hash is stored.")
