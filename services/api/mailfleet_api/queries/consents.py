"""SQL of OAuth consents started from the API: their states and encrypted PKCE verifiers."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from mailfleet_common.db import Conn

# Used and expired consents are kept this long after their expiry, for the record.
_KEPT = "1 day"


async def insert_consent(
    conn: Conn,
    state_hash: bytes,
    account_id: UUID,
    provider: str,
    login_hint: str | None,
    verifier_enc: bytes,
    started_by: UUID | None,
    ttl_s: int,
) -> datetime:
    """Keep a consent until its expiry (returned); consents long over are deleted meanwhile."""
    await conn.execute(
        f"DELETE FROM oauth_consents WHERE expires_at < now() - interval '{_KEPT}'"  # noqa: S608
    )
    expires_at: datetime = await conn.fetchval(
        """
        INSERT INTO oauth_consents
            (state_hash, account_id, provider, login_hint, code_verifier_enc, started_by,
             expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
        RETURNING expires_at
        """,
        state_hash,
        account_id,
        provider,
        login_hint,
        verifier_enc,
        started_by,
        ttl_s,
    )
    return expires_at


@dataclass(frozen=True, slots=True)
class UsedConsent:
    """A consent whose state came back: its verifier if it was still usable."""

    account_id: UUID
    provider: str
    verifier_enc: bytes | None  # None: used before, or expired
    expired: bool


async def use_consent(conn: Conn, state_hash: bytes) -> UsedConsent | None:
    """Mark the consent of this state used, once; None if no consent has it.

    Its verifier is dropped with it (returned only if it was unused and unexpired): a state
    completes at most one consent, whatever happens next.
    """
    row = await conn.fetchrow(
        """
        WITH old AS (SELECT state_hash, code_verifier_enc, expires_at <= now() AS expired
                     FROM oauth_consents WHERE state_hash = $1 FOR UPDATE)
        UPDATE oauth_consents c
        SET used_at = coalesce(c.used_at, now()), code_verifier_enc = NULL
        FROM old WHERE c.state_hash = old.state_hash
        RETURNING c.account_id, c.provider, old.code_verifier_enc, old.expired
        """,
        state_hash,
    )
    if row is None:
        return None
    usable = row["code_verifier_enc"] is not None and not row["expired"]
    return UsedConsent(
        row["account_id"],
        row["provider"],
        bytes(row["code_verifier_enc"]) if usable else None,
        row["expired"],
    )


async def record_outcome(conn: Conn, state_hash: bytes, outcome: str) -> None:
    """What came of the consent: 'connected', or why not."""
    await conn.execute(
        "UPDATE oauth_consents SET outcome = $2 WHERE state_hash = $1", state_hash, outcome[:500]
    )


async def fetch_verifiers(conn: Conn) -> list[tuple[bytes, bytes]]:
    """(state_hash, encrypted verifier) of every unused consent, row-locked for re-encryption."""
    rows = await conn.fetch(
        """
        SELECT state_hash, code_verifier_enc FROM oauth_consents
        WHERE code_verifier_enc IS NOT NULL ORDER BY state_hash FOR UPDATE
        """
    )
    return [(bytes(r["state_hash"]), bytes(r["code_verifier_enc"])) for r in rows]


async def set_verifiers(conn: Conn, verifiers: list[tuple[bytes, bytes]]) -> None:
    """Store these encrypted verifiers (re-encrypted with another key)."""
    await conn.executemany(
        "UPDATE oauth_consents SET code_verifier_enc = $2 WHERE state_hash = $1", verifiers
    )


async def forget_verifiers(conn: Conn, state_hashes: list[bytes]) -> None:
    """End these consents: their verifiers are lost (the consent must be started again)."""
    await conn.execute(
        """
        UPDATE oauth_consents
        SET code_verifier_enc = NULL, used_at = now(),
            outcome = 'verifier lost: encrypted with a crypto key no longer configured'
        WHERE state_hash = ANY($1::bytea[])
        """,
        state_hashes,
    )
