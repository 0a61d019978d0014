"""Signed tracking tokens: round trips, rotation, and everything that must not verify."""

import binascii
import hashlib
import hmac
import secrets

import pytest
from mailfleet_common.tracking import (
    MAX_TOKEN_CHARS,
    InvalidTrackingKeysError,
    Token,
    TokenKind,
    TokenSigner,
    _KeyedSha256,
    parse_keys,
)

OLD = secrets.token_urlsafe(32)
NEW = secrets.token_urlsafe(32)
URL = "https://shop.example.com/p/42?utm_source=mail&q=caf%C3%A9&x=é#reviews"


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(parse_keys(f"{NEW},{OLD}"))


@pytest.mark.parametrize(
    ("kind", "url"),
    [(TokenKind.OPEN, None), (TokenKind.CLICK, URL), (TokenKind.UNSUBSCRIBE, None)],
)
def test_round_trip(signer: TokenSigner, kind: TokenKind, url: str | None) -> None:
    token = signer.sign(kind, 2**62, 1_800_000_000, url)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert signer.verify(token) == Token(kind, 2**62, 1_800_000_000, url)


def test_rotation_old_key_verifies_new_key_signs() -> None:
    before = TokenSigner(parse_keys(OLD)).sign(TokenKind.OPEN, 7, 1)
    rotated = TokenSigner(parse_keys(f"{NEW},{OLD}"))
    assert rotated.verify(before) == Token(TokenKind.OPEN, 7, 1)
    after = rotated.sign(TokenKind.OPEN, 7, 1)
    assert after != before
    # Once the old key is dropped, its tokens stop verifying; the new ones still do.
    retired = TokenSigner(parse_keys(NEW))
    assert retired.verify(before) is None
    assert retired.verify(after) == Token(TokenKind.OPEN, 7, 1)


def test_every_single_character_change_is_rejected(signer: TokenSigner) -> None:
    token = signer.sign(TokenKind.CLICK, 12345, 1_800_000_000, URL)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in range(len(token)):
        for replacement in alphabet:
            if replacement == token[position]:
                continue
            tampered = token[:position] + replacement + token[position + 1 :]
            assert signer.verify(tampered) is None, (position, replacement)


def test_truncated_extended_and_garbage_tokens_are_rejected(signer: TokenSigner) -> None:
    token = signer.sign(TokenKind.OPEN, 99, 1_800_000_000)
    for cut in range(len(token)):
        assert signer.verify(token[:cut]) is None
    for bad in (token + "A", token + "=", token + "!", "%" + token, "+" + token[1:], token + "\n"):
        assert signer.verify(bad) is None
    assert signer.verify("A" * (MAX_TOKEN_CHARS + 4)) is None
    assert signer.verify("") is None
    assert signer.verify("not a token at all") is None


def test_foreign_key_and_forged_payload_are_rejected(signer: TokenSigner) -> None:
    foreign = TokenSigner(parse_keys(secrets.token_urlsafe(32)))
    assert signer.verify(foreign.sign(TokenKind.OPEN, 1, 1)) is None
    # Another message's id with the original signature: the MAC no longer matches.
    raw = bytearray(binascii.a2b_base64(_padded(signer.sign(TokenKind.OPEN, 1, 1))))
    raw[10] ^= 0x02
    assert signer.verify(_unpadded(bytes(raw))) is None


def test_kind_and_url_must_agree(signer: TokenSigner) -> None:
    # An open token carrying a URL, or a click token without one, is not something we make.
    assert signer.verify(signer.sign(TokenKind.OPEN, 1, 1, "https://example.com")) is None
    assert signer.verify(signer.sign(TokenKind.CLICK, 1, 1)) is None


@pytest.mark.parametrize("value", ["", " , ", "short-key", f"{NEW},short"])
def test_key_sets_must_be_long_secrets(value: str) -> None:
    with pytest.raises(InvalidTrackingKeysError):
        parse_keys(value)


def _padded(token: str) -> str:
    return token.replace("-", "+").replace("_", "/") + "=" * (-len(token) % 4)


def _unpadded(raw: bytes) -> str:
    encoded = binascii.b2a_base64(raw, newline=False).decode()
    return encoded.replace("+", "-").replace("/", "_").rstrip("=")


@pytest.mark.parametrize("key_size", [1, 32, 63, 64, 65, 200])
def test_the_precomputed_hmac_is_hmac_sha256(key_size: int) -> None:
    key = secrets.token_bytes(key_size)
    keyed = _KeyedSha256(key)
    for message in (b"", b"x", secrets.token_bytes(15), secrets.token_bytes(5000)):
        assert keyed.mac(message) == hmac.digest(key, message, hashlib.sha256)
        assert keyed.mac(message) == keyed.mac(message)  # the precomputed states are reused
