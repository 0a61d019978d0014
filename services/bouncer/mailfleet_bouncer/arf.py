"""RFC 5965 feedback reports (ARF): the fields of a complaint and which reports are complaints.

Like `mailfleet_bouncer.dsn`, this works on field blocks; the classifier finds them.

Feedback-Type decides: abuse, fraud, virus, other and any type we do not know are complaints
(a feedback loop sends reports about a recipient who objected). The pre-RFC opt-out (and
"unsubscribe") is a recipient's request to be removed, an unsubscribe, not a complaint: it
names the recipient in Removal-Recipient or Original-Rcpt-To. Two are not complaints either:
not-spam (RFC 6650, the recipient took the message *out* of the spam folder) and auth-failure
(RFC 6591, a DMARC/SPF/DKIM failure sample, about our authentication rather than about a
recipient). Those are classified "unrecognized" with the parser still "arf", so they are kept
and counted, and never suppress anyone.
"""

import re
from dataclasses import dataclass

from mailfleet_bouncer.dsn import Fields, recipient_address

_OPT_OUT = frozenset({"opt-out", "opt_out", "optout", "unsubscribe"})
_NOT_COMPLAINTS = {
    "not-spam": "feedback report of type not-spam: the recipient marked the message as not spam",
    "auth-failure": "feedback report of type auth-failure: an authentication failure sample",
}
# Providers replace the reporting recipient's address with a placeholder before sending.
_REDACTED = re.compile(r"^(?:redacted|anonymous|unknown|undisclosed[\w.-]*|[x*#]+)$")


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """The fields of a message/feedback-report part that the classifier uses."""

    feedback_type: str | None
    user_agent: str | None
    original_rcpt_to: tuple[str, ...]
    original_mail_from: str | None
    reported_domain: str | None
    source_ip: str | None


def parse_report(blocks: list[Fields]) -> FeedbackReport:
    """The report's fields; names are case-insensitive and Original-Rcpt-To may repeat."""
    first: dict[str, str] = {}
    recipients: list[str] = []
    for block in blocks:
        for name, value in block:
            key = name.lower()
            first.setdefault(key, value.strip())
            if key in {"original-rcpt-to", "removal-recipient"}:
                address = recipient_address(value)
                if address and not redacted(address) and address not in recipients:
                    recipients.append(address)
    feedback_type = first.get("feedback-type", "").split(";")[0].strip().lower() or None
    return FeedbackReport(
        feedback_type=feedback_type,
        user_agent=first.get("user-agent") or None,
        original_rcpt_to=tuple(recipients),
        original_mail_from=recipient_address(first.get("original-mail-from")),
        reported_domain=first.get("reported-domain") or None,
        source_ip=first.get("source-ip") or None,
    )


def not_a_complaint(feedback_type: str | None) -> str | None:
    """Why a report of this Feedback-Type is not a complaint, or None when it is one."""
    return _NOT_COMPLAINTS.get(feedback_type or "")


def is_opt_out(feedback_type: str | None) -> bool:
    """Whether a report of this Feedback-Type is a request to unsubscribe."""
    return feedback_type in _OPT_OUT


def redacted(address: str) -> bool:
    """Whether an address is a provider's placeholder for a redacted recipient."""
    local, _, domain = address.partition("@")
    return bool(_REDACTED.match(local)) or "redacted" in local or domain in {"redacted", ""}
