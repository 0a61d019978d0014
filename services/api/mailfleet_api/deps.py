"""FastAPI dependencies: the pool, broker and helpers from lifespan state, and the caller."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, cast
from uuid import UUID

from fastapi import Depends, Path, Query, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream.rabbit import RabbitBroker
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn, Pool

from mailfleet_api import auth, queries
from mailfleet_api.errors import ForbiddenError, UnauthenticatedError, UnsupportedMediaTypeError
from mailfleet_api.rate_limits import RateLimiter
from mailfleet_api.settings import Settings
from mailfleet_api.throttle import LoginThrottle


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (by token) or one of their API keys, and the role it carries.

    ``rate_limit``: the key's own rate, counted instead of the default one (None: the default).
    """

    user_id: UUID
    role: auth.Role
    api_key_id: UUID | None = None
    rate_limit: str | None = None

    @property
    def key(self) -> str:
        """Scope of idempotency keys: each credential has its own."""
        return f"key:{self.api_key_id}" if self.api_key_id else f"user:{self.user_id}"


def _state(request: Request, name: str) -> Any:
    return getattr(request.state, name)


def get_pool(request: Request) -> Pool:
    pool: Pool = _state(request, "pool")
    return pool


def get_broker(request: Request) -> RabbitBroker:
    broker: RabbitBroker = _state(request, "broker")
    return broker


def get_settings(request: Request) -> Settings:
    settings: Settings = _state(request, "settings")
    return settings


def get_secret_box(request: Request) -> SecretBox:
    box: SecretBox = _state(request, "secret_box")
    return box


def get_token_signer(request: Request) -> auth.TokenSigner:
    signer: auth.TokenSigner = _state(request, "token_signer")
    return signer


def get_passwords(request: Request) -> auth.PasswordHasherPool:
    passwords: auth.PasswordHasherPool = _state(request, "passwords")
    return passwords


def get_login_throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = _state(request, "login_throttle")
    return throttle


def get_rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = _state(request, "rate_limiter")
    return limiter


async def get_conn(pool: Annotated[Pool, Depends(get_pool)]) -> AsyncIterator[Conn]:
    async with pool.acquire() as conn:
        yield cast(Conn, conn)  # a pooled connection proxies every Connection method


PoolDep = Annotated[Pool, Depends(get_pool)]
DbConn = Annotated[Conn, Depends(get_conn)]
BrokerDep = Annotated[RabbitBroker, Depends(get_broker)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SecretBoxDep = Annotated[SecretBox, Depends(get_secret_box)]
TokenSignerDep = Annotated[auth.TokenSigner, Depends(get_token_signer)]
PasswordsDep = Annotated[auth.PasswordHasherPool, Depends(get_passwords)]
LoginThrottleDep = Annotated[LoginThrottle, Depends(get_login_throttle)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]

_bearer = HTTPBearer(auto_error=False, description="An access token from login, or an API key.")


async def get_bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None:
        raise UnauthenticatedError("missing bearer credentials")
    return credentials.credentials


async def get_principal(
    # Resolved first, so an anonymous call is refused before it takes a connection.
    token: Annotated[str, Depends(get_bearer_token)],
    conn: DbConn,
    signer: TokenSignerDep,
    limiter: RateLimiterDep,
    request: Request,
) -> Principal:
    """The authenticated caller, from an access token or an API key; 401 otherwise.

    Each call is counted against the caller's default rate limit, or its key's own (429 past
    it).
    """
    principal = await _authenticate(token, conn, signer)
    await limiter.charge(request.scope, principal.key, "default", principal.rate_limit)
    return principal


async def _authenticate(token: str, conn: Conn, signer: auth.TokenSigner) -> Principal:
    api_key = auth.split_api_key(token)
    if api_key is not None:
        prefix, secret = api_key
        row = await queries.fetch_api_key_for_auth(conn, prefix)
        if row is None or not auth.api_secret_matches(secret, row["key_hash"]):
            raise UnauthenticatedError("unknown or revoked API key")
        await queries.touch_api_key(conn, row["id"])
        # A key never carries more than its owner's current role.
        role = min(row["key_role"], row["user_role"], key=auth.ROLE_RANK.__getitem__)
        return Principal(
            user_id=row["user_id"], role=role, api_key_id=row["id"], rate_limit=row["rate_limit"]
        )
    user_id = signer.user_id(token)
    user_role = await queries.fetch_user_role(conn, user_id)
    if user_role is None:
        raise UnauthenticatedError("user unknown or disabled")
    return Principal(user_id=user_id, role=user_role)  # type: ignore[arg-type]


def _require(minimum: auth.Role) -> Any:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if auth.ROLE_RANK[principal.role] < auth.ROLE_RANK[minimum]:
            raise ForbiddenError(f"this needs the {minimum} role; you have {principal.role}")
        return principal

    return Depends(check)


async def _count_heavy(
    principal: Annotated[Principal, Depends(get_principal)],
    limiter: RateLimiterDep,
    request: Request,
) -> None:
    await limiter.charge(request.scope, principal.key, "heavy")


# In a route's dependencies: the route queues or streams a lot, and is counted against the
# heavy rate limit too.
HEAVY = Depends(_count_heavy)

Viewer = Annotated[Principal, _require("viewer")]
Operator = Annotated[Principal, _require("operator")]
Admin = Annotated[Principal, _require("admin")]

Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="The next_cursor of the previous page.")
]
# The id of a row whose key is a bigint identity.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _reads_json(route: Any) -> bool:
    if not isinstance(route, APIRoute):
        return False
    declared = (route.openapi_extra or {}).get("requestBody", {}).get("content", {})
    return route.body_field is not None or "application/json" in declared


async def require_json_body(request: Request) -> None:
    """415 for a body that is not JSON sent to a route that reads JSON (applied to every route).

    Checked before the body is read, so bytes in another encoding are never decoded as JSON.
    """
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    if not has_body or not _reads_json(request.scope.get("route")):
        return
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaTypeError("send the body as application/json")
