"""OAuth2 access tokens of the accounts this replica sends for, read through its pool."""

import logging
from dataclasses import dataclass
from uuid import UUID

from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Pool, while_database_away
from mailfleet_common.oauth import AccessTokens, OAuthTokenError
from mailfleet_common.settings import OAuthSettings

log = logging.getLogger(__name__)


class TokensUnusableError(OAuthTokenError):
    """This replica cannot read OAuth credentials at all: it has no key to decrypt them."""


class AccountTokens:
    """The replica's access to the fleet-wide token cache (mailfleet_common.oauth)."""

    def __init__(self, settings: OAuthSettings, secrets: SecretBox | None, pool: Pool) -> None:
        self._tokens = None if secrets is None else AccessTokens(settings, secrets)
        self._pool = pool

    def of(self, account_id: UUID) -> "AccountToken":
        return AccountToken(self, account_id)

    async def get(self, account_id: UUID) -> str:
        """A token valid for a while yet; raises what AccessTokens.access_token raises."""
        tokens = self._tokens
        if tokens is None:
            raise TokensUnusableError(
                "the OAuth credentials cannot be decrypted: no key in MAILFLEET_CRYPTO__KEYS"
            )

        async def fetch() -> str:
            async with self._pool.acquire() as conn:
                return await tokens.access_token(conn, account_id)

        # A refresh repeated after the database came back only asks the provider again.
        return await while_database_away(fetch, "access token")

    async def forget(self, account_id: UUID, token: str) -> None:
        """Drop a token the provider refused, so that the next get() refreshes."""
        tokens = self._tokens
        if tokens is None:
            return

        async def forget() -> bool:
            async with self._pool.acquire() as conn:
                return await tokens.forget(conn, account_id, token)

        try:
            await while_database_away(forget, "forget access token")
        except Exception as exc:
            # The retry then gets the same token, refused again: the account is paused, which
            # is what a token that cannot be forgotten deserves; nothing is sent meanwhile.
            log.warning(
                "refused access token not forgotten",
                extra={"account_id": str(account_id), "error": repr(exc)},
            )


@dataclass(frozen=True, slots=True)
class AccountToken:
    """One account's access token, as its transport logs in with it."""

    tokens: AccountTokens
    account_id: UUID

    async def get(self) -> str:
        return await self.tokens.get(self.account_id)

    async def forget(self, token: str) -> None:
        await self.tokens.forget(self.account_id, token)
