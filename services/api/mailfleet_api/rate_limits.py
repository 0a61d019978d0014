"""Request rate limits per API key (per user for access tokens), and the fields that tell them.

Fixed windows (one counter per caller and window, ``INCR`` with an expiry in Redis): cheap,
shared by every API replica through the throttle's storage, and exact for the RateLimit
fields of draft-ietf-httpapi-ratelimit-headers, whose ``RateLimit-Reset`` is the window's end.
"""

import functools
import logging
import math
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from mailfleet_api.errors import TooManyRequestsError
from mailfleet_api.settings import RateLimitSettings
from mailfleet_api.throttle import CounterStorage

log = logging.getLogger(__name__)

# Where a request's quotas wait, in its ASGI scope, for the middleware that writes the fields.
SCOPE_KEY = "mailfleet.rate_limits"
_NAMESPACE = "api"
_STORAGE_ERRORS = (RedisError, OSError)

rate_of = functools.lru_cache(maxsize=256)(parse)


@dataclass(frozen=True)
class Quota:
    """Where a caller stands against one policy once this request is counted."""

    name: str
    policy: RateLimitItem
    remaining: int
    reset_s: int
    allowed: bool


def header_fields(quotas: Iterable[Quota]) -> list[tuple[bytes, bytes]]:
    """The RateLimit fields for a request counted against these quotas (at least one).

    Limit, Remaining and Reset describe the quota closest to running out, as the draft asks
    when several apply; RateLimit-Policy lists every policy the request was counted against.
    """
    quotas = list(quotas)
    tightest = min(quotas, key=lambda q: (q.allowed, q.remaining, -q.reset_s))
    policies = ", ".join(
        f'{q.policy.amount};w={q.policy.get_expiry()};name="{q.name}"' for q in quotas
    )
    return [
        (b"ratelimit-limit", str(tightest.policy.amount).encode()),
        (b"ratelimit-remaining", str(tightest.remaining).encode()),
        (b"ratelimit-reset", str(tightest.reset_s).encode()),
        (b"ratelimit-policy", policies.encode()),
    ]


class RateLimiter:
    """Counts each authenticated request against its caller's policies; 429 past one.

    When the storage cannot be reached, requests go on uncounted (fail open): the limits guard
    the API's capacity, not its security (credentials are checked without them), and a Redis
    outage must not stop every client, and the mail they queue, with it. Each such request is
    counted in a metric; the outage is logged once per ``storage_retry_s``, the time the
    storage is left alone before it is tried again, so a Redis that hangs costs one timeout per
    period, not one per request.
    """

    def __init__(
        self, counters: CounterStorage, settings: RateLimitSettings, registry: CollectorRegistry
    ) -> None:
        self.storage = counters.storage
        self.enabled = settings.enabled
        self.policies = {"default": settings.default, "heavy": settings.heavy}
        self.retry_s = settings.storage_retry_s
        self._away_until = 0.0
        self.refused = Counter(
            "mailfleet_api_rate_limited",
            "Requests refused (429) by a rate limit, by policy.",
            ["policy"],
            registry=registry,
        )
        self.uncounted = Counter(
            "mailfleet_api_rate_limit_storage_errors",
            "Requests let through uncounted because the rate-limit storage was unreachable.",
            registry=registry,
        )
        for name in self.policies:
            self.refused.labels(name)

    async def charge(
        self, scope: MutableMapping[str, Any], caller: str, name: str, rate: str | None = None
    ) -> None:
        """Count a request of ``caller`` against a policy (``rate`` overrides its setting).

        The quota is kept in the request's scope for the RateLimit fields; raises
        TooManyRequestsError, with the seconds until the window ends, past the limit.
        """
        if not self.enabled:
            return
        if time.monotonic() < self._away_until:
            self.uncounted.inc()
            return
        policy = rate_of(rate or self.policies[name])
        key = policy.key_for(_NAMESPACE, name, caller)
        try:
            count = await self.storage.incr(key, policy.get_expiry())
            reset_at = await self.storage.get_expiry(key)
        except _STORAGE_ERRORS as exc:
            self.uncounted.inc()
            self._away_until = time.monotonic() + self.retry_s
            log.warning(
                "rate-limit storage unreachable (%s); requests go on uncounted for %s s",
                exc,
                self.retry_s,
            )
            return
        reset_s = max(0, math.ceil(reset_at - time.time()))
        allowed = count <= policy.amount
        quota = Quota(name, policy, max(0, policy.amount - count), reset_s, allowed)
        scope.setdefault(SCOPE_KEY, []).append(quota)
        if not allowed:
            self.refused.labels(name).inc()
            raise TooManyRequestsError(
                f"rate limit of {policy.amount} requests per {policy.get_expiry()} s reached "
                f"({name} policy); try again in {max(1, reset_s)} s",
                retry_after=max(1, reset_s),
            )
