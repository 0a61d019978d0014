"""Fast RFC 5322 message rendering: campaign templates in, ready-to-send bytes out.

The `email` package's default policy costs milliseconds per message; the headers we emit are
few and known, so they are built directly: RFC 2047 encoded-words for non-ASCII text, quoted
display names, CRLF line endings, and bodies in quoted-printable (binascii, in C) or base64.
"""

import asyncio
import binascii
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote
from uuid import UUID

from mailfleet_common.errors import MailfleetError
from mailfleet_common.templating import (
    DEFAULT_LIMITS,
    CampaignTemplates,
    InvalidTemplateError,
    TemplateLimits,
    compile_campaign,
)

from mailfleet_sender.queries import CampaignRow


class MessageBuildError(MailfleetError):
    """A message cannot be built (bad address, missing campaign): a permanent failure."""


# Every ASCII control character (CR and LF above all) becomes a space: a rendered subject or
# name can never start a new header line.
_FOLD = str.maketrans({**{chr(c): " " for c in range(32)}, "\x7f": " "})
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
_ADDRESS = re.compile(r"[!#-'*+\-/-9=?A-Z^-~.]+@[A-Za-z0-9.\-]+")
# RFC 2047 caps an encoded-word at 75 characters; 39 bytes of UTF-8 (52 of base64, 64 with
# "=?utf-8?b?" and "?=") keep even the first line, after "Subject: ", within 78.
_WORD_BYTES = 39
_MAX_PLAIN_HEADER = 900  # RFC 5322 caps lines at 998 characters
_MAX_BODY_LINE = 998


def encoded_words(value: str) -> str:
    """RFC 2047 'B' encoded-words, never splitting a UTF-8 character, folded with CRLF SP."""
    data = value.encode()
    size = len(data)
    words = []
    start = 0
    while start < size:
        end = min(start + _WORD_BYTES, size)
        while end < size and data[end] & 0xC0 == 0x80:
            end -= 1
        chunk = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{chunk}?=")
        start = end
    return "\r\n ".join(words)


def header_text(value: str) -> str:
    """An unstructured header value (Subject) that is safe to put on one header line."""
    value = value.translate(_FOLD)
    if value.isascii() and len(value) <= _MAX_PLAIN_HEADER:
        return value
    return encoded_words(value)


def display_name(name: str) -> str:
    """A display name as an RFC 5322 phrase: atoms, a quoted-string or encoded-words."""
    name = " ".join(name.translate(_FOLD).split())
    if not name.isascii():
        return encoded_words(name)
    if _ATOMS.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox(name: str | None, address: str) -> str:
    """`Name <address>`, or the bare address when there is no name."""
    if not _ADDRESS.fullmatch(address):
        address = _ascii_address(address)
    phrase = display_name(name) if name else ""
    return f"{phrase} <{address}>" if phrase else address


def _ascii_address(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if at and local.isascii() and not domain.isascii():
        try:
            candidate = f"{local}@{domain.encode('idna').decode('ascii')}"
        except UnicodeError as exc:
            raise MessageBuildError(f"invalid recipient domain: {domain!r}") from exc
        if _ADDRESS.fullmatch(candidate):
            return candidate
    raise MessageBuildError(f"invalid or non-ASCII email address: {address!r}")


def envelope_address(address: str) -> str:
    """The address for the SMTP envelope (ASCII; international domains in IDNA)."""
    return address if _ADDRESS.fullmatch(address) else _ascii_address(address)


def _crlf_lines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\n", "\r\n")
    if not text.endswith("\r\n"):
        # Also makes b2a_qp see CRLF line ends, so its soft breaks are "=\r\n" too.
        text += "\r\n"
    return text


def _part(content_type: str, text: str) -> bytes:
    text = _crlf_lines(text)
    if text.isascii() and max(map(len, text.split("\r\n"))) <= _MAX_BODY_LINE:
        # Plain ASCII in short-enough lines needs no encoding at all (and QP is the costliest
        # step of building a message).
        body = text.encode("ascii")
        encoding = b"7bit"
    else:
        data = text.encode()
        if len(data) - len(text) > len(text) // 8:
            # Mostly non-ASCII text: base64 is smaller than quoted-printable.
            body = (
                b"\r\n".join(
                    binascii.b2a_base64(data[i : i + 57], newline=False)
                    for i in range(0, len(data), 57)
                )
                + b"\r\n"
            )
            encoding = b"base64"
        else:
            body = binascii.b2a_qp(data, istext=True)
            encoding = b"quoted-printable"
    return (
        b"Content-Type: " + content_type.encode() + b"; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body
    )


class _DateCache:
    """RFC 5322 Date for the current second (formatting it costs more than building headers)."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True)
        return self._value


_DATE = _DateCache()


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a transactional message (name and type checked by the API)."""

    filename: str
    content_type: str
    content: bytes


def build_message(
    *,
    from_header: str,
    to_header: str,
    subject: str,
    message_id: str,
    html: str | None,
    text: str | None,
    headers: Sequence[str] = (),
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """The complete message: headers, then one part or multipart/alternative (text, html).

    `headers` are further header fields, each ``Name: value`` in ASCII and already folded
    (CRLF SP) where long, added as given. With `attachments`, the body is the first part of
    a multipart/mixed and each file follows in base64.
    """
    extra = "".join([line + "\r\n" for line in headers])
    head = (
        f"From: {from_header}\r\n"
        f"To: {to_header}\r\n"
        f"Subject: {header_text(subject)}\r\n"
        f"Date: {_DATE.now()}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"{extra}"
        "MIME-Version: 1.0\r\n"
    ).encode()
    if not attachments:
        return head + _body(html, text)
    boundary = b"=_mx" + secrets.token_hex(12).encode()
    parts = [head, b'Content-Type: multipart/mixed; boundary="', boundary, b'"\r\n\r\n']
    for entity in (_body(html, text), *map(_attachment, attachments)):
        parts += (b"--", boundary, b"\r\n", entity, b"\r\n")
    parts += (b"--", boundary, b"--\r\n")
    return b"".join(parts)


def _attachment(attachment: Attachment) -> bytes:
    """One attached file: its type, its name (RFC 2231 when not plain ASCII), base64 lines."""
    name = attachment.filename.translate(_FOLD)
    if name.isascii() and _ATOMS.fullmatch(name.replace(".", "")) and len(name) < 200:
        disposition = f'attachment; filename="{name}"'
    else:
        disposition = "attachment; filename*=utf-8''" + quote(name, safe="")
    data = attachment.content
    body = b"\r\n".join(
        binascii.b2a_base64(data[i : i + 57], newline=False) for i in range(0, len(data), 57)
    )
    return (
        (
            f"Content-Type: {attachment.content_type}\r\n"
            f"Content-Disposition: {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + body
        + b"\r\n"
    )


def _body(html: str | None, text: str | None) -> bytes:
    """The message's text as one entity: a single part, or multipart/alternative."""
    if html is None or text is None:
        if html is None:
            return _part("text/plain", text or "")
        return _part("text/html", html)
    # "=_" never occurs in quoted-printable or base64 output, so the boundary cannot collide.
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1), hence the
    # extra one after each part, whose own last line already ends in CRLF.
    boundary = b"=_mf" + secrets.token_hex(12).encode()
    return b"".join(
        (
            b'Content-Type: multipart/alternative; boundary="',
            boundary,
            b'"\r\n\r\n--',
            boundary,
            b"\r\n",
            _part("text/plain", text),
            b"\r\n--",
            boundary,
            b"\r\n",
            _part("text/html", html),
            b"\r\n--",
            boundary,
            b"--\r\n",
        )
    )


def template_context(
    email: str, name: str | None, variables: dict[str, Any], unsubscribe_url: str
) -> dict[str, Any]:
    """What a campaign template sees: the recipient's variables plus the fields we provide.

    Those are `email`, `name` and `unsubscribe_url`; a template that places the unsubscribe
    URL itself gets no footer added.
    """
    return {**variables, "email": email, "name": name or "", "unsubscribe_url": unsubscribe_url}


CampaignLoader = Callable[[UUID], Awaitable[CampaignRow | None]]


@dataclass(frozen=True, slots=True)
class Campaign:
    """What rendering a campaign's messages needs: its compiled templates, its tracking switch."""

    templates: CampaignTemplates
    tracking: bool


class TemplateCache:
    """Compiled templates per campaign, each campaign fetched and compiled once."""

    def __init__(
        self, load: CampaignLoader, limits: TemplateLimits = DEFAULT_LIMITS, size: int = 1024
    ) -> None:
        self._load = load
        self._limits = limits
        self._size = size
        self._entries: OrderedDict[UUID, asyncio.Future[Campaign]] = OrderedDict()

    async def get(self, campaign_id: UUID) -> Campaign:
        """The campaign's templates; raises InvalidTemplateError or MessageBuildError."""
        entry = self._entries.get(campaign_id)
        if entry is None:
            entry = asyncio.get_running_loop().create_future()
            self._entries[campaign_id] = entry
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
            try:
                row = await self._load(campaign_id)
                if row is None:
                    raise MessageBuildError(f"campaign {campaign_id} does not exist")
                templates = compile_campaign(
                    row.subject, row.html_body, row.text_body, self._limits
                )
                # Over the limits without any variables is over them for every recipient:
                # the campaign fails once here, not once per message on the event loop.
                templates.check_limits()
                entry.set_result(Campaign(templates, row.tracking))
            except (InvalidTemplateError, MessageBuildError) as exc:
                entry.set_exception(exc)
            except Exception as exc:
                # A database hiccup is not the campaign's fault: forget it, try again later.
                self._entries.pop(campaign_id, None)
                entry.set_exception(exc)
                entry.exception()  # retrieved here; concurrent waiters see it too
                raise
        return await asyncio.shield(entry) if not entry.done() else entry.result()
