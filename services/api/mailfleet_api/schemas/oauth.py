"""OAuth2 credentials of accounts: what is imported, and what is shown (never a secret)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mailfleet_api.schemas.common import Body, EmailAddress

Provider = Literal["google", "microsoft"]


class OAuthStatus(BaseModel):
    """How an OAuth2 account authenticates, and whether its grant still holds."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "provider": "google",
                    "credential": "refresh_token",
                    "subject": None,
                    "consent": "granted",
                    "access_token_expires_at": "2026-03-02T10:15:00Z",
                    "refreshed_at": "2026-03-02T09:15:01Z",
                }
            ]
        }
    )

    provider: Provider
    credential: Literal["refresh_token", "service_account"]
    subject: str | None = Field(
        description="The mailbox a service account acts as (domain-wide delegation)."
    )
    consent: Literal["granted", "needed"] = Field(
        description="needed: the provider refused the grant (revoked, expired, delegation "
        "withdrawn); the account was paused with reason 'consent needed'. Import new "
        "credentials, then resume the account."
    )
    access_token_expires_at: datetime | None
    refreshed_at: datetime | None


_SERVICE_ACCOUNT_FIELDS = ("type", "client_email", "private_key", "private_key_id")


class OAuthImport(Body):
    """A refresh token (Google or Microsoft), or a Google service-account key and its subject."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"provider": "microsoft", "refresh_token": "0.AXoA...refresh-token"},
                {
                    "provider": "google",
                    "service_account_key": {
                        "type": "service_account",
                        "client_email": "mailfleet@project.iam.gserviceaccount.com",
                        "private_key_id": "3f1c...",
                        "private_key": "-----BEGIN PRIVATE KEY-----\n...",
                        "token_uri": "https://oauth2.googleapis.com/token",
                    },
                    "subject": "news@example.com",
                },
            ]
        },
    )

    provider: Provider
    refresh_token: SecretStr | None = Field(default=None, min_length=1, max_length=8192)
    service_account_key: dict[str, Any] | None = Field(
        default=None, description="The JSON key file of a Google service account, as is."
    )
    subject: EmailAddress | None = Field(
        default=None, description="The Workspace mailbox the service account impersonates."
    )

    @field_validator("service_account_key")
    @classmethod
    def _a_service_account_key(cls, key: dict[str, Any] | None) -> dict[str, Any] | None:
        if key is None:
            return None
        missing = [f for f in _SERVICE_ACCOUNT_FIELDS if not isinstance(key.get(f), str)]
        if missing or key["type"] != "service_account":
            raise ValueError(f"not a service-account key file (missing: {', '.join(missing)})")
        return key

    @model_validator(mode="after")
    def _one_credential(self) -> "OAuthImport":
        if (self.refresh_token is None) == (self.service_account_key is None):
            raise ValueError("give either refresh_token or service_account_key")
        if self.service_account_key is not None:
            if self.provider != "google":
                raise ValueError("service accounts are Google's: provider must be google")
            if self.subject is None:
                raise ValueError("a service account needs the subject (mailbox) it acts as")
        elif self.subject is not None:
            raise ValueError("subject is only for a service account")
        return self


class ConsentStart(Body):
    """Which provider the mailbox's owner consents at, and the account to suggest there."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"provider": "google"},
                {"provider": "microsoft", "login_hint": "news@example.com"},
            ]
        }
    )

    provider: Provider
    login_hint: EmailAddress | None = Field(
        default=None,
        description="The account the provider's sign-in page suggests. Default: the "
        "account's mailbox (smtp_username, or from_email).",
    )


class ConsentStarted(BaseModel):
    """A consent URL for the mailbox's owner to open: single use, until expires_at."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "provider": "google",
                    "authorization_url": "https://accounts.google.com/o/oauth2/v2/auth?"
                    "response_type=code&client_id=1234.apps.googleusercontent.com&...",
                    "redirect_uri": "https://mailfleet.example.com/oauth/callback",
                    "expires_at": "2026-03-02T09:30:00Z",
                }
            ]
        }
    )

    provider: Provider
    authorization_url: str = Field(
        description="Open it in a browser signed in as the mailbox's owner (or an admin of "
        "its domain); it comes back to redirect_uri, which connects the account."
    )
    redirect_uri: str = Field(description="Must be registered with the provider's OAuth client.")
    expires_at: datetime
