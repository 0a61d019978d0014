"""Login: exchange an email and password for an access token."""

from datetime import UTC, datetime

from fastapi import APIRouter

from mailfleet_api import auth, queries, schemas
from mailfleet_api.deps import DbConn, TokenSignerDep
from mailfleet_api.errors import UnauthenticatedError

router = APIRouter(prefix="/api/admin", tags=["auth"])


@router.post("/login")
async def login(
    body: schemas.LoginRequest, conn: DbConn, signer: TokenSignerDep
) -> schemas.AccessToken:
    """Exchange an email and password for a bearer access token."""
    row = await queries.fetch_login(conn, body.email)
    password_ok = auth.verify_password(None if row is None else row["password_hash"], body.password)
    if row is None or not password_ok or row["disabled"]:
        raise UnauthenticatedError("invalid email or password")
    now = datetime.now(UTC)
    token, expires_at = signer.issue(row["id"], now)
    return schemas.AccessToken(
        access_token=token,
        expires_at=expires_at,
        expires_in=int((expires_at - now).total_seconds()),
    )
