"""The SMTP server side of one connection, as an asyncio protocol (RFC 5321, no TLS).

Commands are read from a buffer line by line, so pipelined commands (RFC 2920) are answered
in order, and every reply produced by one read goes out in one write. Any AUTH PLAIN or LOGIN
credentials are accepted: the sink stands in for a provider, it guards nothing.
"""

import asyncio
import base64
import binascii
import random
import re
import time
from collections.abc import Callable
from typing import cast

from mailfleet_sink.capture import Accepted

MAX_LINE = 4096  # well above RFC 5321's 512 for commands; a client past it is not SMTP
MAX_MESSAGE = 64 * 1024 * 1024
RECEIVE_SIZE = 64 * 1024

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.I | re.M)
_END_OF_DATA = b"\r\n.\r\n"

OK = b"250 2.0.0 OK\r\n"
DEFERRED = b"451 4.3.0 temporary failure, try again later\r\n"
CANCELLED = b"501 5.7.0 authentication cancelled\r\n"
UNDECODABLE = b"501 5.5.2 cannot decode response\r\n"


def message_id_of(stuffed: bytes) -> str | None:
    """The Message-ID header of a message held as `Accepted.stuffed`, unfolded."""
    end = stuffed.find(b"\r\n\r\n")
    found = _MESSAGE_ID.search(stuffed, 2, len(stuffed) if end < 0 else end + 2)
    if found is None:
        return None
    return b" ".join(found[1].split()).decode("utf-8", "replace")


def _address(argument: bytes) -> str:
    """The address of ``FROM:<a@b> SIZE=10`` or ``TO:<a@b>`` (bare addresses tolerated)."""
    value = argument.partition(b":")[2].strip()
    if value.startswith(b"<"):
        value = value[1 : value.find(b">")] if b">" in value else value[1:]
    else:
        value = value.split(b" ", 1)[0]
    return value.decode("utf-8", "replace")


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


class SmtpSession(asyncio.BufferedProtocol):
    """One client connection; `on_message` is called once per accepted message.

    A BufferedProtocol: the loop reads into `_received` with recv_into, where a plain
    Protocol gets a fresh 256 KiB bytes object per read, which doubled the sink's CPU per
    message. One buffer serves every session: the loop reads one socket at a time and
    `buffer_updated` copies what arrived before it returns.
    """

    _received = memoryview(bytearray(RECEIVE_SIZE))

    def __init__(
        self, hostname: str, on_message: Callable[[Accepted], None], defer_rate: float = 0.0
    ) -> None:
        self._hostname = hostname.encode()
        self._on_message = on_message
        # This fraction of messages, chosen at random, is answered 451 after DATA instead of
        # accepted: a provider's temporary failures, for tests of the retries.
        self._defer_rate = defer_rate
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._in_data = False
        self._scan_from = 0  # where the search for the end of DATA resumes
        self._auth_step: Callable[[bytes], bytes] | None = None
        self._user: str | None = None
        self._mail_from: str | None = None
        self._recipients: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP server's is one
        self._transport.write(b"220 " + self._hostname + b" mailfleet-sink ESMTP ready\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer.clear()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._received

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._received[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._buffer += data
        replies: list[bytes] = []
        closing = False
        while not closing:
            if self._in_data:
                reply = self._take_message()
                if reply is None:
                    break
            else:
                newline = self._buffer.find(b"\n")
                if newline < 0:
                    if len(self._buffer) > MAX_LINE:
                        replies.append(b"500 5.5.2 line too long\r\n")
                        closing = True
                    break
                line = bytes(self._buffer[:newline]).rstrip(b"\r")
                del self._buffer[: newline + 1]
                reply = self._auth_step(line) if self._auth_step else self._command(line)
            replies.append(reply)
            closing = reply.startswith((b"221", b"421"))
        transport = self._transport
        if transport is not None:
            if replies:
                transport.write(b"".join(replies))
            if closing:
                transport.close()

    def _take_message(self) -> bytes | None:
        """The reply to a complete message, or None while its end has not arrived."""
        end = self._buffer.find(_END_OF_DATA, self._scan_from)
        if end < 0:
            if len(self._buffer) > MAX_MESSAGE:
                return b"421 4.3.4 message too big, closing\r\n"
            self._scan_from = max(0, len(self._buffer) - len(_END_OF_DATA) + 1)
            return None
        stuffed = bytes(self._buffer[: end + 2])
        del self._buffer[: end + len(_END_OF_DATA)]
        self._in_data = False
        if self._defer_rate and random.random() < self._defer_rate:  # noqa: S311 - not a secret
            self._reset()
            return DEFERRED
        self._on_message(
            Accepted(
                message_id=message_id_of(stuffed),
                mail_from=self._mail_from or "",
                recipients=self._recipients,
                user=self._user,
                at=time.time(),
                stuffed=stuffed,
            )
        )
        self._reset()
        return OK

    def _reset(self) -> None:
        self._mail_from = None
        self._recipients = []

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        argument = line[5:]
        if verb == b"MAIL":
            if self._mail_from is not None:
                return b"503 5.5.1 nested MAIL command\r\n"
            self._mail_from = _address(argument)
            return OK
        if verb == b"RCPT":
            if self._mail_from is None:
                return b"503 5.5.1 need MAIL before RCPT\r\n"
            self._recipients.append(_address(argument))
            return OK
        if verb == b"DATA":
            if not self._recipients:
                return b"503 5.5.1 need RCPT before DATA\r\n"
            self._in_data = True
            # A leading CRLF makes the first line look like every other one to the search for
            # the end and to unstuffing; it is dropped again with the message.
            self._buffer[0:0] = b"\r\n"
            self._scan_from = 0
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"EHLO":
            self._reset()
            return b"".join(
                (
                    b"250-", self._hostname, b"\r\n",
                    b"250-PIPELINING\r\n",
                    b"250-8BITMIME\r\n",
                    b"250-SMTPUTF8\r\n",
                    b"250-SIZE %d\r\n" % MAX_MESSAGE,
                    b"250 AUTH PLAIN LOGIN\r\n",
                )
            )  # fmt: skip
        if verb == b"HELO":
            self._reset()
            return b"250 " + self._hostname + b"\r\n"
        if verb == b"RSET":
            self._reset()
            return OK
        if verb == b"NOOP":
            return OK
        if verb == b"QUIT":
            return b"221 2.0.0 bye\r\n"
        if verb == b"AUTH":
            return self._auth(argument)
        if verb == b"VRFY":
            return b"252 2.1.5 cannot verify, will accept\r\n"
        return b"502 5.5.1 command not implemented\r\n"

    def _auth(self, argument: bytes) -> bytes:
        if self._user is not None:
            return b"503 5.5.1 already authenticated\r\n"
        mechanism, _, initial = argument.strip().partition(b" ")
        mechanism = mechanism.upper()
        if mechanism == b"PLAIN":
            if initial:
                return self._auth_plain(initial)
            self._auth_step = self._auth_plain
            return b"334 \r\n"
        if mechanism == b"LOGIN":
            if initial:
                return self._auth_login_user(initial)
            self._auth_step = self._auth_login_user
            return b"334 " + _b64("Username:") + b"\r\n"
        return b"504 5.5.4 unrecognized authentication mechanism\r\n"

    def _auth_plain(self, response: bytes) -> bytes:
        self._auth_step = None
        if response == b"*":
            return CANCELLED
        try:
            # RFC 4616: authzid NUL authcid NUL password
            parts = base64.b64decode(response, validate=True).split(b"\0")
        except binascii.Error:
            return UNDECODABLE
        if len(parts) != 3:
            return b"501 5.5.2 malformed PLAIN response\r\n"
        return self._authenticated(parts[1])

    def _auth_login_user(self, response: bytes) -> bytes:
        self._auth_step = None
        if response == b"*":
            return CANCELLED
        try:
            user = base64.b64decode(response, validate=True)
        except binascii.Error:
            return UNDECODABLE
        self._auth_step = lambda password: self._auth_login_password(user, password)
        return b"334 " + _b64("Password:") + b"\r\n"

    def _auth_login_password(self, user: bytes, response: bytes) -> bytes:
        self._auth_step = None
        if response == b"*":
            return CANCELLED
        return self._authenticated(user)

    def _authenticated(self, user: bytes) -> bytes:
        self._user = user.decode("utf-8", "replace")
        return b"235 2.7.0 authentication succeeded\r\n"
