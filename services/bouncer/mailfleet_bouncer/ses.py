"""Amazon SES notifications sent by e-mail (through SNS): a JSON document as the message body.

An account that sends through SES may have its bounce and complaint notifications mailed to
its own mailbox. The body is one JSON object with "notificationType" Bounce, Complaint or
Delivery; SNS wraps long lines with "!" and a newline, which is undone before parsing.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

_START = re.compile(r'\{\s*"notificationType"\s*:')
_WRAP = re.compile(r"!\r?\n ")
_MAX_RECIPIENTS = 20

# (address, action, status, diagnostic), as the notification gives them.
Entry = tuple[str, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Notice:
    """What one SES notification says: its type, recipients, and the original's headers."""

    kind: str  # "bounce", "complaint" or "delivery"
    permanent: bool
    feedback_type: str | None
    recipients: tuple[Entry, ...]
    headers: dict[str, list[str]]


def parse(text: str) -> Notice | None:
    """The notification in a body's text, or None when the text holds none."""
    match = _START.search(text)
    if match is None:
        return None
    try:
        document, _ = json.JSONDecoder().raw_decode(_WRAP.sub("", text[match.start() :]))
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    kind = str(document.get("notificationType", "")).lower()
    mail = _object(document.get("mail"))
    headers: dict[str, list[str]] = {}
    for header in _list(mail.get("headers")):
        item = _object(header)
        if isinstance(item.get("name"), str) and isinstance(item.get("value"), str):
            headers.setdefault(item["name"].lower(), []).append(item["value"])
    if kind == "bounce":
        bounce = _object(document.get("bounce"))
        permanent = bounce.get("bounceType") == "Permanent"
        recipients: tuple[Entry, ...] = tuple(
            (
                str(entry.get("emailAddress", "")),
                _text(entry.get("action")) or ("failed" if permanent else "delayed"),
                _text(entry.get("status")),
                _text(entry.get("diagnosticCode")),
            )
            for entry in map(_object, _list(bounce.get("bouncedRecipients")))
        )
        return Notice("bounce", permanent, None, recipients[:_MAX_RECIPIENTS], headers)
    if kind == "complaint":
        complaint = _object(document.get("complaint"))
        recipients = tuple(
            (str(entry.get("emailAddress", "")), None, None, None)
            for entry in map(_object, _list(complaint.get("complainedRecipients")))
        )
        feedback = _text(complaint.get("complaintFeedbackType")) or "abuse"
        return Notice("complaint", False, feedback, recipients[:_MAX_RECIPIENTS], headers)
    if kind == "delivery":
        delivery = _object(document.get("delivery"))
        response = _text(delivery.get("smtpResponse"))
        recipients = tuple(
            (str(address), "delivered", "2.0.0", response)
            for address in _list(delivery.get("recipients"))
        )
        return Notice("delivery", False, None, recipients[:_MAX_RECIPIENTS], headers)
    return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
