"""Settings of the API service and the mailfleet CLI."""

from mailfleet_common.settings import (
    CryptoSettings,
    HttpSettings,
    ServiceSettings,
    TemplateSettings,
)
from pydantic import BaseModel, Field, SecretStr

MIN_JWT_SECRET_LENGTH = 32


class AuthSettings(BaseModel):
    """Login tokens.

    ``jwt_secret`` (MAILFLEET_AUTH__JWT_SECRET) must hold at least 32 characters. Only when
    ``dev_ephemeral_secret`` is set may it be empty: the API then signs with a random secret
    made at start-up, so tokens die with the process and no known secret ever signs one.
    """

    jwt_secret: SecretStr = SecretStr("")
    dev_ephemeral_secret: bool = False
    token_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)


class EnqueueSettings(BaseModel):
    max_recipients: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_variables_bytes: int = Field(default=8 * 1024, ge=2)


class Settings(ServiceSettings):
    """MAILFLEET_POSTGRES__DSN, MAILFLEET_RABBIT__URL, MAILFLEET_AUTH__JWT_SECRET, ..."""

    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    crypto: CryptoSettings = CryptoSettings()
    enqueue: EnqueueSettings = EnqueueSettings()
    templates: TemplateSettings = TemplateSettings()
