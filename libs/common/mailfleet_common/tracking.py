"""Signed tracking tokens: what the sender puts in URLs and the tracker checks, with no lookup.

A token is URL-safe base64 (no padding) of::

    version (1) | kind (1) | key id (1) | message id (8) | issued at (4) | url (n) | mac (16)

- kind: open, click or unsubscribe; only a click token carries a URL (UTF-8), the link's
  original target, so the redirect can only go where the message pointed.
- key id: the first byte of SHA-256 of the signing key, so verification tries only the key
  (or the rare keys) it names. Keys rotate like the Fernet ones: the first signs, every key
  listed verifies, so a new key is prepended and an old one dropped once its mail is old.
- mac: HMAC-SHA256 over everything before it, truncated to 128 bits.

Anything that does not decode strictly, names an unknown key or fails the MAC is rejected.
"""

import binascii
import hashlib
import hmac
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

_VERSION = 1
_HEAD = struct.Struct(">BBBQI")
_MAC_BYTES = 16
_MIN_KEY_CHARS = 32
# Far longer than any real link; a cap keeps hostile input from costing decoding time.
MAX_TOKEN_CHARS = 8192
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_ALPHABET_INDEX = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# By unpadded length mod 4: the low bits of the last character that carry no data.
_UNUSED_BITS = {2: 0x0F, 3: 0x03}


class TokenKind(IntEnum):
    OPEN = 1
    CLICK = 2
    UNSUBSCRIBE = 3


_KINDS = {kind.value: kind for kind in TokenKind}


class Token(NamedTuple):
    """What a verified token names (a tuple: the tracker makes one per request)."""

    kind: TokenKind
    message_id: int
    issued_at: int  # Unix seconds when the message was built
    url: str | None = None


class InvalidTrackingKeysError(ValueError):
    """The configured key set is empty or holds a key too short to be secret."""


def parse_keys(value: str) -> list[bytes]:
    """Comma-separated secrets, newest first, each at least 32 characters."""
    keys = [part.strip() for part in value.split(",") if part.strip()]
    if not keys:
        raise InvalidTrackingKeysError("no tracking key configured (MAILFLEET_TRACKING__KEYS)")
    for key in keys:
        if len(key) < _MIN_KEY_CHARS:
            raise InvalidTrackingKeysError(
                f"every tracking key must be at least {_MIN_KEY_CHARS} characters"
            )
    return [key.encode() for key in keys]


def _encode(raw: bytes) -> str:
    encoded = binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE)
    return encoded.rstrip(b"=").decode("ascii")


def _key_id(key: bytes) -> int:
    return hashlib.sha256(key).digest()[0]


class _KeyedSha256:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer hash states computed once.

    Exactly hmac.digest(key, message, "sha256") (the tests compare them), at a third of the
    cost of copying an hmac.HMAC: the tracker checks one MAC per request, the sender makes
    several per message.
    """

    __slots__ = ("_inner", "_outer")
    _BLOCK = 64

    def __init__(self, key: bytes) -> None:
        if len(key) > self._BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class TokenSigner:
    """Signs with the first key, verifies with any of them."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise InvalidTrackingKeysError("no tracking key configured")
        self._signing = _KeyedSha256(keys[0])
        self._signing_id = _key_id(keys[0])
        self._by_id: dict[int, list[_KeyedSha256]] = {}
        for key in keys:
            self._by_id.setdefault(_key_id(key), []).append(_KeyedSha256(key))

    @staticmethod
    def _mac(keyed: "_KeyedSha256", body: bytes) -> bytes:
        return keyed.mac(body)[:_MAC_BYTES]

    def sign(self, kind: TokenKind, message_id: int, issued_at: int, url: str | None = None) -> str:
        body = _HEAD.pack(_VERSION, kind, self._signing_id, message_id, issued_at)
        if url is not None:
            body += url.encode()
        return _encode(body + self._mac(self._signing, body))

    def verify(self, token: str) -> Token | None:
        """The token's content, or None for anything not made by one of our keys."""
        size = len(token)
        if not size or size > MAX_TOKEN_CHARS or size % 4 == 1:
            return None
        # Only the URL-safe alphabet, unpadded: "+", "/" or "=" would decode to the same bytes.
        if "+" in token or "/" in token or "=" in token:
            return None
        try:
            padded = token.replace("-", "+").replace("_", "/") + "=" * (-size % 4)
            raw = binascii.a2b_base64(padded, strict_mode=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) < _HEAD.size + _MAC_BYTES:
            return None
        # The last character's unused low bits must be zero, as our encoder writes them:
        # otherwise several tokens would decode to the same bytes.
        if size % 4 and _ALPHABET_INDEX.get(token[-1], 0) & _UNUSED_BITS[size % 4]:
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        version, kind, key_id, message_id, issued_at = _HEAD.unpack_from(body)
        if version != _VERSION:
            return None
        for keyed in self._by_id.get(key_id, ()):
            if hmac.compare_digest(self._mac(keyed, body), mac):
                break
        else:
            return None
        token_kind = _KINDS.get(kind)
        if token_kind is None:
            return None
        url = None
        if len(body) > _HEAD.size:
            if token_kind is not TokenKind.CLICK:
                return None
            try:
                url = body[_HEAD.size :].decode()
            except UnicodeDecodeError:
                return None
        elif token_kind is TokenKind.CLICK:
            return None
        return Token(token_kind, message_id, issued_at, url)


def open_path(token: str) -> str:
    return f"/track/open/{token}"


def click_path(token: str) -> str:
    return f"/track/click/{token}"


def unsubscribe_path(token: str) -> str:
    return f"/unsubscribe/{token}"
