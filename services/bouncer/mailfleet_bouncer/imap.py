"""One account's mailbox over IMAP (aioimaplib): select, list new UIDs, fetch, flag or move.

Only UID commands are used: sequence numbers shift when another client expunges, UIDs do not,
and UIDVALIDITY says when they were reassigned.
"""

import asyncio
import base64
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import aioimaplib

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_LINE = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")


class ImapError(Exception):
    """The server refused a command, or answered what this client cannot use."""


class TokenRefusedError(ImapError):
    """The server refused the OAuth2 access token (XOAUTH2): revoked, expired or not the user's."""


class _SaslCommand(aioimaplib.Command):  # type: ignore[misc]
    """AUTHENTICATE that answers the server's continuations itself.

    aioimaplib 2 hands a continuation to the pending command and sends nothing, so its own
    xoauth2() waits for ever when a token is refused: the server then sends the error as a
    base64 JSON challenge and waits for an empty line before its tagged NO
    (developers.google.com/gmail/imap/xoauth2-protocol). Without SASL-IR the initial response
    goes in answer to the first (empty) continuation instead of on the command line.
    """

    def __init__(
        self, protocol: aioimaplib.IMAP4ClientProtocol, mechanism: str, initial: str, sasl_ir: bool
    ) -> None:
        args = (mechanism, initial) if sasl_ir else (mechanism,)
        super().__init__("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        self._protocol = protocol
        self._pending = None if sasl_ir else initial
        self.challenges: list[bytes] = []

    def flush(self) -> None:
        line = bytes(self._resp_lines[-1]) if self._resp_lines else b""
        if not line.startswith(b"+"):
            return
        self.challenges.append(line[1:].strip())
        answer, self._pending = self._pending or "", None
        self._protocol.transport.write(answer.encode("ascii") + b"\r\n")


@dataclass(frozen=True, slots=True)
class Fetched:
    """A message read from a mailbox (over IMAP, or through an API: then uid is 0)."""

    uid: int
    size: int  # the whole message's size on the server
    raw: bytes  # the message, or its first `limit` bytes when truncated
    provider_id: str | None = None  # the API's message id (Gmail's)

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.size


@dataclass(frozen=True, slots=True)
class Selected:
    uidvalidity: int
    exists: int


def quote(name: str) -> str:
    """An IMAP quoted string (RFC 3501 section 4.3) for a folder name."""
    if any(c in name for c in "\r\n\0"):
        raise ImapError("folder names cannot hold CR, LF or NUL")
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _check(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise ImapError(f"{what}: {response.result} {detail}".strip())
    return response


def uid_set(uids: list[int]) -> str:
    """A compact UID set: consecutive runs as ranges (1:4,7,9:10)."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


# aioimaplib parses a received chunk recursively, one stack frame per line: a response of a
# thousand lines (FETCH sizes, EXPUNGE after a move) would overflow the stack. Commands over
# many UIDs go in groups small enough for that never to happen.
UID_GROUP = 200


def _groups(uids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(uids), UID_GROUP):
        yield uids[start : start + UID_GROUP]


def _fetch_items(lines: list[bytes | bytearray]) -> Iterator[tuple[bytes, bytes | None]]:
    """Each FETCH response line with the literal that follows it, if any."""
    index = 0
    while index < len(lines):
        line = bytes(lines[index])
        index += 1
        if not _FETCH_LINE.match(line):
            continue
        literal = None
        if _LITERAL.search(line) and index < len(lines):
            literal = bytes(lines[index])
            index += 1
        yield line, literal


class Mailbox:
    """A logged-in IMAP session on one folder. Use `async with Mailbox.open(...)`."""

    def __init__(self, client: aioimaplib.IMAP4, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        tls: str,
        username: str,
        password: str | None,
        *,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        access_token: str | None = None,
    ) -> "Mailbox":
        """Connect (implicit TLS, STARTTLS or plain) and log in.

        With the password, or with an OAuth2 access token by XOAUTH2 (TokenRefusedError when the
        server refuses it).
        """
        context = ssl_context or ssl.create_default_context()
        if tls == "implicit":
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host, port, timeout=timeout_s, ssl_context=context
            )
        else:
            client = aioimaplib.IMAP4(host, port, timeout=timeout_s)
        mailbox = cls(client, timeout_s)
        try:
            await client.wait_hello_from_server()
            if tls == "starttls":
                await mailbox._starttls(host, context)
            if access_token is not None:
                await mailbox._xoauth2(username, access_token)
            else:
                _check(await client.login(username, password or ""), "LOGIN")
        except BaseException:
            await mailbox.close()
            raise
        return mailbox

    async def _starttls(self, host: str, context: ssl.SSLContext) -> None:
        # aioimaplib knows the command but has no method for it: run it, then upgrade the
        # transport under the same protocol object and ask for the capabilities again, as
        # RFC 3501 section 6.2.1 requires (the ones sent in the clear are not to be trusted).
        protocol = self._client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        _check(await asyncio.wait_for(protocol.execute(command), self._timeout), "STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            protocol.transport,
            protocol,
            context,
            server_hostname=host,
            ssl_handshake_timeout=self._timeout,
        )
        protocol.transport = transport
        await asyncio.wait_for(protocol.capability(), self._timeout)

    async def _xoauth2(self, username: str, token: str) -> None:
        protocol = self._client.protocol
        if "AUTH=XOAUTH2" not in protocol.capabilities:
            raise ImapError("the server does not offer AUTH=XOAUTH2")
        initial = base64.b64encode(f"user={username}\1auth=Bearer {token}\1\1".encode()).decode()
        command = _SaslCommand(protocol, "XOAUTH2", initial, "SASL-IR" in protocol.capabilities)
        response = await asyncio.wait_for(protocol.execute(command, scrub=initial), self._timeout)
        if response.result != "OK":
            detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
            raise TokenRefusedError(f"AUTHENTICATE XOAUTH2: {response.result} {detail}".strip())
        protocol.state = aioimaplib.AUTH
        # The capabilities before login are not those after (RFC 3501 section 6.2.2: MOVE...).
        await asyncio.wait_for(protocol.capability(), self._timeout)

    async def select(self, folder: str) -> Selected:
        response = _check(await self._client.select(quote(folder)), f"SELECT {folder}")
        validity = None
        exists = 0
        for line in response.lines:
            raw = bytes(line)
            if match := _UIDVALIDITY.search(raw):
                validity = int(match.group(1))
            elif raw.endswith(b" EXISTS"):
                exists = int(raw.split()[0])
        if validity is None:
            raise ImapError(f"SELECT {folder}: the server sent no UIDVALIDITY")
        return Selected(validity, exists)

    async def search(self, criteria: str) -> list[int]:
        """UIDs matching a UID SEARCH, ascending."""
        response = _check(await self._client.uid_search(criteria, charset=None), "UID SEARCH")
        uids: list[int] = []
        # aioimaplib hands over the untagged "* SEARCH 1 2 3" as b"1 2 3"; the last line is
        # the tagged completion's text.
        for line in response.lines[:-1]:
            tokens = bytes(line).split()
            if tokens and tokens[0].upper() == b"SEARCH":
                tokens = tokens[1:]
            if all(token.isdigit() for token in tokens):
                uids.extend(int(token) for token in tokens)
        return sorted(uids)

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above last_uid. `N:*` also matches the highest UID when it is below N."""
        return [uid for uid in await self.search(f"UID {last_uid + 1}:*") if uid > last_uid]

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        """Each message's size; UIDs no longer in the folder are left out."""
        found: dict[int, int] = {}
        for group in _groups(uids):
            response = await self._client.uid("fetch", uid_set(group), "(UID RFC822.SIZE)")
            _check(response, "UID FETCH RFC822.SIZE")
            for line, _ in _fetch_items(response.lines):
                uid, size = _UID.search(line), _SIZE.search(line)
                if uid and size:
                    found[int(uid.group(1))] = int(size.group(1))
        return found

    async def fetch(self, uids: list[int], limit: int) -> list[Fetched]:
        """The messages (their first `limit` bytes at most), without setting the Seen flag.

        One command: callers keep `uids` to at most UID_GROUP.
        """
        response = await self._client.uid(
            "fetch", uid_set(uids), f"(UID RFC822.SIZE BODY.PEEK[]<0.{limit}>)"
        )
        _check(response, "UID FETCH BODY")
        fetched: list[Fetched] = []
        for line, literal in _fetch_items(response.lines):
            uid, size = _UID.search(line), _SIZE.search(line)
            if uid is None or literal is None:
                continue
            raw = literal
            total = int(size.group(1)) if size else len(raw)
            fetched.append(Fetched(int(uid.group(1)), max(total, len(raw)), raw))
        fetched.sort(key=lambda item: item.uid)
        return fetched

    async def mark_seen(self, uids: list[int]) -> None:
        for group in _groups(uids):
            response = await self._client.uid("store", uid_set(group), "+FLAGS.SILENT (\\Seen)")
            _check(response, "UID STORE")

    async def move(self, uids: list[int], folder: str) -> None:
        """Move to `folder`, creating it first if need be; COPY + EXPUNGE without MOVE."""
        target = quote(folder)
        await self.ensure_folder(folder)
        for group in _groups(uids):
            if "MOVE" in self._client.protocol.capabilities:
                _check(await self._client.uid("move", uid_set(group), target), "UID MOVE")
                continue
            _check(await self._client.uid("copy", uid_set(group), target), "UID COPY")
            await self._delete(group)

    async def _delete(self, uids: list[int]) -> None:
        _check(
            await self._client.uid("store", uid_set(uids), "+FLAGS.SILENT (\\Deleted)"),
            "UID STORE",
        )
        if "UIDPLUS" in self._client.protocol.capabilities:
            _check(await self._client.uid("expunge", uid_set(uids)), "UID EXPUNGE")
        else:
            _check(await self._client.expunge(), "EXPUNGE")

    async def ensure_folder(self, folder: str) -> None:
        response = await self._client.create(quote(folder))
        if response.result != "OK":
            text = b" ".join(bytes(line) for line in response.lines).upper()
            if b"ALREADYEXISTS" not in text and b"EXISTS" not in text:
                _check(response, f"CREATE {folder}")

    async def close(self) -> None:
        """Log out, or just drop the connection if that fails."""
        try:
            if self._client.protocol.state in ("AUTH", "SELECTED"):
                await asyncio.wait_for(self._client.logout(), self._timeout)
        except Exception:  # noqa: S110 - nothing more to do with a dying session
            pass
        transport = self._client.protocol.transport
        if transport is not None:
            transport.close()
