"""Login: exchange an email and password for an access token."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from mailfleet_api import queries, schemas
from mailfleet_api.deps import DbConn, LoginThrottleDep, PasswordsDep, TokenSignerDep
from mailfleet_api.errors import UnauthenticatedError

router = APIRouter(prefix="/api/admin", tags=["auth"])


_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"description": "The email or the password is wrong, or the user is disabled."},
    429: {
        "description": "Too many failed logins: retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {
                "description": "Seconds until the oldest counted failure leaves the window.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
}


@router.post("/login", responses=_ANSWERS)
async def login(
    body: schemas.LoginRequest,
    request: Request,
    conn: DbConn,
    signer: TokenSignerDep,
    passwords: PasswordsDep,
    throttle: LoginThrottleDep,
) -> schemas.AccessToken:
    """Exchange an email and password for a bearer access token (429 after repeated failures)."""
    client = request.client.host if request.client else "unknown"
    await throttle.check(body.email, client)
    row = await queries.fetch_login(conn, body.email)
    password_ok = await passwords.verify(
        None if row is None else row["password_hash"], body.password
    )
    if row is None or not password_ok or row["disabled"]:
        await throttle.failed(body.email, client)
        raise UnauthenticatedError("invalid email or password")
    await throttle.succeeded(body.email)
    now = datetime.now(UTC)
    token, expires_at = signer.issue(row["id"], now)
    return schemas.AccessToken(
        access_token=token,
        expires_at=expires_at,
        expires_in=int((expires_at - now).total_seconds()),
    )
