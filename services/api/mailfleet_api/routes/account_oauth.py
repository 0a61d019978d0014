"""OAuth2 credentials of accounts: importing a refresh token or a service-account key."""

from uuid import UUID

from fastapi import APIRouter
from mailfleet_common import oauth

from mailfleet_api import queries, schemas
from mailfleet_api.deps import Admin, DbConn, SecretBoxDep
from mailfleet_api.errors import ConflictError, InvalidError, NotFoundError
from mailfleet_api.schemas.oauth import OAuthImport

router = APIRouter(prefix="/api/admin/accounts", tags=["accounts"])


@router.post("/{account_id}/oauth")
async def import_oauth_credentials(
    account_id: UUID, body: OAuthImport, conn: DbConn, box: SecretBoxDep, _: Admin
) -> schemas.Account:
    """Store the account's OAuth2 credentials (encrypted, never shown again); replaces any."""
    if body.service_account_key is not None:
        try:
            oauth.check_service_account_key(body.service_account_key)
        except ValueError as exc:
            raise InvalidError(str(exc)) from exc
    async with conn.transaction():
        current = await queries.lock_account(conn, account_id)
        if current is None:
            raise NotFoundError(f"no account {account_id}")
        if current.status == "archived":
            raise ConflictError("the account is archived")
        if body.service_account_key is not None and body.subject is not None:
            await oauth.import_service_account(
                conn, box, account_id, body.service_account_key, body.subject
            )
        elif body.refresh_token is not None:
            await oauth.import_refresh_token(
                conn, box, account_id, body.provider, body.refresh_token.get_secret_value()
            )
    account = await queries.fetch_account(conn, account_id)
    assert account is not None  # noqa: S101 - accounts are archived, never deleted
    return account
