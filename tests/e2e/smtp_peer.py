"""An aiosmtpd server for end-to-end tests that records what it accepts and can misbehave.

Recipients steer it: ``tempfail2-...@`` is answered 451 twice, then accepted; ``reject-...@``
gets 550. Any login is accepted except with the password ``wrong``, which gets 535.
"""

import socket
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Received:
    message_id: str
    recipients: tuple[str, ...]
    at: float
    headers: dict[str, str]


@dataclass
class RecordingHandler:
    received: list[Received] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    _tempfails: dict[str, int] = field(default_factory=dict)
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
        if local.startswith("reject"):
            with self._lock:
                self.refused.append((address, 550))
            return "550 5.1.1 No such user"
        if local.startswith("tempfail"):
            wanted = int(local[len("tempfail")] if local[len("tempfail") :][:1].isdigit() else 1)
            with self._lock:
                seen = self._tempfails.get(address, 0)
                if seen < wanted:
                    self._tempfails[address] = seen + 1
                    self.refused.append((address, 451))
                    return "451 4.7.1 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        headers = BytesHeaderParser().parsebytes(content)
        item = Received(
            message_id=str(headers.get("Message-ID", "")),
            recipients=tuple(envelope.rcpt_tos),
            at=time.time(),
            headers={k: str(v) for k, v in headers.items()},
        )
        with self._lock:
            self.received.append(item)
        return "250 2.0.0 Accepted"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    if isinstance(auth_data, LoginPassword) and auth_data.password == b"wrong":
        return AuthResult(success=False, handled=False)
    return AuthResult(success=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SmtpPeer:
    """A started aiosmtpd server on a free loopback port."""

    def __init__(self) -> None:
        self.handler = RecordingHandler()
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=_free_port(),
            authenticator=_authenticate,
            auth_require_tls=False,
            ready_timeout=10,
        )

    def start(self) -> "SmtpPeer":
        self._controller.start()
        return self

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def stop(self) -> None:
        self._controller.stop()
