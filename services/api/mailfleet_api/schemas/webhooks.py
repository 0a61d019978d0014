"""Webhook endpoints, their deliveries and attempts, and replays."""

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mailfleet_api.schemas.common import (
    Body,
    CursorPage,
    Moment,
    no_nul,
    page_config,
    single_line,
)

WebhookEventType = Literal[
    "message.queued",
    "message.sent",
    "message.deferred",
    "message.failed",
    "message.uncertain",
    "message.opened",
    "message.clicked",
    "message.unsubscribed",
    "message.bounced",
    "message.complained",
    "message.replied",
    "account.paused",
    "account.resumed",
    "campaign.completed",
]
DeliveryStatus = Literal["pending", "delivered", "failed"]

_ENDPOINT_ID = "3f1c2a9e-6b7d-4e0f-9a51-2c8d7e6f5a40"
_URL_RULE = (
    "An absolute http or https URL, without user name or password, at most 2,000 characters."
)


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http or https URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password; authenticate by signature")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=2000, description=_URL_RULE),
    AfterValidator(no_nul),
    AfterValidator(_webhook_url),
]
EventTypes = Annotated[
    list[WebhookEventType],
    Field(min_length=1, max_length=20, description="The event types it receives."),
    AfterValidator(lambda types: sorted(set(types))),
]
Description = Annotated[str, Field(max_length=500), AfterValidator(single_line)]


class WebhookEndpointCreate(Body):
    url: WebhookUrl
    event_types: EventTypes
    description: Description = ""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/mailfleet",
                    "event_types": ["message.sent", "message.bounced"],
                    "description": "CRM sync",
                }
            ]
        },
    )


class WebhookEndpointUpdate(Body):
    """Any of: url, event_types, description, enabled (true re-enables a disabled endpoint)."""

    url: WebhookUrl | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    enabled: bool | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"enabled": True}, {"event_types": ["message.opened"]}]},
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> "WebhookEndpointUpdate":
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


_ENDPOINT_EXAMPLE: dict[str, Any] = {
    "id": _ENDPOINT_ID,
    "owner_id": "8b0e4f52-2d1a-4c3b-9f6e-7a5d4c3b2a10",
    "url": "https://hooks.example.com/mailfleet",
    "description": "CRM sync",
    "event_types": ["message.bounced", "message.sent"],
    "enabled": True,
    "disabled_reason": None,
    "disabled_at": None,
    "failing_since": None,
    "consecutive_failures": 0,
    "created_at": "2025-05-01T09:30:00Z",
    "updated_at": "2025-05-01T09:30:00Z",
}


class WebhookEndpoint(BaseModel):
    id: UUID
    owner_id: UUID
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(description="Why it was disabled; null while enabled.")
    disabled_at: datetime | None
    failing_since: datetime | None = Field(
        description="Start of its current run of failed attempts; null after a success."
    )
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(json_schema_extra={"examples": [_ENDPOINT_EXAMPLE]})


class WebhookEndpointCreated(WebhookEndpoint):
    """The endpoint, with its signing secret: shown this once (and again only when rotated)."""

    secret: str = Field(
        description="The Standard Webhooks signing secret (whsec_ and base64 of 24 bytes).",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_ENDPOINT_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]
        }
    )


class WebhookEndpointPage(CursorPage[WebhookEndpoint]):
    model_config = page_config(_ENDPOINT_EXAMPLE)


_DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": 1042,
    "endpoint_id": _ENDPOINT_ID,
    "webhook_id": "msg_88123",
    "event_type": "message.sent",
    "occurred_at": "2025-05-01T09:31:02.120000Z",
    "status": "delivered",
    "attempts": 1,
    "next_attempt_at": None,
    "last_status_code": 200,
    "last_error": None,
    "delivered_at": "2025-05-01T09:31:02.300000Z",
    "replay_of": None,
    "created_at": "2025-05-01T09:31:02.120000Z",
    "payload": {
        "type": "message.sent",
        "timestamp": "2025-05-01T09:31:02.120000Z",
        "data": {"message_id": 5, "email": "ann@example.com", "details": {}},
    },
}


class WebhookDelivery(BaseModel):
    """One event to one endpoint; webhook_id is the webhook-id header (the same on retries)."""

    id: int
    endpoint_id: UUID
    webhook_id: str
    event_type: str
    occurred_at: datetime
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="When it is tried next, if pending.")
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    replay_of: int | None = Field(description="The delivery this one replays.")
    created_at: datetime
    payload: dict[str, object]

    model_config = ConfigDict(json_schema_extra={"examples": [_DELIVERY_EXAMPLE]})


class WebhookDeliveryPage(CursorPage[WebhookDelivery]):
    model_config = page_config(_DELIVERY_EXAMPLE)


_ATTEMPT_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "delivery_id": 1042,
    "attempt": 1,
    "attempted_at": "2025-05-01T09:31:02.150000Z",
    "status_code": 503,
    "latency_ms": 41.2,
    "response": "Service Unavailable",
    "error": None,
}


class WebhookAttempt(BaseModel):
    """One HTTP request of a delivery: its answer, or the error before one."""

    id: int
    delivery_id: int
    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    response: str | None = Field(description="The start of the response body (4 kB at most).")
    error: str | None

    model_config = ConfigDict(json_schema_extra={"examples": [_ATTEMPT_EXAMPLE]})


class WebhookAttemptPage(CursorPage[WebhookAttempt]):
    model_config = page_config(_ATTEMPT_EXAMPLE)


class WebhookReplay(Body):
    """Send again the endpoint's events of a time range (of those types, if given)."""

    since: Moment = Field(description="Events that happened at or after this.")
    until: Moment = Field(description="Events that happened before this.")
    event_types: list[WebhookEventType] | None = Field(
        default=None, max_length=20, description="Only these; null: every type it receives."
    )
    only_failed: bool = Field(
        default=False, description="Only events whose last delivery to it failed."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"since": "2025-05-01T00:00:00Z", "until": "2025-05-02T00:00:00Z"}]
        },
    )

    @model_validator(mode="after")
    def _a_range(self) -> "WebhookReplay":
        if self.until <= self.since:
            raise ValueError("until must be after since")
        return self


class WebhookReplayQueued(BaseModel):
    queued: int = Field(description="Deliveries queued.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"queued": 120}]})
