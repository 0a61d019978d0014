"""Login request and access token."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from mailfleet_api.schemas.common import Body


class LoginRequest(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "admin@example.com", "password": "plum tractor violet 42"}]
        }
    )

    email: Annotated[str, Field(max_length=320)]
    password: Annotated[str, Field(max_length=1024)]


class AccessToken(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIzZjFlOWE1Mi"
                    "J9.Hq4dC2eN1m6hR0vY8pX3kS7tW5uZ9aB1cD4eF6gH8iJ",
                    "token_type": "bearer",
                    "expires_at": "2025-03-14T10:30:00Z",
                    "expires_in": 3600,
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type
    expires_at: datetime
    expires_in: int
