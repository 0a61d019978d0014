"""What a message read from a sender account's mailbox is: `classify` never raises.

Decision order (the first that applies wins):

1. Parse (`mailfleet_bouncer.mime`): the stdlib parser with the compat32 policy, which never
   raises on bad headers and keeps raw 8-bit bytes; headers and parts are decoded leniently;
   a huge message is parsed from its beginning only, where what identifies a report always is.
2. Feedback report (RFC 5965 ARF): a message/feedback-report part, or report-type
   feedback-report -> "complaint", parser "arf" (not-spam and auth-failure reports:
   "unrecognized", see `mailfleet_bouncer.arf`).
3. Delivery status notification (RFC 3464): a message/delivery-status part (or its fields
   sent as text, when the MIME structure is broken) -> "bounce", parser "rfc3464". A report
   whose entries are all successes (delivered, relayed, expanded) is still a "bounce", with
   recipients whose bounce is None and a problem saying so: it is a delivery report, and
   nothing is to be done about it.
   These two come before the auto-reply checks: reports carry Auto-Submitted too.
4. Read receipt (message/disposition-notification) -> "auto-reply".
5. Other bounces: only a message that looks like one (from MAILER-DAEMON, postmaster or a Mail
   Delivery System, X-Failed-Recipients, a bounce subject, or an empty Return-Path with no
   auto-reply header) goes to flufl.bounce -> "bounce", parser "flufl", so that a human reply
   quoting an address is never scanned. One that looks like a bounce but names no failed
   recipient is "unrecognized", unless all it had was an empty Return-Path (RFC 3834
   auto-replies use one too) or a bounce subject (a person may write "not delivered").
6. Subject "unsubscribe <token>" (our mailto: List-Unsubscribe) -> "unsubscribe", "mailto";
   before the auto-reply checks, as some clients mark the message they send as generated.
7. Auto-reply by its headers (Auto-Submitted and kin) -> "auto-reply", "rfc3834"; by its
   subject only (out of office...) -> "auto-reply", "heuristic".
8. In-Reply-To, References or a reply subject -> "reply".
9. Anything else -> "unrecognized", parser "none", with the reason in `problem`.
"""

import itertools
import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal
from urllib.parse import unquote, urlsplit

from mailfleet_bouncer import arf, autoreply, dsn, mime, plaintext, ses, verdict
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
class References:
    """What ties a message to one we sent.

    `message_ids` ("<local@domain>", case kept): for reports, the returned original's first,
    then the report's own In-Reply-To and References; for everything else the other way round;
    References nearest first; "Message-ID:" lines in the text when nothing else gave one.
    `unsubscribe_tokens`: from the returned List-Unsubscribe header (the last path segment
    after "/unsubscribe/" of a web URL, the token of a mailto: "subject=unsubscribe%20<token>").
    `original_recipients`: the returned original's To addresses, lower-cased.
    """

    message_ids: tuple[str, ...]
    unsubscribe_tokens: tuple[str, ...]
    original_recipients: tuple[str, ...]


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


_SUBJECT_MAX = 500
_PROBLEM_MAX = 1000
_MAX_IDS = 20
_MAX_ADDRESSES = 20
_INLINE_TRIES = 5
_NO_REFERENCES = References((), (), ())
_SUBJECT_MARKER = "bounce subject"

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_DSN_REPORTS = frozenset({"delivery-status", "global-delivery-status"})
_MDN_TYPES = frozenset(
    {"message/disposition-notification", "message/global-disposition-notification"}
)
_RETURNED_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,200}")
_UNSUBSCRIBE_SUBJECT = re.compile(
    r"\s*unsubscribe(?:\s+|%20)([A-Za-z0-9_-]{16,200})\s*", re.IGNORECASE
)
_INLINE_ID = re.compile(r"^[ \t>]*message-id[ \t]*:[ \t]*\r?\n?[ \t]*(<[^<>\s]+>)", re.I | re.M)
# A returned part whose MIME structure the parser missed (a boundary that does not match).
_INLINE_PART = re.compile(
    r"^content-type:[ \t]*(?:message/(?:rfc822|global|global-headers)|text/rfc822-headers)\b"
    r".*?\r?\n[ \t]*\r?\n",
    re.I | re.M | re.S,
)
_DELAYED = re.compile(
    r"delay|warning|not yet (?:been )?delivered|will (?:keep )?(?:try|retry)|still trying"
    r"|temporar",
    re.IGNORECASE,
)
# A transcript where the server refused the DATA command or the message after it: sendmail's
# ">>> DATA" then "<<< 550 ...", mFILTER's "SMTP command" section. With PIPELINING the
# replies to RCPT TO come after ">>> DATA" too, and then a "503" (no valid recipients)
# answers the DATA itself: that is a refusal at RCPT TO.
_REFUSED_AFTER_DATA = re.compile(
    r"^[ \t]*>>>[ \t]*data[ \t]*\r?\n(?:[ \t]*(?:<<<[ \t]*[23]\d\d|>>>[ \t]*\.)[^\n]*\n)*"
    r"[ \t]*<<<[ \t]*5\d\d"
    r"(?![^\n]*\n(?:[^\n]*\n)?[ \t]*<<<[ \t]*503)"
    r"|^-+ ?smtp command\s*\n\s*data\b",
    re.IGNORECASE | re.MULTILINE,
)
_FEEDBACK_LINE = re.compile(r"^feedback-type[ \t]*:", re.I | re.M)
_RECIPIENT_LINE = re.compile(r"^(?:final|original)-recipient[ \t]*:", re.I | re.M)
_TAG = re.compile(r"<[^<>]*>")
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


class _Run:
    """One classification: the parsed message and what was noticed along the way."""

    message: Message
    parts: list[mime.Part]
    headers: dict[str, list[str]]
    sender: str | None
    subject: str | None

    def __init__(self, raw: bytes, truncated: bool) -> None:
        self.raw = raw
        self.notes = mime.Notes()
        self.cut = truncated
        if truncated:
            self.notes.add(f"truncated: classified from the first {len(raw)} bytes fetched")
        self._texts: list[str] | None = None
        self._returned: Message | None = None
        self._returned_done = False
        self._own_addresses: set[str] | None = None

    def classify(self) -> Classified:
        if not self.raw.strip():
            problem = "; ".join(["empty message", *self.notes.items])
            return Classified(
                "unrecognized", "none", (), _NO_REFERENCES, None, None, problem=problem
            )
        self.message, cut = mime.parse(self.raw, self.notes)
        self.cut = self.cut or cut
        self.parts = mime.walk(self.message)
        mime.prune(self.parts)
        self.headers = mime.headers(self.message, self.notes)
        self.sender = next(iter(mime.addresses(", ".join(self.headers.get("from", [])))), None)
        subject = self.headers.get("subject")
        self.subject = (
            " ".join(mime.decode_words(subject[0], self.notes).split())[:_SUBJECT_MAX]
            if subject
            else None
        )
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
            token = _UNSUBSCRIBE_SUBJECT.fullmatch(self.subject or "")
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
            # A subject alone is not enough to read a message's text for addresses: a person
            # may write "not delivered"; a returned original or a null sender makes it a notice.
            if (markers != [_SUBJECT_MARKER] or null_sender or self.returned() is not None) and (
                bounce := self._plain()
            ):
                return bounce
        if markers and markers != [_SUBJECT_MARKER]:
            # A subject alone is not enough to stop a person's reply being one.
            reason = f"looks like a bounce ({', '.join(markers)}) but no failed recipient was found"
            return self.result("unrecognized", "none", reason=reason)
        if self.subject and (match := _UNSUBSCRIBE_SUBJECT.fullmatch(self.subject)):
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
        returned = self.returned()
        if not found and returned is not None:
            headers = mime.headers(returned, self.notes)
            # Hotmail's JMRP names the recipient in a header of its own when it redacts To.
            for name in ("x-hmxmroriginalrecipient", "to"):
                values = headers.get(name, [])
                found = [a for v in values for a in mime.addresses(v) if not arf.redacted(a)]
                if found:
                    break
        recipients = tuple(Recipient(a, None, None, None, None) for a in found[:_MAX_ADDRESSES])
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
            dsn.refused_after_data(e) if e.address and self._after_data(notice, e.address) else e
            for e in found
        ]
        if not found:
            if parts:
                self.notes.add("malformed delivery report: no per-recipient fields")
            return None
        valid = [e for e in found if e.address is None or self._is_recipient(e.address)]
        if not valid:
            self.notes.add("delivery report naming no valid recipient address")
            return None
        failures = [entry for entry in valid if entry.bounce is not None]
        reason = None
        if not failures:
            reason = "delivery report without failures: no recipient failed or was delayed"
        recipients = tuple(
            Recipient(e.address, e.action, e.status, e.diagnostic, e.bounce, e.reason)
            for e in (failures or valid)[:_MAX_ADDRESSES]
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
            if self._is_recipient(address):
                after_data = self._after_data(text, address)
                only = len(permanent) + len(temporary) == 1
                recipients.append(_near(text, address, action, after_data, only=only))
        if not recipients:
            self.notes.add("flufl.bounce named no valid recipient address")
            return None
        # In the order the notification names them; any it does not name, last.
        recipients.sort(key=lambda r: (_position(lowered, r.address or ""), r.address or ""))
        return self.result("bounce", "flufl", recipients=tuple(recipients[:_MAX_ADDRESSES]))

    def _plain(self) -> Classified | None:
        """A notification written for people: the addresses its text names (`plaintext`)."""
        text = plaintext.notification("\n\n".join(self.texts()))
        found = plaintext.candidates(text, self._is_recipient)
        if not found:
            # Some notices name no address (v5 sendmail's deferrals, Verizon's "no valid
            # recipients"): the returned original's only recipient is the one it is about.
            returned = self.references(False, []).original_recipients
            found = [a for a in returned if self._is_recipient(a)]
            if len(found) != 1:
                return None
        delayed = _DELAYED.search(self.subject or "") or _DELAYED.search(text[:2000])
        action = "delayed" if delayed else "failed"
        recipients = tuple(
            _near(text, address, action, self._after_data(text, address), only=len(found) == 1)
            for address in found[:_MAX_ADDRESSES]
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
            if bare is None or not self._is_recipient(bare):
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
        returned = self.returned()
        if returned is None:
            return None
        headers = mime.headers(returned, self.notes)
        named = headers.get("x-hmxmroriginalrecipient")
        if not named:
            return None
        found = [a for v in named for a in mime.addresses(v) if not arf.redacted(a)]
        recipients = tuple(Recipient(a, None, None, None, None) for a in found[:_MAX_ADDRESSES])
        reason = "feedback loop report without a feedback-report part (X-HmXmrOriginalRecipient)"
        return self.result(
            "complaint", "arf", recipients=recipients, feedback_type="abuse", reason=reason
        )

    def _apple_unsubscribe(self) -> bool:
        flags = self.headers.get("x-apple-unsubscribe", [])
        return any(v.strip().lower() in {"true", "yes", "1"} for v in flags)

    def _own(self) -> set[str]:
        """The addresses that are never this bounce's failed recipient (`plaintext`)."""
        if self._own_addresses is None:
            returned = self.returned()
            headers = {} if returned is None else mime.headers(returned, self.notes)
            ids = [i for v in headers.get("message-id", []) for i in mime.message_ids(v)]
            ids += [i for v in self.headers.get("message-id", []) for i in mime.message_ids(v)]
            # Message-IDs quoted in the text too: detectors take them for addresses.
            ids += [m.group(1) for t in self.texts() for m in _INLINE_ID.finditer(t)]
            self._own_addresses = plaintext.own_addresses(self.headers, headers, ids)
        return self._own_addresses

    def _after_data(self, text: str, address: str) -> bool:
        """Whether the notification says the refusal of `address` answered DATA.

        A transcript showing it (sendmail, mFILTER), or Postfix's "(in reply to end of DATA
        command)" in the address's paragraph.
        """
        if any(_REFUSED_AFTER_DATA.search(t) for t in self.texts()):
            return True
        return bool(verdict.AFTER_DATA.search(dsn.paragraph(text, address)))

    def _is_recipient(self, address: str) -> bool:
        return (
            plaintext.valid_address(address)
            and address.lower() not in self._own()
            and not plaintext.reporting_postmaster(address.lower(), self.sender)
        )

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

    def texts(self) -> list[str]:
        """The texts of the message's own leaf parts, not a returned message's.

        Plain text first, then HTML with its tags dropped.
        """
        if self._texts is None:
            plain: list[str] = []
            html: list[str] = []
            for part in self.parts:
                if part.inside or part.content_type in mime.FIELD_TYPES:
                    continue
                if part.content_type.split("/", 1)[0] in mime.BINARY:
                    continue
                if isinstance(mime.payload(part.message), list):
                    continue
                text = mime.part_text(part.message, self.notes)
                if part.content_type == "text/html":
                    html.append(_TAG.sub(" ", text))
                else:
                    plain.append(text)
            self._texts = plain + html
        return self._texts

    def returned(self) -> Message | None:
        """The returned original (or its headers): a report part, else a copy in the text."""
        if not self._returned_done:
            self._returned_done = True
            self._returned = self._find_returned()
        return self._returned

    def _find_returned(self) -> Message | None:
        for part in self.parts:
            if part.inside or part.content_type not in _RETURNED_TYPES:
                continue
            body = mime.payload(part.message)
            if isinstance(body, list):
                if body and isinstance(body[0], Message):
                    return body[0]
            elif (text := mime.part_text(part.message, self.notes)).strip():
                return mime.header_block(text)
        for text in self.texts():
            for pattern in (_INLINE_PART, plaintext.ORIGINAL):
                for match in itertools.islice(pattern.finditer(text), _INLINE_TRIES):
                    headers = mime.header_block(text[match.end() :])
                    if {name.lower() for name in headers} & {
                        "message-id",
                        "to",
                        "list-unsubscribe",
                    }:
                        return headers
        return None

    def references(self, own_first: bool, extra_ids: list[str]) -> References:
        returned_ids: list[str] = []
        tokens: list[str] = []
        recipients: list[str] = []
        returned = self.returned()
        if returned is not None:
            headers = mime.headers(returned, self.notes)
            returned_ids = [i for v in headers.get("message-id", []) for i in mime.message_ids(v)]
            tokens = _unsubscribe_tokens(headers.get("list-unsubscribe", []))
            recipients = [a for v in headers.get("to", []) for a in mime.addresses(v)]
        own = [i for v in self.headers.get("in-reply-to", []) for i in mime.message_ids(v)]
        for value in reversed(self.headers.get("references", [])):
            own.extend(reversed(mime.message_ids(value)))
        ids = extra_ids + (own + returned_ids if own_first else returned_ids + own)
        if not ids:
            found = [m.group(1) for text in self.texts() for m in _INLINE_ID.finditer(text)]
            ids = [i for value in found for i in mime.message_ids(value)]
        return References(
            tuple(mime.unique(ids)[:_MAX_IDS]),
            tuple(mime.unique(tokens)),
            tuple(mime.unique(recipients)[:_MAX_ADDRESSES]),
        )

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


def _unsubscribe_tokens(values: list[str]) -> list[str]:
    """Our tokens in List-Unsubscribe values.

    From https://.../unsubscribe/<token> and mailto:...?subject=unsubscribe%20<token>.
    """
    tokens: list[str] = []
    for uri in (uri for value in values for uri in mime.bracketed(value)):
        try:
            parts = urlsplit(uri)
        except ValueError:
            continue
        scheme = parts.scheme.lower()
        if scheme in {"http", "https"} and "/unsubscribe/" in parts.path:
            segment = parts.path.split("/unsubscribe/", 1)[1].strip("/").rsplit("/", 1)[-1]
            if _TOKEN.fullmatch(token := unquote(segment)):
                tokens.append(token)
        elif scheme == "mailto":
            for pair in parts.query.split("&"):
                key, _, text = pair.partition("=")
                if key.lower() == "subject" and (
                    match := _UNSUBSCRIBE_SUBJECT.fullmatch(unquote(text))
                ):
                    tokens.append(match.group(1))
    return tokens


def _near(text: str, address: str, action: str, after_data: bool, *, only: bool) -> Recipient:
    """A recipient of a free-text bounce, with the code and diagnostic found near it."""
    status, diagnostic = dsn.status_near(text, address, only=only)
    verdict = judge(action, status, diagnostic, after_data=after_data, address=address)
    return Recipient(address, action, status, diagnostic, *verdict)


def _position(text: str, needle: str) -> int:
    index = text.find(needle) if needle else -1
    return index if index >= 0 else len(text)
