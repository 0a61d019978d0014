"""One account's Gmail mailbox through the Gmail REST API (httpx): history, list, read, label.

developers.google.com/gmail/api/reference/rest. Every call is charged to the account's
`Quota` first (the documented units: get, list and modify 5, history 2), so the reader stays
under its share of the per-user limit instead of learning it from 429s. A 401 drops the access
token and retries once with a fresh one; a rate limit (429, or 403 userRateLimitExceeded and
the like) raises RateLimitedError with when to try again.
"""

import asyncio
import base64
import binascii
import re
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeAlias
from urllib.parse import quote

import httpx

from mailfleet_bouncer.imap import Fetched

# Quota units (developers.google.com/gmail/api/reference/quota).
_UNITS = {"profile": 1, "labels": 1, "labels.create": 5, "list": 5, "get": 5, "modify": 5}
_UNITS["history"] = 2
_PAGE = 500
_RATE_REASONS = frozenset(
    {"userRateLimitExceeded", "rateLimitExceeded", "dailyLimitExceeded", "quotaExceeded"}
)
Params: TypeAlias = list[tuple[str, str | int | float | bool | None]]
_RETRY_AFTER = re.compile(r"Retry after (\d{4}-\d\d-\d\dT[\d:.]+Z)")


class GmailError(Exception):
    """Gmail answered an error (or something that is not its JSON)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"Gmail {status} {reason}: {message}"[:1000])
        self.status = status
        self.reason = reason


class RateLimitedError(GmailError):
    """The account's quota is spent for now: nothing more before `retry_at`."""

    def __init__(self, status: int, reason: str, message: str, retry_at: datetime) -> None:
        super().__init__(status, reason, message)
        self.retry_at = retry_at


class TokenRefusedError(GmailError):
    """A fresh access token was refused too (401)."""


class Tokens(Protocol):
    """The account's access tokens (mailfleet_common.oauth.AccessTokens, bound to it)."""

    async def token(self) -> str: ...

    async def forget(self, token: str) -> None: ...


class Quota:
    """Units spent in a sliding minute for one account; spending waits when the share is used."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._spent: deque[tuple[float, int]] = deque()

    async def spend(self, units: int) -> None:
        while True:
            now = time.monotonic()
            while self._spent and self._spent[0][0] <= now - 60:
                self._spent.popleft()
            if sum(u for _, u in self._spent) + units <= self._per_minute or not self._spent:
                self._spent.append((now, units))
                return
            await asyncio.sleep(self._spent[0][0] + 60 - now)


class GmailMailbox:
    """The authenticated user's mailbox (`users/me`)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        api_url: str,
        tokens: Tokens,
        quota: Quota,
        backoff_s: float,
    ) -> None:
        self._client = client
        self._base = api_url.rstrip("/") + "/users/me"
        self._tokens = tokens
        self._quota = quota
        self._backoff_s = backoff_s

    async def history_id(self) -> str:
        """The mailbox's current history id (users.getProfile)."""
        profile = await self._call("GET", "/profile", "profile")
        return str(profile["historyId"])

    async def label_id(self, name: str) -> str:
        """The id of the user label `name`, created if absent."""
        for _ in range(2):
            labels = await self._call("GET", "/labels", "labels")
            for label in labels.get("labels", []):
                if label.get("name", "").lower() == name.lower():
                    return str(label["id"])
            try:
                created = await self._call(
                    "POST",
                    "/labels",
                    "labels.create",
                    json={
                        "name": name,
                        "labelListVisibility": "labelShow",
                        "messageListVisibility": "show",
                    },
                )
            except GmailError as exc:
                if exc.status == 409:
                    continue  # created meanwhile (another replica): list again
                raise
            return str(created["id"])
        raise GmailError(409, "duplicate", f"label {name!r} neither listed nor created")

    async def message_ids(self, label_ids: Sequence[str]) -> list[str]:
        """Every message carrying all of `label_ids`, newest first (users.messages.list)."""
        ids: list[str] = []
        token: str | None = None
        while True:
            params: Params = [("labelIds", label) for label in label_ids]
            params.append(("maxResults", _PAGE))
            if token:
                params.append(("pageToken", token))
            page = await self._call("GET", "/messages", "list", params=params)
            ids.extend(str(m["id"]) for m in page.get("messages", []))
            token = page.get("nextPageToken")
            if not token:
                return ids

    async def added_since(self, history_id: str, label_id: str) -> tuple[list[dict[str, Any]], str]:
        """Messages added to `label_id` after `history_id` (oldest first), and the new history id.

        The history id is the first page's: a message added while paging is listed again next
        time rather than missed. Raises GmailError 404 when Gmail no longer has that history.
        """
        added: list[dict[str, Any]] = []
        newest: str | None = None
        token: str | None = None
        while True:
            params: Params = [
                ("startHistoryId", history_id),
                ("historyTypes", "messageAdded"),
                ("labelId", label_id),
                ("maxResults", _PAGE),
            ]
            if token:
                params.append(("pageToken", token))
            page = await self._call("GET", "/history", "history", params=params)
            newest = newest or str(page.get("historyId") or history_id)
            for record in page.get("history", []):
                added.extend(item["message"] for item in record.get("messagesAdded", []))
            token = page.get("nextPageToken")
            if not token:
                return added, newest

    async def message(self, message_id: str, limit: int) -> Fetched:
        """The message's bytes (format=raw), its first `limit` bytes at most."""
        body = await self._call(
            "GET", f"/messages/{quote(message_id)}", "get", params=[("format", "raw")]
        )
        encoded = str(body.get("raw", ""))
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError) as exc:
            raise GmailError(200, "badRaw", f"message {message_id}: raw is not base64") from exc
        return Fetched(0, len(raw), raw[:limit], provider_id=message_id)

    async def add_label(self, message_id: str, label_id: str) -> None:
        await self._call(
            "POST",
            f"/messages/{quote(message_id)}/modify",
            "modify",
            json={"addLabelIds": [label_id]},
        )

    async def _call(
        self,
        method: str,
        path: str,
        cost: str,
        *,
        params: Params | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        await self._quota.spend(_UNITS[cost])
        token = await self._tokens.token()
        response = await self._send(method, path, token, params, json)
        if response.status_code == 401:
            # Revoked before its expiry, or expired early: once more with a fresh one.
            await self._tokens.forget(token)
            token = await self._tokens.token()
            response = await self._send(method, path, token, params, json)
            if response.status_code == 401:
                status, reason, message = _error(response)
                raise TokenRefusedError(status, reason, message)
        if response.is_success:
            answer = response.json()
            if not isinstance(answer, dict):
                raise GmailError(response.status_code, "badResponse", "not a JSON object")
            return answer
        status, reason, message = _error(response)
        if status == 429 or (status == 403 and reason in _RATE_REASONS):
            raise RateLimitedError(status, reason, message, self._retry_at(response, message))
        raise GmailError(status, reason, message)

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        params: Params | None,
        json: dict[str, Any] | None,
    ) -> httpx.Response:
        return await self._client.request(
            method,
            self._base + path,
            params=params,
            json=json,
            headers={"Authorization": f"Bearer {token}"},
        )

    def _retry_at(self, response: httpx.Response, message: str) -> datetime:
        """When Gmail says to retry ("Retry after <time>", Retry-After), else after backoff_s."""
        now = datetime.now(UTC)
        if match := _RETRY_AFTER.search(message):
            try:
                at = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                return min(max(at, now), now + timedelta(hours=1))
        header = response.headers.get("retry-after", "")
        if header.isdigit():
            return now + timedelta(seconds=min(int(header), 3600))
        return now + timedelta(seconds=self._backoff_s)


def _error(response: httpx.Response) -> tuple[int, str, str]:
    """(code, reason, message) of Google's error body, or the bare status."""
    try:
        error = response.json().get("error", {})
        reason = (error.get("errors") or [{}])[0].get("reason") or error.get("status") or ""
        return response.status_code, str(reason), str(error.get("message", ""))
    except (ValueError, AttributeError, TypeError, IndexError):
        return response.status_code, "", response.text[:200]
