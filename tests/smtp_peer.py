"""An aiosmtpd server in the test process, steered by the recipient's local part.

``tempfailN-...@``: 451 for the first N tries, then accepted. ``reject-...@``: 550.
``full-...@``: 552. Any login is accepted except with the password ``wrong`` (535).
A peer made with ``auth=False`` offers no AUTH; with an ``ssl_context`` it speaks TLS from the
first byte (``tls="implicit"``) or offers STARTTLS (``tls="starttls"``, and AUTH only after it).
"""

import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


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
        return "250 2.0.0 Accepted"

    def to(self, recipient: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.recipient == recipient]

    def sessions(self) -> set[Any]:
        with self._lock:
            return {r.peer for r in self.received}


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
    ) -> None:
        self.handler = Handler()

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
