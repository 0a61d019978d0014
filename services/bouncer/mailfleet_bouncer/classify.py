"""What a message read from a sender account's mailbox is: `classify` never raises.

Decision order (the first that applies wins):

1. Parse (`mailfleet_bouncer.reading`, `mailfleet_bouncer.mime`): the stdlib parser with the
   compat32 policy, which never raises on bad headers and keeps raw 8-bit bytes; headers and
   parts are decoded leniently; a huge message is parsed from its beginning only, where what
   identifies a report always is.
2. Feedback report (RFC 5965 ARF): a message/feedback-report part, or report-type
   feedback-report -> "complaint", parser "arf" (opt-out reports: "unsubscribe"; not-spam and
   auth-failure reports: "unrecognized", see `mailfleet_bouncer.arf`). Hotmail's JMRP without
   a report part (the returned original carries X-HmXmrOriginalRecipient) -> "complaint".
3. Delivery status notification (RFC 3464): a message/delivery-status part (or its fields
   sent as text, when the MIME structure is broken) -> "bounce", parser "rfc3464". A report
   whose entries are all successes (delivered, relayed, expanded) is still a "bounce", with
   recipients whose bounce is None and a problem saying so: it is a delivery report, and
   nothing is to be done about it.
   These two come before the auto-reply checks: reports carry Auto-Submitted too.
4. An Amazon SES notification mailed through SNS (JSON) -> "bounce" or "complaint", "ses".
5. Read receipt (message/disposition-notification) -> "auto-reply".
6. Apple Mail's one-click unsubscribe (X-Apple-Unsubscribe) -> "unsubscribe", "apple".
7. Other bounces: only a message that looks like one (from MAILER-DAEMON, postmaster or a Mail
   Delivery System, X-Failed-Recipients, a bounce subject, or an empty Return-Path with no
   auto-reply header) goes to flufl.bounce -> "bounce", parser "flufl", and failing that to
   the addresses its notification names (`mailfleet_bouncer.plaintext`) -> "bounce", "text"
   (not on a bounce subject alone, unless it returns an original or has an empty
   Return-Path), so that a human reply quoting an address is never scanned. One that looks
   like a bounce but names no failed recipient is "unrecognized", unless all it had was an
   empty Return-Path (RFC 3834 auto-replies use one too) or a bounce subject (a person may
   write "not delivered").
8. Subject "unsubscribe <token>" (our mailto: List-Unsubscribe) -> "unsubscribe", "mailto";
   before the auto-reply checks, as some clients mark the message they send as generated.
9. Auto-reply by its headers (Auto-Submitted and kin) -> "auto-reply", "rfc3834"; by its
   subject only (out of office...) -> "auto-reply", "heuristic".
10. In-Reply-To, References or a reply subject -> "reply".
11. Anything else -> "unrecognized", parser "none", with the reason in `problem`.

Every failed recipient, whichever parser found it, is checked (`Reading.is_recipient`) and
judged hard or soft with its reason (`mailfleet_bouncer.verdict`).
"""

import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from mailfleet_bouncer import arf, autoreply, dsn, mime, plaintext, ses
from mailfleet_bouncer.reading import (
    MAX_ADDRESSES,
    UNSUBSCRIBE_SUBJECT,
    Reading,
    References,
)
from mailfleet_bouncer.verdict import BounceType, judge

__all__ = ["BounceType", "Classified", "Kind", "Recipient", "References", "classify"]

Kind = Literal["bounce", "complaint", "reply", "auto-reply", "unsubscribe", "unrecognized"]


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient a bounce or complaint is about.

    `address` is lower-cased and bare: a DSN's Original-Recipient (the address as we sent it)
    or else its Final-Recipient (where a forward or alias led); ARF's Original-Rcpt-To or else
    the returned message's To. `action` is the DSN Action (for flufl.bounce's findings:
    "failed" for its permanent failures, "delayed" for its temporary ones); `status` the RFC
    3463 code; `diagnostic` the unfolded Diagnostic-Code, at most 1000 characters; `bounce`
    hard, soft, or None for a complaint or an entry that is not a failure; `reason` why it is
    hard or soft (see `mailfleet_bouncer.verdict`).
    """

    address: str | None
    action: str | None
    status: str | None
    diagnostic: str | None
    bounce: BounceType | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Classified:
    """What a message is, what recognised it, and what it refers to."""

    kind: Kind
    parser: str
    recipients: tuple[Recipient, ...]
    references: References
    sender: str | None
    subject: str | None
    feedback_type: str | None = None
    unsubscribe_token: str | None = None
    problem: str | None = None


_PROBLEM_MAX = 1000
_NO_REFERENCES = References((), (), ())
_SUBJECT_MARKER = "bounce subject"

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_DSN_REPORTS = frozenset({"delivery-status", "global-delivery-status"})
_MDN_TYPES = frozenset(
    {"message/disposition-notification", "message/global-disposition-notification"}
)
_DELAYED = re.compile(
    r"delay|warning|not yet (?:been )?delivered|will (?:keep )?(?:try|retry)|still trying"
    r"|temporar",
    re.IGNORECASE,
)
_FEEDBACK_LINE = re.compile(r"^feedback-type[ \t]*:", re.I | re.M)
_RECIPIENT_LINE = re.compile(r"^(?:final|original)-recipient[ \t]*:", re.I | re.M)
_DAEMON_LOCAL = re.compile(
    r"mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|mdaemon|microsoftexchange[0-9a-f]{32}",
    re.IGNORECASE,
)
_DAEMON_NAME = re.compile(
    r"mail delivery (?:system|subsystem|service)|mailer[- ]daemon|mail administrator",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|failure notice|returned mail|mail delivery fail"
    r"|delivery (?:has )?fail|could not be delivered|not (?:been )?delivered|delivery problem"
    r"|delivery notification|delivery report|delayed mail|delivery delayed|non remis"
    r"|unzustellbar|nicht zustellbar|no se pudo entregar|non recapitabile|mail system error"
    r"|returned to sender|warning: could not send|メールエラー|エラー通知|配信エラー"
    r"|送信エラー|不達|配信不能",
    re.IGNORECASE,
)


def classify(raw: bytes, *, truncated: bool = False) -> Classified:
    """Classify one message; never raises, whatever the bytes.

    Args:
        raw: the message as read from the mailbox.
        truncated: the reader fetched only the beginning of a bigger message; it is
            classified from what is there, and `problem` says so.

    Returns:
        The classification; see the module docstring for the decision order.
    """
    try:
        return _Run(raw, truncated).classify()
    except Exception as exc:  # the contract: a message we cannot read is unrecognized
        problem = f"malformed: the classifier failed on this message ({type(exc).__name__})"
        return Classified("unrecognized", "none", (), _NO_REFERENCES, None, None, problem=problem)


class _Run(Reading):
    """One classification: what the message is, from what `Reading` found in it."""

    def classify(self) -> Classified:
        if not self.raw.strip():
            problem = "; ".join(["empty message", *self.notes.items])
            return Classified(
                "unrecognized", "none", (), _NO_REFERENCES, None, None, problem=problem
            )
        self.parse()
        return self._decide()

    def _decide(self) -> Classified:
        report_type = ""
        feedback: list[Message] = []
        status: list[Message] = []
        receipts: list[Message] = []
        for part in self.parts:
            if part.inside:
                continue
            if part.content_type == "multipart/report" and not report_type:
                report_type = mime.param(part.message, "report-type")
            elif part.content_type == "message/feedback-report":
                feedback.append(part.message)
            elif part.content_type in _DSN_TYPES:
                status.append(part.message)
            elif part.content_type in _MDN_TYPES:
                receipts.append(part.message)

        if (feedback or report_type == "feedback-report") and (
            complaint := self._complaint(feedback)
        ):
            return complaint
        if complaint := self._complaint_without_report():
            return complaint
        markers = self._bounce_markers(report_type)
        if (status or report_type in _DSN_REPORTS or markers) and (bounce := self._dsn(status)):
            return bounce
        if notice := self._ses():
            return notice
        if receipts or report_type == "disposition-notification":
            return self._receipt(receipts)
        if self._apple_unsubscribe():
            token = UNSUBSCRIBE_SUBJECT.fullmatch(self.subject or "")
            reason = "Apple Mail one-click unsubscribe (X-Apple-Unsubscribe)"
            return self.result(
                "unsubscribe",
                "apple",
                token=token.group(1) if token else None,
                reason=reason,
                own_first=True,
            )
        auto = autoreply.header_reason(self.headers)
        null_sender = any(v.strip() in {"", "<>"} for v in self.headers.get("return-path", []))
        if markers or (null_sender and auto is None):
            if bounce := self._flufl():
                return bounce
            # Reading a text for addresses takes a sign of a notice: an empty Return-Path alone
            # is also an auto-reply's (RFC 3834), a subject alone may be a person's "not
            # delivered"; either of them with a returned original, or both, will do.
            returned = self.returned() is not None
            other = [m for m in markers if m != _SUBJECT_MARKER]
            subject = _SUBJECT_MARKER in markers
            signs = bool(other) or (null_sender and (subject or returned)) or (subject and returned)
            if signs and (bounce := self._plain()):
                return bounce
        if markers and markers != [_SUBJECT_MARKER]:
            # A subject alone is not enough to stop a person's reply being one.
            reason = f"looks like a bounce ({', '.join(markers)}) but no failed recipient was found"
            return self.result("unrecognized", "none", reason=reason)
        if self.subject and (match := UNSUBSCRIBE_SUBJECT.fullmatch(self.subject)):
            return self.result("unsubscribe", "mailto", token=match.group(1), own_first=True)
        if auto is not None:
            return self.result("auto-reply", "rfc3834", own_first=True)
        if autoreply.subject_says_automatic(self.subject):
            return self.result("auto-reply", "heuristic", own_first=True)
        if (
            self.headers.get("in-reply-to")
            or self.headers.get("references")
            or autoreply.is_reply_subject(self.subject)
        ):
            return self.result("reply", "reply", own_first=True)
        reason = "no bounce, complaint, auto-reply, reply or unsubscribe markers"
        return self.result("unrecognized", "none", reason=reason, own_first=True)

    def _complaint(self, parts: list[Message]) -> Classified | None:
        blocks = [b for part in parts for b in mime.field_blocks(part, self.notes, merge=False)]
        if not blocks:
            text = next((t for t in self.texts() if _FEEDBACK_LINE.search(t)), None)
            blocks = dsn.parse_blocks(text) if text else []
        if not parts and not blocks:
            return None
        report = arf.parse_report(blocks)
        reason = arf.not_a_complaint(report.feedback_type)
        if reason is not None:
            return self.result(
                "unrecognized", "arf", feedback_type=report.feedback_type, reason=reason
            )
        if report.feedback_type is None:
            self.notes.add("malformed feedback report: no Feedback-Type")
        found = list(report.original_rcpt_to)
        if not found and self.returned() is not None:
            headers = self.returned_headers()
            # Hotmail's JMRP names the recipient in a header of its own when it redacts To.
            for name in ("x-hmxmroriginalrecipient", "to"):
                values = headers.get(name, [])
                found = [a for v in values for a in mime.addresses(v) if not arf.redacted(a)]
                if found:
                    break
        recipients = tuple(Recipient(a, None, None, None, None) for a in found[:MAX_ADDRESSES])
        if arf.is_opt_out(report.feedback_type):
            reason = f"feedback report of type {report.feedback_type}: a request to unsubscribe"
            return self.result(
                "unsubscribe",
                "arf",
                recipients=recipients,
                feedback_type=report.feedback_type,
                reason=reason,
            )
        return self.result(
            "complaint", "arf", recipients=recipients, feedback_type=report.feedback_type
        )

    def _dsn(self, parts: list[Message]) -> Classified | None:
        blocks = [b for part in parts for b in mime.field_blocks(part, self.notes, merge=True)]
        found = dsn.entries(blocks)
        if not found:
            for text in self.texts():
                if _RECIPIENT_LINE.search(text) and (found := dsn.entries(dsn.parse_blocks(text))):
                    break
        notice = "\n\n".join(self.texts())
        found = [
            dsn.refused_after_data(e) if e.address and self.after_data(notice, e.address) else e
            for e in found
        ]
        if not found:
            if parts:
                self.notes.add("malformed delivery report: no per-recipient fields")
            return None
        valid = [e for e in found if e.address is None or self.is_recipient(e.address)]
        if not valid:
            self.notes.add("delivery report naming no valid recipient address")
            return None
        failures = [entry for entry in valid if entry.bounce is not None]
        reason = None
        if not failures:
            reason = "delivery report without failures: no recipient failed or was delayed"
        recipients = tuple(
            Recipient(e.address, e.action, e.status, e.diagnostic, e.bounce, e.reason)
            for e in (failures or valid)[:MAX_ADDRESSES]
        )
        return self.result("bounce", "rfc3464", recipients=recipients, reason=reason)

    def _receipt(self, parts: list[Message]) -> Classified:
        ids = [
            found
            for part in parts
            for block in mime.field_blocks(part, self.notes, merge=False)
            for name, value in block
            if name.lower() == "original-message-id"
            for found in mime.message_ids(value)
        ]
        parser = "rfc3834" if autoreply.header_reason(self.headers) else "heuristic"
        reason = "read receipt (message/disposition-notification)"
        return self.result("auto-reply", parser, reason=reason, own_first=True, extra_ids=ids)

    def _flufl(self) -> Classified | None:
        mime.clean_headers(self.parts, self.notes)
        temporary, permanent = dsn.flufl_failures(self.message)
        if not temporary and not permanent:
            return None
        text = "\n\n".join(self.texts())
        lowered = text.lower()
        recipients: list[Recipient] = []
        for address, action in [(a, "failed") for a in permanent] + [
            (a, "delayed") for a in temporary
        ]:
            if self.is_recipient(address):
                after_data = self.after_data(text, address)
                only = len(permanent) + len(temporary) == 1
                recipients.append(_near(text, address, action, after_data, only=only))
        if not recipients:
            self.notes.add("flufl.bounce named no valid recipient address")
            return None
        # In the order the notification names them; any it does not name, last.
        recipients.sort(key=lambda r: (_position(lowered, r.address or ""), r.address or ""))
        return self.result("bounce", "flufl", recipients=tuple(recipients[:MAX_ADDRESSES]))

    def _plain(self) -> Classified | None:
        """A notification written for people: the addresses its text names (`plaintext`)."""
        text = plaintext.notification("\n\n".join(self.texts()))
        found = plaintext.candidates(text, self.is_recipient)
        if not found:
            # Some notices name no address (v5 sendmail's deferrals, Verizon's "no valid
            # recipients"): the returned original's only recipient is the one it is about.
            returned = self.references(False, []).original_recipients
            found = [a for a in returned if self.is_recipient(a)]
            if len(found) != 1:
                return None
        delayed = _DELAYED.search(self.subject or "") or _DELAYED.search(text[:2000])
        action = "delayed" if delayed else "failed"
        recipients = tuple(
            _near(text, address, action, self.after_data(text, address), only=len(found) == 1)
            for address in found[:MAX_ADDRESSES]
        )
        return self.result("bounce", "text", recipients=recipients)

    def _ses(self) -> Classified | None:
        """An Amazon SES notification mailed through SNS (`mailfleet_bouncer.ses`)."""
        texts = [t for t in self.texts() if '"notificationType"' in t]
        notice = ses.parse(texts[0]) if texts else None
        if notice is None:
            return None
        recipients: list[Recipient] = []
        for address, action, status, diagnostic in notice.recipients:
            bare = dsn.recipient_address(address)
            if bare is None or not self.is_recipient(bare):
                continue
            if notice.kind == "complaint":
                recipients.append(Recipient(bare, None, None, None, None))
                continue
            code = dsn.status_code(status, diagnostic)
            verdict = judge(action, code, diagnostic, address=bare)
            recipients.append(Recipient(bare, action, code, diagnostic, *verdict))
        if not recipients:
            return None
        ids = [i for v in notice.headers.get("message-id", []) for i in mime.message_ids(v)]
        if notice.kind == "complaint":
            return self.result(
                "complaint",
                "ses",
                recipients=tuple(recipients),
                feedback_type=notice.feedback_type,
                extra_ids=ids,
            )
        reason = None
        if notice.kind == "delivery":
            reason = "delivery report without failures: no recipient failed or was delayed"
        return self.result(
            "bounce", "ses", recipients=tuple(recipients), reason=reason, extra_ids=ids
        )

    def _complaint_without_report(self) -> Classified | None:
        """Hotmail's older JMRP: the complained-of message returned whole, with no report part.

        It is recognised by the header Hotmail adds to the returned copy, naming the recipient.
        """
        named = self.returned_headers().get("x-hmxmroriginalrecipient")
        if not named:
            return None
        found = [a for v in named for a in mime.addresses(v) if not arf.redacted(a)]
        recipients = tuple(Recipient(a, None, None, None, None) for a in found[:MAX_ADDRESSES])
        reason = "feedback loop report without a feedback-report part (X-HmXmrOriginalRecipient)"
        return self.result(
            "complaint", "arf", recipients=recipients, feedback_type="abuse", reason=reason
        )

    def _apple_unsubscribe(self) -> bool:
        flags = self.headers.get("x-apple-unsubscribe", [])
        return any(v.strip().lower() in {"true", "yes", "1"} for v in flags)

    def _bounce_markers(self, report_type: str) -> list[str]:
        markers: list[str] = []
        if report_type in _DSN_REPORTS:
            markers.append(f"report-type {report_type}")
        if self.headers.get("x-failed-recipients"):
            markers.append("X-Failed-Recipients")
        local = (self.sender or "").rpartition("@")[0]
        sender = " ".join(mime.decode_words(v, self.notes) for v in self.headers.get("from", []))
        if _DAEMON_LOCAL.fullmatch(local) or _DAEMON_NAME.search(sender):
            markers.append(f"from {self.sender or sender[:100]}")
        subject = self.subject or ""
        if (
            _BOUNCE_SUBJECT.search(subject)
            and not autoreply.is_reply_subject(subject)
            and not autoreply.subject_says_automatic(subject)
        ):
            markers.append(_SUBJECT_MARKER)
        return markers

    def result(
        self,
        kind: Kind,
        parser: str,
        *,
        recipients: tuple[Recipient, ...] = (),
        feedback_type: str | None = None,
        token: str | None = None,
        reason: str | None = None,
        own_first: bool = False,
        extra_ids: list[str] | None = None,
    ) -> Classified:
        references = self.references(own_first, extra_ids or [])
        problems = [reason] if reason else []
        problems += self.notes.items + mime.defects(self.parts, self.cut)
        return Classified(
            kind,
            parser,
            recipients,
            references,
            self.sender,
            self.subject,
            feedback_type,
            token,
            "; ".join(problems)[:_PROBLEM_MAX] or None,
        )


def _near(text: str, address: str, action: str, after_data: bool, *, only: bool) -> Recipient:
    """A recipient of a free-text bounce, with the code and diagnostic found near it."""
    status, diagnostic = dsn.status_near(text, address, only=only)
    verdict = judge(action, status, diagnostic, after_data=after_data, address=address)
    return Recipient(address, action, status, diagnostic, *verdict)


def _position(text: str, needle: str) -> int:
    index = text.find(needle) if needle else -1
    return index if index >= 0 else len(text)
