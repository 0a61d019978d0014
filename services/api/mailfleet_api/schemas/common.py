"""Shapes every resource shares: validated strings, timestamps, tags, pages."""

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
)

Role = Literal["admin", "operator", "viewer"]
SmtpTls = Literal["implicit", "starttls", "none"]
AccountStatus = Literal["active", "paused", "disabled", "archived"]
SettableAccountStatus = Literal["active", "paused", "disabled"]
CampaignStatus = Literal["draft", "running", "paused", "cancelled", "completed"]
UnsubscribeScope = Literal["global", "campaign"]
InboundKind = Literal["bounce", "complaint", "reply", "auto-reply", "unsubscribe", "unrecognized"]

MAX_SUBJECT_CHARS = 998  # RFC 5322 2.1.1: a header line is at most 998 characters
MAX_NAME_CHARS = 200
MAX_BODY_BYTES = 512 * 1024

T = TypeVar("T")


def single_line(value: str) -> str:
    # A CR or LF in anything that ends up in a header would let a caller inject headers.
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF")
    return no_nul(value)


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")  # PostgreSQL text cannot hold NUL
    return value


def filled(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _in_utc_range(value: datetime) -> datetime:
    # 0001-01-01T00:00+14:00 is a valid timestamp that falls before year 1 in UTC, where the
    # database driver compares it: refused here rather than failing there.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value


def _email_address(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address: {exc}") from exc


SingleLine = Annotated[str, AfterValidator(single_line)]
# A timestamp with an offset, within the range of datetime once in UTC.
Moment = Annotated[AwareDatetime, AfterValidator(_in_utc_range)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(single_line)]
SmtpUsername = Annotated[str, Field(max_length=320), AfterValidator(single_line)]
EmailAddress = Annotated[str, Field(max_length=320), AfterValidator(_email_address)]

MAX_TAGS = 32
TAG_PATTERN = r"^[a-z0-9][a-z0-9._:-]*$"
TAG_RULE = (
    "Lowercase letters, digits and . _ : - (starting with a letter or digit), at most 63 "
    "characters."
)
Tag = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=TAG_PATTERN, description=TAG_RULE),
]


def _tag_set(tags: list[str]) -> list[str]:
    return sorted(set(tags))


# Stored sorted and without repeats.
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_tag_set)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CursorPage(BaseModel, Generic[T]):
    """A page of a list read newest first; the next one starts after its last item."""

    items: list[T]
    limit: int
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")


def page_config(item: dict[str, Any], next_cursor: str | None = None) -> ConfigDict:
    """The model_config of a concrete page, its example holding `item`.

    With a `next_cursor`, a full page of one (limit 1); without, the last page of a list.
    """
    page: dict[str, Any] = {
        "items": [item],
        "limit": 1 if next_cursor else 50,
        "next_cursor": next_cursor,
    }
    return ConfigDict(json_schema_extra={"examples": [page]})
