"""SMTP delivery: pooled aiosmtplib sessions per account, pacing, and reply classification.

Classification follows Mailman: 2xx delivered; 4xx, and timeouts and dropped connections
before DATA, mean nothing was delivered and a retry may work; 5xx is permanent, except 552
(mailbox full) which is treated as temporary. A timeout or a dropped connection once DATA has
begun is `uncertain`: the server may have taken the message without its reply reaching us (the
duplicate-message problem of RFC 1047), so it is never sent again by itself.

A session that cannot be opened is the account's problem, not the message's: either its
configuration is wrong (credentials refused or unusable, AUTH or STARTTLS not offered, a TLS
failure) and only an operator can fix it, or its server cannot be reached (refused, DNS,
timeout) and the account waits before it tries again.

OAuth2 accounts log in with SASL XOAUTH2 and the account's access token. A refused token is
forgotten and the login tried once more with a fresh one; refused again, the grant is at fault
and the account is paused, as for a refused password. A grant the provider revoked pauses the
account for consent; a provider that cannot be asked for a token holds it, as an unreachable
server does.
"""

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib
from mailfleet_common.crypto import SecretBoxError
from mailfleet_common.oauth import ConsentNeededError, NotAnOAuthAccountError

from mailfleet_sender.metrics import (
    CONNECTING,
    CONNECTS,
    SESSIONS,
    SESSIONS_EVICTED,
    SMTP_SECONDS,
)
from mailfleet_sender.pacing import PacedTransport
from mailfleet_sender.tokens import AccountToken, TokensUnusableError

log = logging.getLogger(__name__)

# config: the account's settings are wrong, pause it; unreachable: its server cannot be
# reached, hold it; exhausted: this process is out of file descriptors, which says nothing
# about the account, so it only waits; throttled: the provider asked the account to slow down
# (Gmail's quotas), it waits `hold_s`. In these four, nothing was sent. uncertain: the request
# was sent but its answer never came (a Gmail API timeout, an SMTP session lost once DATA
# began): it may have been delivered, so it is never tried again automatically.
Verdict = Literal[
    "sent", "temporary", "permanent", "config", "unreachable", "exhausted", "throttled", "uncertain"
]


@dataclass(frozen=True, slots=True)
class SmtpResult:
    """The result of one attempt, whatever the transport (SMTP or the Gmail API)."""

    verdict: Verdict
    code: int | None
    detail: str
    hold_s: float | None = None  # throttled: how long the account waits at least
    # config: the provider refused the account's grant; it is paused for consent.
    consent: ConsentNeededError | None = None


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
    # OAuth2 accounts: logs in with XOAUTH2 as `username` and this account's access token.
    oauth: AccountToken | None = None


# File descriptors left to everything but SMTP sessions: the database pool, the broker, the
# HTTP endpoints, logs.
_RESERVED_FDS = 256


def default_max_sessions() -> int:
    """SMTP sessions that fit in this process's open-file limit, beside everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - _RESERVED_FDS)


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class SessionBudget:
    """The replica's SMTP sessions, open or being opened, under two bounds.

    However many accounts a replica serves, and however many of their servers fail, it holds
    at most `max_open` sessions (an idle one, least recently used first, is closed to make room
    for another) and opens at most `max_connecting` at once: file descriptors cannot run out.
    """

    def __init__(self, max_open: int, max_connecting: int) -> None:
        self.max_open = max_open
        self.connecting = asyncio.Semaphore(max_connecting)
        self._open: set[SmtpConnection] = set()
        self._idle: OrderedDict[SmtpConnection, None] = OrderedDict()
        self._changed = asyncio.Event()

    @property
    def open(self) -> int:
        return len(self._open)

    async def admit(self, connection: "SmtpConnection") -> None:
        """Count a session about to open, once there is room for it."""
        while len(self._open) >= self.max_open:
            if self._idle:
                victim = next(iter(self._idle))
                victim.close()  # calls closed(), making room
                SESSIONS_EVICTED.inc()
                continue
            self._changed.clear()
            await self._changed.wait()
        self._open.add(connection)
        SESSIONS.set(len(self._open))

    def busy(self, connection: "SmtpConnection") -> None:
        self._idle.pop(connection, None)

    def idle(self, connection: "SmtpConnection") -> None:
        if connection in self._open:
            self._idle[connection] = None
            self._idle.move_to_end(connection)
            self._changed.set()

    def closed(self, connection: "SmtpConnection") -> None:
        self._idle.pop(connection, None)
        if connection in self._open:
            self._open.discard(connection)
            SESSIONS.set(len(self._open))
            self._changed.set()


@dataclass(frozen=True, slots=True)
class SmtpOptions:
    timeout_s: float
    validate_certs: bool
    helo_name: str
    # Shared by every account of the replica.
    sessions: SessionBudget = field(default_factory=lambda: SessionBudget(1000, 32))


def classify_token_failure(exc: Exception) -> SmtpResult:
    """What failing to get an account's access token means for it."""
    if isinstance(exc, ConsentNeededError):
        return SmtpResult("config", None, exc.reason, consent=exc)
    if isinstance(exc, (NotAnOAuthAccountError, TokensUnusableError)):
        return SmtpResult("config", None, f"OAuth2 login impossible: {exc}")
    if isinstance(exc, SecretBoxError):
        return SmtpResult(
            "config",
            None,
            "the OAuth credentials cannot be decrypted with MAILFLEET_CRYPTO__KEYS: add the "
            "key they were stored with, or import them again",
        )
    # TokenRefreshError (the provider unreachable, or refusing the client), or a surprise:
    # nothing was sent, the account waits and, failing on, is paused in the end.
    return SmtpResult("unreachable", None, f"OAuth2 access token not refreshed: {exc}")


def classify_reply(code: int, message: str) -> SmtpResult:
    """Mailman's rule for one SMTP reply code."""
    detail = f"{code} {message}".strip()
    if 200 <= code < 300:
        return SmtpResult("sent", code, detail)
    if code in (530, 535):  # authentication required / credentials refused
        return SmtpResult("config", code, f"SMTP authentication failed: {detail}")
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
                try:
                    reply = await client.data(data)
                except (aiosmtplib.SMTPServerDisconnected, OSError, TimeoutError) as exc:
                    # aiosmtplib's SMTPTimeoutError is a TimeoutError. Replies (4xx, 5xx) are
                    # SMTPResponseExceptions and not caught here: the server said no.
                    raise DataUnansweredError(exc) from exc
                return SmtpResult("sent", reply.code, reply.message)
        raise aiosmtplib.SMTPResponseException(reply.code, reply.message)
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code != 421 and client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.rset()  # clear the half-built envelope before the next message
        raise


class DataUnansweredError(Exception):
    """DATA began, and no reply came: the message may have been taken."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")


class SessionError(Exception):
    """A session could not be opened; `result` says whose problem it is."""

    def __init__(self, result: SmtpResult) -> None:
        super().__init__(result.detail)
        self.result = result


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def classify_open_failure(endpoint: SmtpEndpoint, exc: Exception) -> SmtpResult:
    """What a failure to open a session means: the account's configuration, or its server."""
    where = f"{endpoint.host}:{endpoint.port}"
    if isinstance(exc, SessionError):
        return exc.result
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SmtpResult(
            "config", exc.code, f"SMTP authentication failed: {exc.code} {exc.message}"
        )
    chain = _chain(exc)
    if any(isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE) for e in chain):
        return SmtpResult("exhausted", None, f"cannot connect to {where}: {exc}")
    tls_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls_error is not None:
        what = (
            "certificate not trusted"
            if isinstance(tls_error, ssl.SSLCertVerificationError)
            else "handshake failed"
        )
        return SmtpResult("config", None, f"TLS with {where} ({endpoint.tls}): {what}: {tls_error}")
    if any(isinstance(e, socket.gaierror) for e in chain):
        return SmtpResult("unreachable", None, f"cannot connect to {where}: DNS lookup: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):  # a 4xx/5xx greeting or EHLO reply
        return SmtpResult(
            "unreachable", exc.code, f"cannot connect to {where}: {exc.code} {exc.message}"
        )
    if isinstance(exc, (OSError, TimeoutError, aiosmtplib.SMTPServerDisconnected)):
        return SmtpResult("unreachable", None, f"cannot connect to {where}: {exc}")
    # Anything else aiosmtplib refuses while opening (no AUTH method in common, ...) is
    # about the settings: trying again would fail the same way.
    return SmtpResult("config", None, f"SMTP session with {where} impossible: {exc}")


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
        """A logged-in session; raises SessionError, classified, for any failure."""
        endpoint = self._endpoint
        if endpoint.password_error is not None:
            raise SessionError(SmtpResult("config", None, endpoint.password_error))
        client = aiosmtplib.SMTP(
            hostname=endpoint.host,
            port=endpoint.port,
            use_tls=endpoint.tls == "implicit",
            start_tls=False,  # done below, where its absence can be told apart
            timeout=self._options.timeout_s,
            validate_certs=self._options.validate_certs,
            local_hostname=self._options.helo_name,
        )
        budget = self._options.sessions
        await budget.admit(self)
        async with budget.connecting:
            CONNECTING.inc()
            try:
                await self._handshake(client)
            except BaseException as exc:
                # Every way out closes the socket: a failing account must not leak one per try.
                client.close()
                budget.closed(self)
                if not isinstance(exc, Exception):
                    raise  # cancelled: shutting down
                result = classify_open_failure(endpoint, exc)
                CONNECTS.labels(result.verdict).inc()
                raise SessionError(result) from exc
            finally:
                CONNECTING.dec()
        CONNECTS.labels("ok").inc()
        self.sessions += 1
        return client

    async def _handshake(self, client: aiosmtplib.SMTP) -> None:
        endpoint = self._endpoint
        where = f"{endpoint.host}:{endpoint.port}"
        await client.connect()
        await client.ehlo()
        if endpoint.tls == "starttls":
            if not client.supports_extension("starttls"):
                raise SessionError(
                    SmtpResult("config", None, f"{where} does not offer STARTTLS (tls: starttls)")
                )
            await client.starttls()
            await client.ehlo()  # RFC 3207: what was offered before TLS no longer holds
        if endpoint.oauth is not None:
            await self._login_xoauth2(client, endpoint.oauth)
        elif endpoint.username:
            if not client.supports_extension("auth"):
                raise SessionError(
                    SmtpResult(
                        "config",
                        None,
                        f"{where} does not offer AUTH, but the account has a username: "
                        "remove the credentials, or use tls starttls/implicit if the server "
                        "offers AUTH only over TLS",
                    )
                )
            await client.login(endpoint.username, endpoint.password or "")

    async def _login_xoauth2(self, client: aiosmtplib.SMTP, oauth: AccountToken) -> None:
        """AUTH XOAUTH2; a refused token is forgotten and a fresh one tried, once."""
        endpoint = self._endpoint
        if "xoauth2" not in client.server_auth_methods:
            raise SessionError(
                SmtpResult(
                    "config",
                    None,
                    f"{endpoint.host}:{endpoint.port} does not offer AUTH XOAUTH2, needed by an "
                    "OAuth2 account: use tls starttls/implicit if it offers it only over TLS",
                )
            )
        username = endpoint.username or ""
        token = await self._token(oauth)
        try:
            await client.auth_xoauth2(username, token)
        except aiosmtplib.SMTPAuthenticationError:
            # Revoked before its expiry (a password change, an admin's action): only a new
            # token tells whether the grant itself is gone. A second refusal pauses the account.
            await oauth.forget(token)
            await client.auth_xoauth2(username, await self._token(oauth))

    @staticmethod
    async def _token(oauth: AccountToken) -> str:
        try:
            return await oauth.get()
        except Exception as exc:
            raise SessionError(classify_token_failure(exc)) from exc

    async def send(self, sender: str, recipient: str, data: bytes) -> SmtpResult:
        """Send one message; every expected failure is a result, not an exception."""
        self._busy = True
        self._options.sessions.busy(self)
        try:
            return await self._send(sender, recipient, data)
        finally:
            self._busy = False
            if self._retired:
                self.close()
            elif self._client is not None:
                self._options.sessions.idle(self)

    async def _send(self, sender: str, recipient: str, data: bytes) -> SmtpResult:
        try:
            if self._client is None or not self._client.is_connected:
                self.close()  # a session the server dropped still counts until closed here
                self._client = await self._open()
            started = time.perf_counter()
            result = await _transaction(self._client, sender, recipient, data)
            SMTP_SECONDS.observe(time.perf_counter() - started)
            return result
        except SessionError as exc:
            return exc.result
        except DataUnansweredError as exc:
            self.close()
            return SmtpResult("uncertain", None, f"no reply once DATA began: {exc}")
        except aiosmtplib.SMTPResponseException as exc:  # the reply to DATA or its content
            if exc.code == 421:  # the server is closing the session
                self.close()
            return classify_reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Timeouts, dropped connections before DATA: nothing was delivered.
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
        self._options.sessions.closed(self)


class AccountTransport(PacedTransport):
    """An account's SMTP connections (at most `max_connections`) and its pace between sends."""

    connections: list[SmtpConnection]

    def __init__(
        self, endpoint: SmtpEndpoint, options: SmtpOptions, max_connections: int, min_gap_ms: int
    ) -> None:
        super().__init__(max_connections, min_gap_ms / 1000)
        self._options = options
        self._endpoint = endpoint
        self.connections = [SmtpConnection(endpoint, options) for _ in range(max_connections)]

    def reconfigure(self, endpoint: SmtpEndpoint, min_gap_ms: int) -> None:
        """New settings: connections are replaced, each old one closing after its message."""
        self.reachable()
        self._endpoint = endpoint
        self._gap = min_gap_ms / 1000
        old, self.connections = (
            self.connections,
            [SmtpConnection(endpoint, self._options) for _ in range(self._max)],
        )
        for connection in old:
            connection.retire()
