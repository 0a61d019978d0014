"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with key rotation via MultiFernet.

Fernet is the `cryptography` project's authenticated-encryption recipe; MultiFernet gives
rotation for free: the first key encrypts, every key decrypts, `rotate` re-encrypts.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from mailfleet_common.errors import MailfleetError
from mailfleet_common.settings import CryptoSettings


class SecretBoxError(MailfleetError):
    """A secret could not be decrypted with any configured key, or no key is configured."""


class SecretBox:
    """Encrypts and decrypts short secrets (SMTP/IMAP passwords, OAuth tokens)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretBoxError("no encryption key configured (MAILFLEET_CRYPTO__KEYS)")
        try:
            self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in keys])
        except ValueError as exc:
            raise SecretBoxError(f"invalid encryption key: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: CryptoSettings) -> "SecretBox":
        raw = settings.keys.get_secret_value()
        return cls([key for key in raw.split(",") if key.strip()])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise SecretBoxError("secret cannot be decrypted with the configured keys") from exc

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token under the newest key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as exc:
            raise SecretBoxError("secret cannot be decrypted with the configured keys") from exc


def generate_key() -> str:
    return Fernet.generate_key().decode()
