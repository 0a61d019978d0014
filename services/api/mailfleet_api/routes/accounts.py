"""SMTP accounts: configuration, status, their mailbox, usage today and recent feedback."""

from datetime import UTC, date, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, status
from mailfleet_common import oauth
from mailfleet_common.crypto import SecretBox
from pydantic import SecretStr

from mailfleet_api import pages, queries, schemas
from mailfleet_api.deps import Admin, Cursor, DbConn, Limit, Operator, SecretBoxDep, Viewer
from mailfleet_api.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from mailfleet_api.queries import webhooks as webhook_queries
from mailfleet_api.queries.accounts import AccountRow
from mailfleet_api.schemas.accounts import AccountPage

router = APIRouter(prefix="/api/admin/accounts", tags=["accounts"])

# What an operator may do to an account: pause it, or resume it after a pause.
_OPERATOR_STATUSES = {"active", "paused"}
# The status_reason of an oauth2 account paused until someone connects it.
CONSENT_REASON = (
    f"{oauth.CONSENT_NEEDED}: connect the account (POST /api/admin/accounts/{{id}}/oauth/consent)"
    " or import its credentials (POST /api/admin/accounts/{id}/oauth)"
)


def _today() -> date:
    return datetime.now(UTC).date()


def _status_reason(new_status: str, principal_role: str) -> str | None:
    return None if new_status == "active" else f"set {new_status} by an {principal_role} via API"


def _encrypted(password: SecretStr | None, box: SecretBox) -> bytes | None:
    return None if password is None else box.encrypt(password.get_secret_value())


# The imap_* columns of an account that reads no mailbox.
_NO_IMAP: dict[str, Any] = {
    "imap_host": None, "imap_port": None, "imap_tls": None, "imap_username": None,
    "imap_password_enc": None, "imap_folder": "INBOX", "imap_processed_folder": None,
}  # fmt: skip
# Another host, user or folder is another mailbox: the UIDs read so far say nothing about it.
_MAILBOX_IDENTITY = ("imap_host", "imap_username", "imap_folder")


def _imap_columns(
    current: AccountRow | None,
    changes: schemas.ImapCreate | schemas.ImapUpdate,
    box: SecretBox,
    auth_kind: str,
) -> dict[str, Any]:
    """The imap_* columns once `changes` apply to `current`: an update's fields set, or all.

    An oauth2 account signs in to IMAP with XOAUTH2: it needs no password.
    """
    values = {column: _NO_IMAP[column] if current is None else getattr(current, column)
              for column in _NO_IMAP}  # fmt: skip
    given = changes.model_fields_set if isinstance(changes, schemas.ImapUpdate) else None
    for name in type(changes).model_fields if given is None else given:
        value = getattr(changes, name)
        if name == "password":
            values["imap_password_enc"] = _encrypted(value, box)
        else:
            values[f"imap_{name}"] = value
    values["imap_tls"] = values["imap_tls"] or "implicit"
    values["imap_port"] = values["imap_port"] or schemas.IMAP_PORTS[values["imap_tls"]]
    required = {"imap.host": "imap_host", "imap.username": "imap_username"}
    if auth_kind == "password":
        required["imap.password"] = "imap_password_enc"
    missing = [name for name, column in required.items() if values[column] is None]
    if missing:
        raise InvalidError(f"the IMAP settings need {', '.join(missing)}")
    if values["imap_folder"] == values["imap_processed_folder"]:
        raise InvalidError("imap.processed_folder must differ from imap.folder")
    return values


def _check_sign_in(row: AccountRow, given: set[str]) -> None:
    """422 unless the account's kind, auth_kind and settings fit together.

    ``given``: the request's fields; a password stored before an import of OAuth2 credentials
    is only refused once the request touches how the account signs in.
    """
    smtp = {"smtp_host": row.smtp_host, "smtp_port": row.smtp_port, "smtp_tls": row.smtp_tls,
            "smtp_username": row.smtp_username, "smtp_password": row.smtp_password_enc}  # fmt: skip
    if row.kind == "gmail-api":
        if row.auth_kind != "oauth2":
            raise InvalidError("a gmail-api account signs in with OAuth2: auth_kind must be oauth2")
        if present := [name for name, value in smtp.items() if value is not None]:
            raise InvalidError(
                f"a gmail-api account sends through the Gmail API, as from_email, not by SMTP: "
                f"drop {', '.join(present)}"
            )
        if row.imap_host is not None:
            raise InvalidError(
                "a gmail-api account's mailbox is read through the Gmail API: drop imap"
            )
        return
    if missing := [name for name in ("smtp_host", "smtp_port", "smtp_tls") if smtp[name] is None]:
        raise InvalidError(f"an smtp account needs {', '.join(missing)}")
    if row.auth_kind == "oauth2":
        if row.smtp_username is None:
            raise InvalidError(
                "an oauth2 smtp account needs smtp_username: the mailbox it signs in as"
            )
        if row.smtp_password_enc is not None and given & {"smtp_password", "auth_kind"}:
            raise InvalidError(
                "an oauth2 account signs in with XOAUTH2, not a password: drop smtp_password "
                "(smtp_password: null removes a stored one)"
            )


def _auth_kind(
    body: schemas.AccountCreate | schemas.AccountUpdate, current: AccountRow | None
) -> str:
    """How the account signs in once the request applies; a gmail-api account by OAuth2."""
    if body.auth_kind is not None:
        return body.auth_kind
    if current is not None:
        return current.auth_kind
    return (
        "oauth2"
        if isinstance(body, schemas.AccountCreate) and body.kind == "gmail-api"
        else "password"
    )


def account_row(
    body: schemas.AccountCreate | schemas.AccountUpdate,
    current: AccountRow | None,
    box: SecretBox,
    role: str,
    connected: bool = False,
) -> AccountRow:
    """The columns to store once the request applies: all of a create, an update's fields set.

    The one place a request becomes a row: passwords are encrypted, ``warmup_enabled``
    becomes the day the ramp started, ``imap`` its columns, and a status its reason. An
    oauth2 account that is not ``connected`` (no usable credentials) cannot be active: it is
    paused for consent instead.
    """
    columns: dict[str, Any] = {}
    fields = type(body).model_fields if current is None else body.model_fields_set
    auth_kind = _auth_kind(body, current)
    for field in fields:
        value = getattr(body, field)
        if field == "auth_kind":
            columns[field] = auth_kind
        elif field == "smtp_password":
            columns["smtp_password_enc"] = _encrypted(value, box)
        elif field == "warmup_enabled":
            # Enabling again keeps the ramp where it is; disabling drops it.
            started = None if current is None else current.warmup_started_on
            columns["warmup_started_on"] = (started or _today()) if value else None
        elif field == "imap":
            columns.update(
                _NO_IMAP if value is None else _imap_columns(current, value, box, auth_kind)
            )
        elif field == "status":
            if current is None or value != current.status:
                columns["status"] = value
                columns["status_reason"] = _status_reason(value, role)
        else:
            columns[field] = value
    row = (
        AccountRow.model_validate(columns)
        if current is None
        else current.model_copy(update=columns)
    )
    _check_sign_in(row, set(fields))
    if row.auth_kind == "oauth2" and not connected and row.status == "active":
        if current is not None and current.status != "active" and "status" in fields:
            raise ConflictError(f"{CONSENT_REASON}; it can be resumed once connected")
        row = row.model_copy(update={"status": "paused", "status_reason": CONSENT_REASON})
    return row


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_account(
    body: schemas.AccountCreate, conn: DbConn, box: SecretBoxDep, principal: Admin
) -> schemas.Account:
    """Create an SMTP account; its password is stored encrypted and never returned."""
    account_id = await queries.insert_account(conn, account_row(body, None, box, principal.role))
    account = await queries.fetch_account(conn, account_id)
    assert account is not None  # noqa: S101 - inserted just now on this connection
    return account


@router.get("")
async def list_accounts(
    conn: DbConn,
    _: Viewer,
    limit: Limit = 50,
    cursor: Cursor = None,
    include_archived: Annotated[bool, Query()] = False,
    tag: Annotated[
        list[schemas.Tag] | None,
        Query(max_length=schemas.MAX_TAGS, description="Only accounts carrying any of these."),
    ] = None,
) -> AccountPage:
    """List accounts with today's usage, oldest first, optionally those of some pools."""
    after = pages.after(cursor, pages.BY_CREATION)
    items, more = await queries.list_accounts(conn, limit, after, include_archived, tag)
    return pages.cursor_page(AccountPage, items, more, limit, lambda a: (a.created_at, a.id))


@router.get("/{account_id}")
async def get_account(account_id: UUID, conn: DbConn, _: Viewer) -> schemas.Account:
    """Show one account with today's usage and effective limit."""
    account = await queries.fetch_account(conn, account_id)
    if account is None:
        raise NotFoundError(f"no account {account_id}")
    return account


@router.get("/{account_id}/health")
async def account_health(
    account_id: UUID,
    conn: DbConn,
    _: Viewer,
    window: Annotated[
        int, Query(ge=1, le=100_000, description="Count at most this many of the newest sends.")
    ] = 1000,
) -> schemas.AccountHealth:
    """Bounces, complaints and replies of the account's newest sends since it was resumed."""
    health = await queries.account_health(conn, account_id, window)
    if health is None:
        raise NotFoundError(f"no account {account_id}")
    return health


@router.patch("/{account_id}")
async def update_account(
    account_id: UUID,
    body: schemas.AccountUpdate,
    conn: DbConn,
    box: SecretBoxDep,
    principal: Operator,
) -> schemas.Account:
    """Change an account (admin), or pause/resume it (operator: only ``status``).

    Resuming (status back to active) starts the bounce and complaint rates afresh.
    """
    if principal.role != "admin" and (
        body.model_fields_set != {"status"} or body.status not in _OPERATOR_STATUSES
    ):
        raise ForbiddenError("an operator may only set status to active or paused")
    async with conn.transaction():
        current = await queries.lock_account(conn, account_id)
        if current is None:
            raise NotFoundError(f"no account {account_id}")
        if current.status == "archived":
            raise ConflictError("the account is archived")
        if principal.role != "admin" and current.status not in _OPERATOR_STATUSES:
            raise ForbiddenError(f"only an admin may change a {current.status} account")
        connected = await queries.has_usable_oauth(conn, account_id)
        row = account_row(body, current, box, principal.role, connected)
        resumed = row.status == "active" and current.status != "active"
        await queries.update_account(conn, account_id, row, restart_rates=resumed)
        if row.status != current.status and "paused" in (row.status, current.status):
            await webhook_queries.record_account_status(
                conn, account_id, row.status, current.status, row.status_reason
            )
        if any(getattr(row, c) != getattr(current, c) for c in _MAILBOX_IDENTITY):
            await queries.delete_mailbox_checkpoint(conn, account_id)
    account = await queries.fetch_account(conn, account_id)
    assert account is not None  # noqa: S101 - accounts are archived, never deleted
    return account


@router.delete("/{account_id}")
async def archive_account(account_id: UUID, conn: DbConn, _: Admin) -> schemas.Account:
    """Archive an account (status archived): it sends nothing more; its history stays."""
    if not await queries.archive_account(conn, account_id):
        raise NotFoundError(f"no account {account_id}")
    account = await queries.fetch_account(conn, account_id)
    assert account is not None  # noqa: S101 - accounts are archived, never deleted
    return account
