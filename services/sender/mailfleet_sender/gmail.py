"""The Gmail API transport: users.messages.send over one HTTP client per replica.

Answers map as the Gmail guide "Resolve errors" describes them (error.code, error.status,
error.errors[].reason):

- 2xx: sent; Gmail's id of the message is kept in the attempt's detail.
- 401: the access token was refused; it is forgotten and the send tried once more with a fresh
  one. Refused again: the account is paused.
- 429, 403 userRateLimitExceeded / rateLimitExceeded: the account is over its quota; it waits
  (Retry-After, or the time the message names, and at least a doubling backoff) and the message
  goes back unburned.
- 403 dailyLimitExceeded: its day's sending is spent; it waits for the next UTC midnight.
- 400 invalidArgument: the message itself is refused; it fails for good.
- 5xx: Gmail failed; the message is retried later with the usual backoff.
- any other 4xx (403 insufficientPermissions, 400 failedPrecondition, ...): the account's
  configuration is wrong; it is paused and the message goes back to the queue.

The API is not idempotent: once the request may have reached Gmail, a missing answer (a read
timeout, a dropped connection) leaves the message `uncertain`, never sent again automatically.
A connection that could not be made sent nothing: the account waits, as for an unreachable
SMTP server.
"""

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from mailfleet_common.settings import GmailSettings

from mailfleet_sender.metrics import GMAIL_REQUESTS, GMAIL_SECONDS
from mailfleet_sender.pacing import PacedTransport
from mailfleet_sender.smtp import SmtpResult, classify_token_failure
from mailfleet_sender.tokens import AccountToken

# What users.messages.send costs in quota units (developers.google.com/gmail/api/reference/quota).
SEND_UNITS = 100
_RATE_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
# "User-rate limit exceeded.  Retry after 2026-12-06T06:30:00.123Z"
_RETRY_AFTER_TEXT = re.compile(r"Retry after (\S+Z)")


def quota_gap_s(units_per_minute: int) -> float:
    """The shortest gap between two sends of one account that keeps it within its quota."""
    return 60.0 * SEND_UNITS / units_per_minute


def next_utc_midnight(now: datetime) -> datetime:
    """When the day the dispatcher counts daily usage by (UTC) ends."""
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


class GmailApi:
    """The replica's HTTP client for the Gmail API, shared by every Gmail-API account."""

    def __init__(self, settings: GmailSettings, max_connections: int = 200) -> None:
        self._send_url = settings.api_url.rstrip("/") + "/users/me/messages/send"
        self._client = httpx.AsyncClient(
            timeout=settings.timeout_s,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def send(self, token: str, data: bytes) -> httpx.Response:
        """POST the message as `raw` base64url; raises httpx's transport errors."""
        raw = base64.urlsafe_b64encode(data).decode("ascii")
        return await self._client.post(
            self._send_url, json={"raw": raw}, headers={"Authorization": f"Bearer {token}"}
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _error(response: httpx.Response) -> tuple[str, set[str], str]:
    """The error's google.rpc status, its reasons, and a one-line description."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", set(), f"Gmail API {response.status_code}: {response.text[:200]}"
    entries = error.get("errors")
    if not isinstance(entries, list):
        entries = []
    reasons = {str(e.get("reason")) for e in entries if isinstance(e, dict) and e.get("reason")}
    status = str(error.get("status") or "")
    message = str(error.get("message") or "")
    why = f" ({', '.join(sorted(reasons))})" if reasons else ""
    return status, reasons, f"Gmail API {response.status_code} {status}: {message}{why}".strip()


def retry_after_s(response: httpx.Response, message: str, now: datetime) -> float:
    """How long Gmail asked to wait: Retry-After (seconds or a date), or the time in its text."""
    header = response.headers.get("retry-after")
    at: datetime | None = None
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                at = parsedate_to_datetime(header)
            except (TypeError, ValueError):
                at = None
    if at is None and (found := _RETRY_AFTER_TEXT.search(message)):
        try:
            at = datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
        except ValueError:
            at = None
    if at is None or at.tzinfo is None:
        return 0.0
    return max(0.0, (at - now).total_seconds())


def classify_answer(response: httpx.Response, now: datetime) -> tuple[SmtpResult, str]:
    """What a messages.send answer means, and its label for the requests metric."""
    code = response.status_code
    if 200 <= code < 300:
        try:
            gmail_id = response.json().get("id")
        except (ValueError, AttributeError):
            gmail_id = None
        return SmtpResult("sent", None, f"Gmail API: sent, id {gmail_id}"), "sent"
    status, reasons, detail = _error(response)
    if code == 401:
        return SmtpResult("config", None, f"Gmail API refused the access token: {detail}"), (
            "unauthorized"
        )
    if code == 429 or (code == 403 and reasons & _RATE_REASONS):
        hold = retry_after_s(response, detail, now)
        return SmtpResult("throttled", None, detail, hold_s=hold), "throttled"
    if code == 403 and "dailyLimitExceeded" in reasons:
        hold = (next_utc_midnight(now) - now).total_seconds()
        return SmtpResult("throttled", None, detail, hold_s=hold), "daily_limit"
    if code == 400 and ("invalidArgument" in reasons or status == "INVALID_ARGUMENT"):
        return SmtpResult("permanent", None, detail), "invalid"
    if code >= 500:
        return SmtpResult("temporary", None, detail), "server_error"
    return SmtpResult("config", None, detail), "config"


class GmailSlot:
    """One of an account's concurrent senders; the HTTP connections are the replica's."""

    def __init__(self, transport: "GmailTransport") -> None:
        self._transport = transport

    async def send(self, sender: str, recipient: str, data: bytes) -> SmtpResult:
        """Send one message; Gmail takes the sender and recipients from its headers."""
        return await self._transport.send(data)

    def close(self) -> None:
        pass

    def retire(self) -> None:
        pass


class GmailTransport(PacedTransport):
    """A Gmail-API account: its slots, its pace (its own gap, or its quota's if longer)."""

    connections: list[GmailSlot]

    def __init__(
        self,
        api: GmailApi,
        oauth: AccountToken,
        max_connections: int,
        min_gap_ms: int,
        units_per_minute: int,
    ) -> None:
        self._quota_gap = quota_gap_s(units_per_minute)
        super().__init__(max_connections, max(min_gap_ms / 1000, self._quota_gap))
        self._api = api
        self._oauth = oauth
        self.connections = [GmailSlot(self) for _ in range(max_connections)]

    def reconfigure(self, min_gap_ms: int) -> None:
        self.reachable()
        self._gap = max(min_gap_ms / 1000, self._quota_gap)

    async def send(self, data: bytes) -> SmtpResult:
        token = await self._token()
        if isinstance(token, SmtpResult):
            return token
        result, label = await self._post(token, data)
        if label == "unauthorized":
            # Revoked before its expiry: a fresh token tells whether the grant itself is gone.
            # Nothing was sent, so sending again is safe; a second refusal pauses the account.
            await self._oauth.forget(token)
            token = await self._token()
            if isinstance(token, SmtpResult):
                return token
            result, label = await self._post(token, data)
        return result

    async def _token(self) -> str | SmtpResult:
        try:
            return await self._oauth.get()
        except Exception as exc:
            return classify_token_failure(exc)

    async def _post(self, token: str, data: bytes) -> tuple[SmtpResult, str]:
        started = time.perf_counter()
        try:
            response = await self._api.send(token, data)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            result, label = SmtpResult("unreachable", None, f"Gmail API: {exc!r}"), "unreachable"
        except httpx.PoolTimeout as exc:
            # This replica's own connections are all busy: nothing was sent, not Gmail's fault.
            result, label = SmtpResult("exhausted", None, f"Gmail API: {exc!r}"), "exhausted"
        except httpx.TransportError as exc:
            # The request may have reached Gmail, which sends what it receives: never again.
            result = SmtpResult(
                "uncertain", None, f"Gmail API: no answer after the request was sent: {exc!r}"
            )
            label = "uncertain"
        else:
            result, label = classify_answer(response, datetime.now(UTC))
            GMAIL_SECONDS.observe(time.perf_counter() - started)
        GMAIL_REQUESTS.labels(label).inc()
        return result, label
