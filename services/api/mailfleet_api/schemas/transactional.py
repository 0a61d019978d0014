"""Transactional sends: POST /api/messages, its items and its answer."""

from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mailfleet_api.schemas.common import (
    MAX_NAME_CHARS,
    MAX_SUBJECT_CHARS,
    Body,
    EmailAddress,
    Tag,
    no_nul,
    single_line,
)

MAX_FILENAME_CHARS = 255

Subject = Annotated[
    str, Field(min_length=1, max_length=MAX_SUBJECT_CHARS), AfterValidator(single_line)
]
Text = Annotated[str, AfterValidator(no_nul)]


class AttachmentIn(Body):
    """One file, its content in base64 (standard alphabet, padded)."""

    filename: Annotated[str, Field(min_length=1, max_length=1000)]
    content_type: Annotated[str, Field(min_length=3, max_length=127)] = "application/octet-stream"
    content: Annotated[str, Field(min_length=0)]

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "filename": "invoice-1042.pdf",
                    "content_type": "application/pdf",
                    "content": "JVBERi0xLjQK",
                }
            ]
        },
    )


class TransactionalMessageIn(Body):
    """One message: its recipient, and what it says where the request's defaults won't do."""

    to: Annotated[str, Field(min_length=1, max_length=1000)]
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    subject: Subject | None = None
    html_body: Text | None = None
    text_body: Text | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    attachments: Annotated[list[AttachmentIn], Field(max_length=100)] = Field(default=[])

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "to": "ada@example.com",
                    "name": "Ada Lovelace",
                    "variables": {"code": "493 112"},
                }
            ]
        },
    )


class TransactionalRequest(Body):
    """Up to `max_messages` messages through one account, one pool, or every active account.

    `subject`, `html_body` and `text_body` are templates (the campaigns' sandboxed Jinja),
    rendered for each message with its `variables`, `email` and `name`; a message may give its
    own. Each message needs a subject and a body, its own or the request's.
    """

    account_id: UUID | None = Field(default=None, description="Send through this account.")
    pool: Tag | None = Field(default=None, description="Send through accounts with this tag.")
    subject: Subject | None = None
    html_body: Text | None = None
    text_body: Text | None = None
    reply_to: EmailAddress | None = None
    messages: Annotated[list[TransactionalMessageIn], Field(min_length=1)]

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "pool": "transactional",
                    "subject": "Your sign-in code",
                    "text_body": "Hello {{ name }}, your code is {{ code }}.",
                    "messages": [
                        {"to": "ada@example.com", "name": "Ada", "variables": {"code": "493 112"}}
                    ],
                }
            ]
        },
    )

    @model_validator(mode="after")
    def _one_route(self) -> "TransactionalRequest":
        if self.account_id is not None and self.pool is not None:
            raise ValueError("give account_id or pool, not both")
        return self


class QueuedMessage(BaseModel):
    index: int = Field(description="The message's position in the request, from 0.")
    id: int = Field(description="The message's id (GET /api/messages/{id}).")
    email: str


class RejectedMessage(BaseModel):
    index: int
    email: str
    reason: str


class TransactionalAccepted(BaseModel):
    """What was queued (202) and what was not, by position in the request."""

    stream_id: UUID = Field(
        description="The transactional stream (a campaign of kind 'transactional') the "
        "messages belong to: one per owner and account or pool."
    )
    accepted: int
    messages: list[QueuedMessage]
    rejected: list[RejectedMessage]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "stream_id": "6f1c2a52-3c1e-4d07-9a51-2b8f0f1f7f11",
                    "accepted": 1,
                    "messages": [{"index": 0, "id": 1042, "email": "ada@example.com"}],
                    "rejected": [{"index": 1, "email": "gone@example.com", "reason": "suppressed"}],
                }
            ]
        },
    )
