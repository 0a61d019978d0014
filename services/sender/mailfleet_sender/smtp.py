"""SMTP delivery: pooled aiosmtplib sessions per account, pacing, and reply classification.

Classification follows Mailman: 2xx delivered; 4xx, timeouts and dropped connections mean
nothing was delivered and a retry may work; 5xx is permanent, except 552 (mailbox full) which
is treated as temporary; 535 or any authentication failure is the account's problem, not the
message's.
"""

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from mailfleet_sender.metrics import SMTP_SECONDS

log = logging.getLogger(__name__)

Verdict = Literal["sent", "temporary", "permanent", "auth"]


@dataclass(frozen=True, slots=True)
class SmtpResult:
    verdict: Verdict
    code: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """Where and how to open an account's SMTP session."""

    host: str
    port: int
    tls: str  # implicit | starttls | none
    username: str | None
    password: str | None
    # Set when the stored password cannot be decrypted: every login would fail.
    password_error: str | None = None


@dataclass(frozen=True, slots=True)
class SmtpOptions:
    timeout_s: float
    validate_certs: bool
    helo_name: str


def classify_reply(code: int, message: str) -> SmtpResult:
    """Mailman's rule for one SMTP reply code."""
    detail = f"{code} {message}".strip()
    if 200 <= code < 300:
        return SmtpResult("sent", code, detail)
    if code in (530, 535):  # authentication required / credentials refused
        return SmtpResult("auth", code, detail)
    if code >= 500 and code != 552:
        return SmtpResult("permanent", code, detail)
    return SmtpResult("temporary", code, detail)


async def _transaction(
    client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes
) -> SmtpResult:
    """MAIL, RCPT and DATA for one recipient.

    `SMTP.sendmail` parses both addresses with `email.utils.parseaddr` four times per
    message, a fifth of its CPU cost; ours were validated when the message was built
    (mime.envelope_address), so the commands are written directly.
    """
    options = [b"SIZE=%d" % len(data)] if client.supports_extension("size") else []
    try:
        reply = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode() + b">", *options)
        if reply.code == 250:
            reply = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
            if reply.code in (250, 251):
                reply = await client.data(data)
                return SmtpResult("sent", reply.code, reply.message)
        raise aiosmtplib.SMTPResponseException(reply.code, reply.message)
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code != 421 and client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.rset()  # clear the half-built envelope before the next message
        raise


class LoginRefusedError(Exception):
    """The server refused the account's credentials (or they cannot be used)."""

    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class SmtpConnection:
    """One SMTP session of an account, opened on first use and reopened after a drop."""

    def __init__(self, endpoint: SmtpEndpoint, options: SmtpOptions) -> None:
        self._endpoint = endpoint
        self._options = options
        self._client: aiosmtplib.SMTP | None = None
        self._busy = False
        self._retired = False
        self.sessions = 0  # how many times a session was opened, for tests and logs

    async def _open(self) -> aiosmtplib.SMTP:
        endpoint = self._endpoint
        if endpoint.password_error is not None:
            raise LoginRefusedError(None, endpoint.password_error)
        client = aiosmtplib.SMTP(
            hostname=endpoint.host,
            port=endpoint.port,
            use_tls=endpoint.tls == "implicit",
            start_tls=endpoint.tls == "starttls",
            timeout=self._options.timeout_s,
            validate_certs=self._options.validate_certs,
            local_hostname=self._options.helo_name,
        )
        await client.connect()
        if client.last_ehlo_response is None:  # connect() only says EHLO for STARTTLS
            await client.ehlo()
        self.sessions += 1
        if endpoint.username:
            try:
                await client.login(endpoint.username, endpoint.password or "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                client.close()
                raise LoginRefusedError(exc.code, f"{exc.code} {exc.message}") from exc
            except aiosmtplib.SMTPNotSupported as exc:
                client.close()
                raise LoginRefusedError(None, f"login impossible: {exc}") from exc
        return client

    async def send(self, sender: str, recipient: str, data: bytes) -> SmtpResult:
        """Send one message; every expected failure is a result, not an exception."""
        self._busy = True
        try:
            return await self._send(sender, recipient, data)
        finally:
            self._busy = False
            if self._retired:
                self.close()

    async def _send(self, sender: str, recipient: str, data: bytes) -> SmtpResult:
        try:
            if self._client is None or not self._client.is_connected:
                self._client = await self._open()
            started = time.perf_counter()
            result = await _transaction(self._client, sender, recipient, data)
            SMTP_SECONDS.observe(time.perf_counter() - started)
            return result
        except LoginRefusedError as exc:
            self.close()
            return SmtpResult("auth", exc.code, exc.detail)
        except (aiosmtplib.SMTPHeloError, aiosmtplib.SMTPConnectResponseError) as exc:
            self.close()
            return SmtpResult("temporary", exc.code, f"{exc.code} {exc.message}")
        except aiosmtplib.SMTPResponseException as exc:  # the reply to DATA or its content
            if exc.code == 421:  # the server is closing the session
                self.close()
            return classify_reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Timeouts, refused or dropped connections, TLS trouble: nothing was delivered.
            self.close()
            return SmtpResult("temporary", None, f"{type(exc).__name__}: {exc}")

    def retire(self) -> None:
        """Close once the message in hand (if any) is done."""
        self._retired = True
        if not self._busy:
            self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AccountTransport:
    """An account's SMTP connections (at most `max_connections`) and its pace between sends."""

    def __init__(
        self, endpoint: SmtpEndpoint, options: SmtpOptions, max_connections: int, min_gap_ms: int
    ) -> None:
        self._options = options
        self._max = max_connections
        self._endpoint = endpoint
        self._gap = min_gap_ms / 1000
        self._next_at = 0.0
        self.connections = [SmtpConnection(endpoint, options) for _ in range(max_connections)]

    @property
    def size(self) -> int:
        return self._max

    def reserve_turn(self) -> float:
        """Book the account's next send slot; returns how long to wait before sending."""
        if self._gap <= 0:
            return 0.0
        now = time.monotonic()
        at = max(now, self._next_at)
        self._next_at = at + self._gap
        return at - now

    def reconfigure(self, endpoint: SmtpEndpoint, min_gap_ms: int) -> None:
        """New settings: connections are replaced, each old one closing after its message."""
        self._endpoint = endpoint
        self._gap = min_gap_ms / 1000
        old, self.connections = (
            self.connections,
            [SmtpConnection(endpoint, self._options) for _ in range(self._max)],
        )
        for connection in old:
            connection.retire()

    def close(self) -> None:
        for connection in self.connections:
            connection.retire()
