"""Suppressions: scopes, reasons, filters, imports."""

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
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
    single_line,
)

SuppressionScope = Literal["global", "campaign"]
SuppressionReason = Annotated[
    str, Field(min_length=1, max_length=100), AfterValidator(single_line), AfterValidator(filled)
]
DEFAULT_SUPPRESSION_REASON = "manual"

_EXPIRES_AT = "When it stops applying; null: never."
_SUPPRESSION_CAMPAIGN = "The one campaign it applies to; null: every campaign."


class SuppressionCreate(Body):
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
    pass


class InvalidRow(BaseModel):
    row: int = Field(description="The row in the file, the header being row 1.")
    email: str | None
    reason: str


class SuppressionImport(BaseModel):
    dry_run: bool = Field(description="Nothing was stored: the figures say what would be.")
    rows: int = Field(description="Rows read, the header and blank lines left out.")
    imported: int = Field(description="Addresses newly suppressed.")
    already_present: int = Field(description="Valid rows whose address was already suppressed.")
    repeated: int = Field(description="Rows with the address and campaign of an earlier row.")
    invalid_count: int
    invalid: list[InvalidRow] = Field(description="The first invalid rows, with the reasons.")
    cancelled: int = Field(description="Messages to the imported addresses that were cancelled.")
