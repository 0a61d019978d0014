"""Counters in Redis or in memory, and login throttling: failed logins per account and client."""

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mailfleet_api.errors import TooManyRequestsError
from mailfleet_api.settings import ThrottleSettings

log = logging.getLogger(__name__)

# Redis down or unreachable: logins go on unthrottled (and logged) rather than all failing.
_STORAGE_ERRORS = (RedisError, OSError)


@dataclass(frozen=True)
class CounterStorage:
    """Where the login throttle and the request rate limits count: Redis, or this process."""

    storage: Storage
    pool: ConnectionPool | None

    @classmethod
    def from_settings(cls, settings: ThrottleSettings) -> "CounterStorage":
        url = settings.storage_url.get_secret_value()
        if not url:
            return cls(MemoryStorage(), None)
        # redis-py (not limits' default, coredis), on a pool of ours so it can be closed. A
        # Redis that is away must cost each request little: short timeouts, no retry.
        pool = ConnectionPool.from_url(
            url,
            socket_connect_timeout=settings.storage_timeout_s,
            socket_timeout=settings.storage_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        storage = RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=settings.key_prefix,
            connection_pool=pool,  # type: ignore[arg-type] # handed on to redis-py as it is
        )
        return cls(storage, pool)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()


@dataclass(frozen=True)
class LoginThrottle:
    """Refuses logins (429) for an account or a client after too many recent failures.

    Only failures count, in a moving window: a user who types the password right is never
    slowed down, and one who gets it wrong waits for the oldest failure to leave the window.
    """

    limiter: MovingWindowRateLimiter
    per_account: RateLimitItem
    per_client: RateLimitItem

    @classmethod
    def from_settings(cls, settings: ThrottleSettings, counters: CounterStorage) -> "LoginThrottle":
        return cls(
            MovingWindowRateLimiter(counters.storage),
            parse(settings.login_per_account),
            parse(settings.login_per_client),
        )

    def _keys(self, email: str, client: str) -> tuple[tuple[RateLimitItem, str], ...]:
        # Addresses are not stored in the limiter's storage, only a digest of them.
        account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return ((self.per_account, f"account:{account}"), (self.per_client, f"client:{client}"))

    async def check(self, email: str, client: str) -> None:
        """Raise TooManyRequestsError if the account or the client may not try now."""
        for item, key in self._keys(email, client):
            try:
                allowed = await self.limiter.test(item, "login", key)
                if not allowed:
                    stats = await self.limiter.get_window_stats(item, "login", key)
            except _STORAGE_ERRORS:
                log.exception("login throttle storage unreachable; login not throttled")
                return
            if not allowed:
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise TooManyRequestsError(
                    f"too many failed logins; try again in {wait} s", retry_after=wait
                )

    async def failed(self, email: str, client: str) -> None:
        try:
            for item, key in self._keys(email, client):
                await self.limiter.hit(item, "login", key)
        except _STORAGE_ERRORS:
            log.exception("login throttle storage unreachable; failure not counted")

    async def succeeded(self, email: str) -> None:
        """A right password forgets the account's failures (not the client's)."""
        item, key = self._keys(email, "")[0]
        try:
            await self.limiter.clear(item, "login", key)
        except _STORAGE_ERRORS:
            log.exception("login throttle storage unreachable; failures not cleared")
