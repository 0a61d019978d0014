"""Suppressions: scopes, reasons, filters, imports."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from mailfleet_api.schemas.common import (
    Body,
    CursorPage,
    EmailAddress,
    Moment,
    filled,
    no_nul,
    page_config,
    single_line,
)

SuppressionScope = Literal["global", "campaign"]
SuppressionReason = Annotated[
    str, Field(min_length=1, max_length=100), AfterValidator(single_line), AfterValidator(filled)
]
DEFAULT_SUPPRESSION_REASON = "manual"

_EXPIRES_AT = "When it stops applying; null: never."
_SUPPRESSION_CAMPAIGN = "The one campaign it applies to; null: every campaign."

_SUPPRESSION_EXAMPLE: dict[str, Any] = {
    "id": 7310,
    "email": "carol@example.net",
    "campaign_id": None,
    "reason": "asked by phone",
    "source": "api:user:3f1e9a52-7c4d-4b8e-a1f6-2d9c0e5b7a13",
    "created_at": "2025-03-14T09:12:00Z",
    "expires_at": None,
    "active": True,
}


class SuppressionCreate(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"email": "carol@example.net", "reason": "asked by phone"},
                {
                    "email": "dave@example.com",
                    "reason": "on leave",
                    "campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
                },
            ]
        }
    )

    email: EmailAddress
    reason: SuppressionReason = DEFAULT_SUPPRESSION_REASON
    campaign_id: UUID | None = Field(default=None, description=_SUPPRESSION_CAMPAIGN)
    # Range checked with the rest below, so an import row says "expires_at is out of range".
    expires_at: AwareDatetime | None = Field(default=None, description=_EXPIRES_AT)

    @model_validator(mode="after")
    def _expires_later(self) -> "SuppressionCreate":
        if self.expires_at is None:
            return self
        try:
            expires_at = self.expires_at.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None
        if expires_at <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return self


class Suppression(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUPPRESSION_EXAMPLE]})

    id: int
    email: str
    campaign_id: UUID | None = Field(description=_SUPPRESSION_CAMPAIGN)
    reason: str
    source: str | None = Field(
        description="What suppressed it: api:user:<id>, api:key:<id>, tracker:..., bouncer:..."
    )
    created_at: datetime
    expires_at: datetime | None = Field(description=_EXPIRES_AT)
    active: bool = Field(description="It applies now: it has not expired.")


class SuppressionAdded(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"suppression": _SUPPRESSION_EXAMPLE, "created": True, "cancelled": 2}]
        }
    )

    suppression: Suppression = Field(
        description="The stored entry, which may differ from the request: a permanent "
        "suppression is never shortened, a temporary one only lengthened."
    )
    created: bool = Field(description="False if the address was already suppressed.")
    cancelled: int = Field(description="Messages to the address that were cancelled.")


FilterText = Annotated[str, Field(min_length=1, max_length=320), AfterValidator(no_nul)]


class SuppressionFilter(BaseModel):
    """Filters of the suppression list and its export; all given must match."""

    email: FilterText | None = Field(
        default=None, description="This address exactly (case-insensitive)."
    )
    q: FilterText | None = Field(
        default=None, description="Addresses containing this (case-insensitive)."
    )
    reason: FilterText | None = None
    source: FilterText | None = Field(
        default=None, description="Sources starting with this, e.g. bouncer: or tracker:."
    )
    campaign_id: UUID | None = Field(default=None, description="Only this campaign's entries.")
    scope: SuppressionScope | None = Field(
        default=None, description="global: for every campaign; campaign: for one campaign."
    )
    active: bool | None = Field(default=None, description="true: not expired; false: expired.")
    created_after: Moment | None = Field(default=None, description="Created at or after.")
    created_before: Moment | None = Field(default=None, description="Created before.")

    @model_validator(mode="after")
    def _consistent_scope(self) -> "SuppressionFilter":
        if self.campaign_id is not None and self.scope == "global":
            raise ValueError("campaign_id and scope=global exclude each other")
        return self


class SuppressionPage(CursorPage[Suppression]):
    """A page of suppressions, newest first."""

    model_config = page_config(_SUPPRESSION_EXAMPLE, "MjAyNS0wMy0xNFQwOToxMjowMCswMDowMHw3MzEw")


_INVALID_ROW_EXAMPLE: dict[str, Any] = {
    "row": 14,
    "email": "bob@",
    "reason": "invalid email address",
}


class InvalidRow(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_INVALID_ROW_EXAMPLE]})

    row: int = Field(description="The row in the file, the header being row 1.")
    email: str | None
    reason: str


class SuppressionImport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dry_run": False,
                    "rows": 250,
                    "imported": 231,
                    "already_present": 15,
                    "repeated": 3,
                    "invalid_count": 1,
                    "invalid": [_INVALID_ROW_EXAMPLE],
                    "cancelled": 4,
                }
            ]
        }
    )

    dry_run: bool = Field(description="Nothing was stored: the figures say what would be.")
    rows: int = Field(description="Rows read, the header and blank lines left out.")
    imported: int = Field(description="Addresses newly suppressed.")
    already_present: int = Field(description="Valid rows whose address was already suppressed.")
    repeated: int = Field(description="Rows with the address and campaign of an earlier row.")
    invalid_count: int
    invalid: list[InvalidRow] = Field(description="The first invalid rows, with the reasons.")
    cancelled: int = Field(description="Messages to the imported addresses that were cancelled.")
