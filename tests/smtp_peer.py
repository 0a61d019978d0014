"""An aiosmtpd server in the test process, steered by the recipient's local part.

``tempfailN-...@``: 451 for the first N tries, then accepted. ``reject-...@``: 550.
``full-...@``: 552. ``unanswered-...@``: the message is taken (recorded), but the reply to
the end of DATA comes only after ``Handler.late_reply_s`` (default 30 s), or never if the
client gave up and hung up first. Any login is accepted except with the password ``wrong`` (535).
A peer made with ``auth=False`` offers no AUTH; with an ``ssl_context`` it speaks TLS from the
first byte (``tls="implicit"``) or offers STARTTLS (``tls="starttls"``, and AUTH only after it).

Given a ``tokens`` registry (tests/oauth_tokens.py) the peer also offers AUTH XOAUTH2 and
OAUTHBEARER, accepting a live token issued to the address the client names (235). A bad token
is refused as the providers do: ``oauth_errors="google"`` sends the error challenge (334 and
base64 JSON ``{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}``), waits
for the client's empty line and answers ``535 5.7.8``; ``"microsoft"`` answers
``535 5.7.3 Authentication unsuccessful`` at once, as Exchange Online does.
"""

import asyncio
import base64
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import default
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.oauth_tokens import GMAIL_SCOPE, TokenRegistry, parse_bearer_response

GOOGLE_BAD_CREDENTIALS = (
    "535-5.7.8 Username and Password not accepted. For more information, go to",
    "535 5.7.8  https://support.google.com/mail/?p=BadCredentials",
)
MICROSOFT_BAD_CREDENTIALS = "535 5.7.3 Authentication unsuccessful"


@dataclass(frozen=True)
class Received:
    recipient: str
    sender: str
    raw: bytes
    peer: Any

    @property
    def message(self) -> Message:
        return BytesParser(policy=default).parsebytes(self.raw)

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class Handler:
    received: list[Received] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    ehlos: int = 0  # sessions that got as far as EHLO: one per connection of our client
    late_reply_s: float = 30.0
    _tries: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local = address.split("@", 1)[0]
        reply = None
        if local.startswith("reject"):
            reply = (550, "550 5.1.1 No such user")
        elif local.startswith("full"):
            reply = (552, "552 5.2.2 Mailbox full")
        elif local.startswith("tempfail"):
            wanted = int(local[len("tempfail")]) if local[len("tempfail") :][:1].isdigit() else 1
            with self._lock:
                seen = self._tries.get(address, 0)
                self._tries[address] = seen + 1
            if seen < wanted:
                reply = (451, "451 4.7.1 Try again later")
        if reply is not None:
            with self._lock:
                self.refused.append((address, reply[0]))
            return reply[1]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(  # noqa: N802 - aiosmtpd hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        with self._lock:
            self.ehlos += 1
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        return responses

    async def handle_DATA(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        with self._lock:
            for recipient in envelope.rcpt_tos:
                self.received.append(
                    Received(recipient, str(envelope.mail_from), raw, session.peer)
                )
        if any(r.split("@", 1)[0].startswith("unanswered") for r in envelope.rcpt_tos):
            await asyncio.sleep(self.late_reply_s)  # taken, but the client hears nothing
        return "250 2.0.0 Accepted"

    def to(self, recipient: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.recipient == recipient]

    def sessions(self) -> set[Any]:
        with self._lock:
            return {r.peer for r in self.received}


@dataclass
class OAuthHandler(Handler):
    """A Handler that also takes SASL XOAUTH2 and OAUTHBEARER against a token registry."""

    tokens: TokenRegistry = field(default_factory=TokenRegistry)
    oauth_errors: Literal["google", "microsoft"] = "google"
    refused_tokens: list[str] = field(default_factory=list)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult | None:  # noqa: N802 - aiosmtpd hook name
        return await self._bearer(server, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult | None:  # noqa: N802 - aiosmtpd hook name
        return await self._bearer(server, "OAUTHBEARER", args)

    async def _bearer(self, server: SMTP, mechanism: str, args: list[str]) -> AuthResult | None:
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Bad base64")
        else:
            answer = await server.challenge_auth(b"")
            if answer is MISSING:
                return None  # challenge_auth has answered already
            assert isinstance(answer, bytes)
            blob = answer
        parsed = parse_bearer_response(mechanism, blob)
        if parsed is not None:
            address, token = parsed
            issued = self.tokens.holder(token)
            if issued is not None and issued.address == address.lower():
                with self._lock:
                    self.logins.append(address)
                return AuthResult(success=True, auth_data=address)
            with self._lock:
                self.refused_tokens.append(token)
        if self.oauth_errors == "microsoft":
            return AuthResult(success=False, handled=False, message=MICROSOFT_BAD_CREDENTIALS)
        status = "401" if mechanism == "XOAUTH2" else "invalid_token"
        error = {"status": status, "schemes": "bearer", "scope": GMAIL_SCOPE}
        # The client answers the error challenge with an empty line (OAUTHBEARER: ^A).
        if await server.challenge_auth(json.dumps(error).encode()) is MISSING:
            return None
        for line in GOOGLE_BAD_CREDENTIALS:
            await server.push(line)
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SmtpPeer:
    def __init__(
        self,
        *,
        auth: bool = True,
        tls: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        port: int | None = None,
        tokens: TokenRegistry | None = None,
        oauth_errors: Literal["google", "microsoft"] = "google",
    ) -> None:
        self.handler = (
            Handler() if tokens is None else OAuthHandler(tokens=tokens, oauth_errors=oauth_errors)
        )

        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            if isinstance(data, LoginPassword):
                self.handler.logins.append(data.login.decode())
                if data.password == b"wrong":
                    return AuthResult(success=False, handled=False)
            return AuthResult(success=True)

        options: dict[str, Any] = {}
        if auth:
            # Over STARTTLS, AUTH is offered only once TLS is on, as servers commonly do.
            options = {"authenticator": authenticate, "auth_require_tls": tls == "starttls"}
        if tls == "implicit":
            options["ssl_context"] = ssl_context
        elif tls == "starttls":
            options["tls_context"] = ssl_context
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=port or _free_port(),
            ready_timeout=10,
            **options,
        )

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def start(self) -> "SmtpPeer":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
