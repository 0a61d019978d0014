"""A message as the classifier reads it: parsed once, its texts, its returned original.

`Reading` holds what every kind of message needs: the parsed message and its parts (bounded,
see `mailfleet_bouncer.mime`), its headers, sender and subject, the texts of its own parts,
the copy of the original it returns (a report part, or a copy in the text), the references
that tie it to one of our messages, and which addresses can never be a failed recipient of it.
Deciding what the message is stays in `mailfleet_bouncer.classify`.
"""

import itertools
import re
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote, urlsplit

from mailfleet_bouncer import dsn, mime, plaintext, verdict

SUBJECT_MAX = 500
MAX_ADDRESSES = 20
UNSUBSCRIBE_SUBJECT = re.compile(
    r"\s*unsubscribe(?:\s+|%20)([A-Za-z0-9_-]{16,200})\s*", re.IGNORECASE
)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,200}")
_INLINE_ID = re.compile(r"^[ \t>]*message-id[ \t]*:[ \t]*\r?\n?[ \t]*(<[^<>\s]+>)", re.I | re.M)
# A returned part whose MIME structure the parser missed (a boundary that does not match).
_INLINE_PART = re.compile(
    r"^content-type:[ \t]*(?:message/(?:rfc822|global|global-headers)|text/rfc822-headers)\b"
    r".*?\r?\n[ \t]*\r?\n",
    re.I | re.M | re.S,
)
# A transcript's DATA command and the replies that follow it (sendmail's ">>> DATA", then
# "<<< ..." lines and its own comments), and mFILTER's "SMTP command" section naming DATA.
_DATA_COMMAND = re.compile(r"^[ \t]*>>>[ \t]*data[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_MFILTER_DATA = re.compile(r"^-+ ?smtp command\s*\n\s*data\b", re.IGNORECASE | re.MULTILINE)
_REPLY = re.compile(r"^[ \t]*<<<[ \t]*([2-5])\d\d")
# What answers DATA when no recipient was accepted: the refusals before it were at RCPT TO.
_NO_RECIPIENTS = re.compile(r"^[ \t]*<<<[ \t]*(?:503|554[ -].*no valid recipients)", re.I)
_TAG = re.compile(r"<[^<>]*>")
_RETURNED_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
)
_MAX_IDS = 20
_INLINE_TRIES = 5


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


class Reading:
    """One message being classified: the parsed message and what was noticed along the way."""

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
        self._returned_headers: dict[str, list[str]] | None = None

    def parse(self) -> None:
        """Parse the message and read its headers, sender and subject."""
        self.message, cut = mime.parse(self.raw, self.notes)
        self.cut = self.cut or cut
        self.parts = mime.walk(self.message)
        mime.prune(self.parts)
        self.headers = mime.headers(self.message, self.notes)
        self.sender = next(iter(mime.addresses(", ".join(self.headers.get("from", [])))), None)
        subject = self.headers.get("subject")
        self.subject = (
            " ".join(mime.decode_words(subject[0], self.notes).split())[:SUBJECT_MAX]
            if subject
            else None
        )

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

    def returned_headers(self) -> dict[str, list[str]]:
        """The returned original's headers (see `mime.headers`); empty without one."""
        if self._returned_headers is None:
            returned = self.returned()
            self._returned_headers = {} if returned is None else mime.headers(returned, self.notes)
        return self._returned_headers

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
        if self.returned() is not None:
            headers = self.returned_headers()
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
            tuple(mime.unique(recipients)[:MAX_ADDRESSES]),
        )

    def own(self) -> set[str]:
        """The addresses that are never this bounce's failed recipient (`plaintext`)."""
        if self._own_addresses is None:
            headers = self.returned_headers()
            ids = [i for v in headers.get("message-id", []) for i in mime.message_ids(v)]
            ids += [i for v in self.headers.get("message-id", []) for i in mime.message_ids(v)]
            # Message-IDs quoted in the text too: detectors take them for addresses.
            ids += [m.group(1) for t in self.texts() for m in _INLINE_ID.finditer(t)]
            self._own_addresses = plaintext.own_addresses(self.headers, headers, ids)
        return self._own_addresses

    def is_recipient(self, address: str) -> bool:
        return (
            plaintext.valid_address(address)
            and address.lower() not in self.own()
            and not plaintext.reporting_postmaster(address.lower(), self.sender)
        )

    def after_data(self, text: str, address: str) -> bool:
        """Whether the notification says the refusal of `address` answered DATA.

        A transcript showing it (sendmail, mFILTER), or Postfix's "(in reply to end of DATA
        command)" in the address's paragraph.
        """
        if any(_refused_after_data(t) for t in self.texts()):
            return True
        return bool(verdict.AFTER_DATA.search(dsn.paragraph(text, address)))


def _refused_after_data(text: str) -> bool:
    """Whether a transcript shows a refusal answering DATA or the message after it.

    With PIPELINING the replies to RCPT TO come after ">>> DATA" too, and then a 503 ("need
    RCPT") or "554 no valid recipients" answers the DATA itself: the refusals were at RCPT TO.
    """
    if _MFILTER_DATA.search(text):
        return True
    for match in _DATA_COMMAND.finditer(text):
        refused = False
        for line in text[match.end() :].lstrip("\r\n").splitlines()[:20]:
            if not line.strip() or (line.lstrip().startswith(">>>") and line.strip() != ">>> ."):
                break
            if _NO_RECIPIENTS.match(line):
                refused = False
                break
            if (reply := _REPLY.match(line)) and reply.group(1) == "5":
                refused = True
        if refused:
            return True
    return False


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
                    match := UNSUBSCRIBE_SUBJECT.fullmatch(unquote(text))
                ):
                    tokens.append(match.group(1))
    return tokens
