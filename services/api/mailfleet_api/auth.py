"""Credentials: argon2 password hashes, signed access tokens (JWT) and API keys."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import anyio
import anyio.to_thread
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from mailfleet_api.errors import TooManyRequestsError, UnauthenticatedError
from mailfleet_api.settings import MIN_JWT_SECRET_LENGTH, AuthSettings

Role = Literal["admin", "operator", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}

API_KEY_SCHEME = "mf"
_JWT_ALGORITHM = "HS256"
_hasher = PasswordHasher()
# Verified against when the email is unknown, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


MIN_PASSWORD_CHARS = 12
# zxcvbn's score from 0 (guessable in under 10^3 tries) to 4 (over 10^10): 3 and up are
# "safely unguessable" against an online attack, what a throttled login faces.
MIN_PASSWORD_SCORE = 3
# zxcvbn refuses longer inputs (its matching is superlinear); a password whose first 72
# characters are strong is strong.
_ZXCVBN_MAX_CHARS = 72


def password_problem(password: str, email: str = "") -> str | None:
    """Why a new password is refused by the password policy, or None if it is acceptable."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the password needs at least {MIN_PASSWORD_CHARS} characters"
    if not password.strip():
        return "the password must not be blank"
    local_part = email.partition("@")[0]
    found = zxcvbn(password[:_ZXCVBN_MAX_CHARS], user_inputs=[email, local_part])
    if found["score"] < MIN_PASSWORD_SCORE:
        warning = found["feedback"]["warning"] or "it is easy to guess"
        return f"the password is too easy to guess: {warning.rstrip('.')}"
    return None


class InsecureSecretError(ValueError):
    """The configured JWT secret is missing or too short."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password; with no hash (unknown user) spend the same time and say no."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


class PasswordHasherPool:
    """argon2 hashing and checking in a few threads, off the event loop.

    Each takes ~50 ms of CPU, which on the loop would hold up every other request; argon2-cffi
    releases the GIL, so the threads run in parallel with it.
    """

    def __init__(self, workers: int, max_waiting: int) -> None:
        self._limiter = anyio.CapacityLimiter(workers)
        self._max_waiting = max_waiting

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password; TooManyRequestsError if too many checks are waiting already."""
        # A flood of logins would otherwise queue for minutes, each holding a connection.
        if self._limiter.statistics().tasks_waiting >= self._max_waiting:
            raise TooManyRequestsError("too many logins at once; try again shortly", 1)
        return await anyio.to_thread.run_sync(
            verify_password, password_hash, password, limiter=self._limiter
        )

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(hash_password, password, limiter=self._limiter)


@dataclass(frozen=True)
class TokenSigner:
    """Issues and checks HS256 access tokens whose subject is a user id."""

    secret: str
    ttl: timedelta

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> "TokenSigner":
        secret = settings.jwt_secret.get_secret_value()
        if not secret and settings.dev_ephemeral_secret:
            secret = secrets.token_urlsafe(48)
        if len(secret) < MIN_JWT_SECRET_LENGTH:
            raise InsecureSecretError(
                f"MAILFLEET_AUTH__JWT_SECRET must hold at least {MIN_JWT_SECRET_LENGTH} "
                "characters (or leave it empty and set MAILFLEET_AUTH__DEV_EPHEMERAL_SECRET=true "
                "for a throwaway secret in development)"
            )
        return cls(secret=secret, ttl=timedelta(seconds=settings.token_ttl_s))

    def issue(self, user_id: UUID, now: datetime | None = None) -> tuple[str, datetime]:
        issued = now or datetime.now(UTC)
        expires = issued + self.ttl
        claims = {"sub": str(user_id), "iat": issued, "exp": expires, "typ": "access"}
        return jwt.encode(claims, self.secret, algorithm=_JWT_ALGORITHM), expires

    def user_id(self, token: str) -> UUID:
        """The user a valid, unexpired token was issued to."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[_JWT_ALGORITHM],
                options={"require": ["sub", "exp", "iat"]},
            )
            if claims.get("typ") != "access":
                raise UnauthenticatedError("not an access token")
            return UUID(claims["sub"])
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("access token expired") from exc
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise UnauthenticatedError("invalid access token") from exc


@dataclass(frozen=True)
class NewApiKey:
    prefix: str
    key: str
    key_hash: bytes


def generate_api_key() -> NewApiKey:
    """A key ``mf_<prefix>_<secret>``; only the prefix and a hash of the secret are stored."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(prefix, f"{API_KEY_SCHEME}_{prefix}_{secret}", hash_api_secret(secret))


def hash_api_secret(secret: str) -> bytes:
    # The secret is 256 random bits, so a fast hash is as safe as a slow one and keeps
    # per-request authentication cheap.
    return hashlib.sha256(secret.encode()).digest()


def split_api_key(token: str) -> tuple[str, str] | None:
    """(prefix, secret) of something shaped like an API key, else None."""
    scheme, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != API_KEY_SCHEME or not prefix or not secret:
        return None
    return prefix, secret


def api_secret_matches(secret: str, key_hash: bytes) -> bool:
    return hmac.compare_digest(hash_api_secret(secret), key_hash)
