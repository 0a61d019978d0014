"""Posting one webhook: Standard Webhooks signing, and an HTTP request with firm limits."""

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

USER_AGENT = "mailfleet-webhooks/1"


@dataclass(frozen=True, slots=True)
class Response:
    """What one request came to: a status (any) or an error before one arrived."""

    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    body: str | None  # the start of the response body, up to the configured bound
    error: str | None  # timeout, connection refused, ...
    timed_out: bool = False
    refused: bool = False  # not sent: the destination is not a public address

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


async def refused_destination(url: str) -> str | None:
    """Why `url` may not be posted to, or None: its host must resolve to public addresses only.

    Loopback, private, link-local (cloud metadata), shared and reserved addresses are the
    platform's own network, not a user's receiver. The check resolves the name as the request
    will a moment later; a name whose answers change in between (DNS rebinding) is outside
    it, which the deployment's egress policy covers (deploy/k8s: port 443 to the internet).
    """
    parsed = httpx.URL(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if not _public(address):
            return (
                f"{host} resolves to {address}, not a public address "
                "(MAILFLEET_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS allows it)"
            )
    return None


def signed_headers(signer: Webhook, webhook_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of a request sent at `at` (seconds precision)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signer.sign(webhook_id, at, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def new_client(
    connect_timeout_s: float, timeout_s: float, max_connections: int
) -> httpx.AsyncClient:
    """One client for every endpoint: pooled connections, no redirects, no proxies from env.

    A redirect is an answer (3xx, a failure) rather than a second request: following it
    would send the signed event to wherever the endpoint points, unchecked.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=32),
        follow_redirects=False,
        trust_env=False,
    )


async def post(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: str,
    max_response_bytes: int,
    timeout_s: float,
) -> Response:
    """POST the body; read at most `max_response_bytes` of the answer, all within timeout_s."""
    attempted_at = datetime.now(UTC)
    started = time.monotonic()

    def elapsed_ms() -> float:
        return round((time.monotonic() - started) * 1000, 3)

    try:
        async with (
            asyncio.timeout(timeout_s),
            client.stream("POST", url, content=body.encode(), headers=headers) as answer,
        ):
            kept = bytearray()
            async for chunk in answer.aiter_raw():
                kept += chunk[: max_response_bytes - len(kept)]
                if len(kept) >= max_response_bytes:
                    break
            text = kept.decode("utf-8", "replace") if kept else None
            return Response(attempted_at, answer.status_code, elapsed_ms(), text, None)
    except (TimeoutError, httpx.TimeoutException) as exc:
        error = f"timed out after {timeout_s:g} s ({type(exc).__name__})"
        return Response(attempted_at, None, elapsed_ms(), None, error, timed_out=True)
    except (httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        return Response(attempted_at, None, elapsed_ms(), None, error)
