"""SQL of users and API keys."""

from datetime import datetime
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.pages import oldest_first

_USER_COLUMNS = "id, email, role, disabled, created_at"
_API_KEY_COLUMNS = ", ".join(schemas.ApiKey.model_fields)


async def insert_user(conn: Conn, email: str, password_hash: str, role: str) -> schemas.User | None:
    """Create a user, or return None if the email is taken (case-insensitively)."""
    row = await conn.fetchrow(
        """
        INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3)
        ON CONFLICT (lower(email)) DO NOTHING
        RETURNING id, email, role, disabled, created_at
        """,
        email,
        password_hash,
        role,
    )
    return None if row is None else schemas.User.model_validate(dict(row))


async def fetch_login(conn: Conn, email: str) -> asyncpg.Record | None:
    """The id, password hash and disabled flag of the user with this email."""
    return await conn.fetchrow(
        "SELECT id, password_hash, disabled FROM users WHERE lower(email) = lower($1)", email
    )


async def set_user_password(conn: Conn, email: str, password_hash: str) -> bool:
    """Replace a user's password; False if there is no such user."""
    done = await conn.fetchval(
        "UPDATE users SET password_hash = $2 WHERE lower(email) = lower($1) RETURNING id",
        email,
        password_hash,
    )
    return done is not None


async def fetch_user_role(conn: Conn, user_id: UUID) -> str | None:
    """The role of an enabled user, or None if the user is gone or disabled."""
    role: str | None = await conn.fetchval(
        "SELECT role FROM users WHERE id = $1 AND NOT disabled", user_id
    )
    return role


async def fetch_user_by_email(conn: Conn, email: str) -> schemas.User | None:
    row = await conn.fetchrow(
        "SELECT id, email, role, disabled, created_at FROM users WHERE lower(email) = lower($1)",
        email,
    )
    return None if row is None else schemas.User.model_validate(dict(row))


async def list_users(
    conn: Conn, limit: int, after: tuple[datetime, UUID] | None
) -> tuple[list[schemas.User], bool]:
    """A page of users, oldest first, after the given (created_at, id); and whether more follow."""
    select = f"SELECT {_USER_COLUMNS} FROM users"  # noqa: S608 - a constant
    rows, more = await oldest_first(conn, select, "true", [], limit, after)
    return [schemas.User.model_validate(dict(r)) for r in rows], more


async def insert_api_key(
    conn: Conn,
    user_id: UUID,
    name: str,
    prefix: str,
    key_hash: bytes,
    role: str,
    rate_limit: str | None = None,
) -> schemas.ApiKey:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (user_id, name, prefix, key_hash, role, rate_limit)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING {_API_KEY_COLUMNS}
        """,  # noqa: S608 - column names from schemas.ApiKey only
        user_id,
        name,
        prefix,
        key_hash,
        role,
        rate_limit,
    )
    return schemas.ApiKey.model_validate(dict(row))  # type: ignore[arg-type]


async def fetch_api_key_for_auth(conn: Conn, prefix: str) -> asyncpg.Record | None:
    """A live key with this prefix whose user is enabled: its hash, role and rate limit."""
    return await conn.fetchrow(
        """
        SELECT k.id, k.user_id, k.key_hash, k.role AS key_role, u.role AS user_role,
               k.rate_limit
        FROM api_keys k JOIN users u ON u.id = k.user_id
        WHERE k.prefix = $1 AND k.revoked_at IS NULL AND NOT u.disabled
        """,
        prefix,
    )


async def touch_api_key(conn: Conn, key_id: UUID) -> None:
    """Record a use of the key, at most once a minute so reads stay reads."""
    await conn.execute(
        """
        UPDATE api_keys SET last_used_at = now()
        WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        """,
        key_id,
    )


async def list_api_keys(
    conn: Conn, limit: int, after: tuple[datetime, UUID] | None
) -> tuple[list[schemas.ApiKey], bool]:
    """A page of API keys, oldest first, after the given (created_at, id)."""
    select = f"SELECT {_API_KEY_COLUMNS} FROM api_keys"  # noqa: S608 - a constant
    rows, more = await oldest_first(conn, select, "true", [], limit, after)
    return [schemas.ApiKey.model_validate(dict(r)) for r in rows], more


async def revoke_api_key(conn: Conn, key_id: UUID) -> schemas.ApiKey | None:
    """Revoke a key (keeping the first revocation time); None if there is no such key."""
    row = await conn.fetchrow(
        f"""
        UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
        RETURNING {_API_KEY_COLUMNS}
        """,  # noqa: S608 - column names from schemas.ApiKey only
        key_id,
    )
    return None if row is None else schemas.ApiKey.model_validate(dict(row))
