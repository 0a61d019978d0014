"""The tracker's HTTP side: a raw ASGI app for the pixel, the click redirect and unsubscribes.

No framework: the pixel is the hot path (a benchmark holds it to half the speed of an app
that only returns the GIF), so a request costs a prefix test, a token check, a tuple
appended to the hit buffer and two prebuilt messages to the server. Routes:

- ``GET|HEAD /track/open/{token}``: the pixel; GET records an ``opened`` hit.
- ``GET|HEAD /track/click/{token}``: 302 to the URL inside the token; GET records ``clicked``.
- ``GET|HEAD /unsubscribe/{token}``: a page with a form; it changes nothing (scanners follow
  links). ``POST`` (a reader's form, or RFC 8058 one-click) unsubscribes.
- ``/metrics``, ``/health``, ``/ready``.

A token that does not verify, is of another kind, or names an id above any issued is 404
and records nothing.
"""

import ipaddress
import logging
import time
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
from mailfleet_common.ops import Receive, Scope, Send, health_app, metrics_app, readiness_app
from mailfleet_common.tracing import current_traceparent
from mailfleet_common.tracking import Token, TokenKind, TokenSigner

from mailfleet_tracker import metrics, pages
from mailfleet_tracker.machine import machine_reason, read_user_agent
from mailfleet_tracker.runtime import Runtime
from mailfleet_tracker.settings import TrackerSettings
from mailfleet_tracker.unsubscribe import unsubscribe

log = logging.getLogger(__name__)

# A transparent 1x1 GIF.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# RFC 8058 bodies are a few dozen bytes; a form post from the page is no bigger.
MAX_FORM_BYTES = 4096
RETRY_AFTER_S = b"5"
_MAX_IP = 64

# Errors that mean the database is down, restarting or out of reach, not a bug of ours.
_DATABASE_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)

_OPEN, _CLICK, _UNSUBSCRIBE = "/track/open/", "/track/click/", "/unsubscribe/"
_OPEN_AT, _CLICK_AT, _UNSUBSCRIBE_AT = len(_OPEN), len(_CLICK), len(_UNSUBSCRIBE)

_NO_STORE = (b"cache-control", b"no-store")
_GIF_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"image/gif"),
        (b"content-length", str(len(GIF)).encode()),
        (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
        (b"pragma", b"no-cache"),
        (b"expires", b"0"),
    ],
}
_GIF_BODY = {"type": "http.response.body", "body": GIF}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}
_REDIRECT_HEADERS = [(b"content-length", b"0"), _NO_STORE, (b"referrer-policy", b"no-referrer")]
_HTML_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    _NO_STORE,
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
]


async def _plain(send: Send, status: int, text: bytes, *extra: tuple[bytes, bytes]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(text)).encode()),
                _NO_STORE,
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": text})


async def _not_found(send: Send, route: metrics.RouteResults) -> None:
    route.not_found.inc()
    await _plain(send, 404, b"not found\n")


async def _html(
    send: Send,
    status: int,
    body: bytes,
    *,
    head: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [*_HTML_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _header_safe(url: str) -> bytes:
    """The URL as a header value: non-ASCII, spaces and controls percent-encoded (UTF-8)."""
    if url.isascii() and url.isprintable() and " " not in url:
        return url.encode("ascii")
    return "".join(c if "!" <= c <= "~" else quote(c, safe="") for c in url).encode("ascii")


@lru_cache(maxsize=4096)
def redirect_location(url: str, allowed_domains: tuple[str, ...]) -> bytes | None:
    r"""The Location for a click's URL, or None if it is not one to redirect to.

    Only absolute http(s) URLs, whose host is one of the allowed domains or below one (any
    host when none are given). A backslash or control character in the authority is refused:
    browsers read ``https://evil.example\@good.example`` as a link to evil.example.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    if "\\" in parts.netloc or not parts.netloc.isprintable():
        return None
    host = host.rstrip(".")
    if allowed_domains and not any(
        host == domain or host.endswith("." + domain) for domain in allowed_domains
    ):
        return None
    return _header_safe(url)


class TrackerApp:
    """The ASGI callable uvicorn serves; `runtime` holds what lives between start and stop."""

    def __init__(self, settings: TrackerSettings, signer: TokenSigner, runtime: Runtime) -> None:
        self.runtime = runtime
        self._verify = signer.verify
        self._ids = runtime.ids
        self._add_hit = runtime.buffer.add
        self._machine_window_s = settings.machine_window_s
        self._trust_forwarded_for = settings.trust_forwarded_for
        self._allowed_domains = tuple(settings.allowed_domains)
        self._settle_s = settings.unsubscribe_settle_s
        self._ops = {
            "/metrics": metrics_app(),
            "/health": health_app(),
            "/ready": readiness_app([runtime.database_ready]),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(_OPEN):
                await self._open(scope, path[_OPEN_AT:], send)
            elif path.startswith(_CLICK):
                await self._click(scope, path[_CLICK_AT:], send)
            elif path.startswith(_UNSUBSCRIBE):
                await self._unsubscribe(scope, path[_UNSUBSCRIBE_AT:], receive, send)
            elif (ops := self._ops.get(path)) is not None:
                await ops(scope, receive, send)
            else:
                await _not_found(send, metrics.OTHER)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})

    async def _token(
        self,
        scope: Scope,
        text: str,
        kind: TokenKind,
        send: Send,
        route: metrics.RouteResults,
        methods: tuple[str, ...] = ("GET", "HEAD"),
    ) -> Token | None:
        """The request's token; None once answered 405 (method) or 404 (token) instead."""
        if scope["method"] not in methods:
            route.method_not_allowed.inc()
            allow = (b"allow", ", ".join(methods).encode())
            await _plain(send, 405, b"method not allowed\n", allow)
            return None
        token = self._verify(text)
        if (
            token is None
            or token.kind is not kind
            or token.message_id < 1
            or (
                token.message_id > self._ids.highest
                and not await self._ids.covers(token.message_id)
            )
        ):
            await _not_found(send, route)
            return None
        return token

    def _record(self, kind: str, token: Token, scope: Scope, url: str | None = None) -> None:
        raw_agent = b""
        forwarded = None
        for name, value in scope["headers"]:
            if name == b"user-agent":
                raw_agent = value
            elif name == b"x-forwarded-for":
                forwarded = value
        ip = None
        if forwarded is not None and self._trust_forwarded_for:
            ip = _forwarded_ip(forwarded)
        if ip is None:
            client = scope.get("client")
            ip = client[0][:_MAX_IP] if client else None
        now = time.time()
        user_agent, reason = read_user_agent(raw_agent)
        reason = machine_reason(reason, token.issued_at, now, self._machine_window_s)
        self._add_hit(
            kind, token.message_id, now, ip, user_agent, url, reason, current_traceparent()
        )

    async def _open(self, scope: Scope, text: str, send: Send) -> None:
        """The pixel; a GET records an open."""
        token = await self._token(scope, text, TokenKind.OPEN, send, metrics.OPEN)
        if token is None:
            return
        if scope["method"] == "GET":
            self._record("opened", token, scope)
            await send(_GIF_START)
            await send(_GIF_BODY)
        else:
            await send(_GIF_START)
            await send(_EMPTY_BODY)
        metrics.OPEN.ok.inc()

    async def _click(self, scope: Scope, text: str, send: Send) -> None:
        """Redirect to the link's target; a GET records a click."""
        token = await self._token(scope, text, TokenKind.CLICK, send, metrics.CLICK)
        if token is None:
            return
        location = redirect_location(token.url or "", self._allowed_domains)
        if location is None:
            await _not_found(send, metrics.CLICK)
            return
        if scope["method"] == "GET":
            self._record("clicked", token, scope, token.url)
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [(b"location", location), *_REDIRECT_HEADERS],
            }
        )
        await send(_EMPTY_BODY)
        metrics.CLICK.ok.inc()

    async def _unsubscribe(self, scope: Scope, text: str, receive: Receive, send: Send) -> None:
        """GET shows a confirmation form; POST (the form, or RFC 8058 one-click) unsubscribes."""
        route, methods = metrics.UNSUBSCRIBE, ("GET", "HEAD", "POST")
        token = await self._token(scope, text, TokenKind.UNSUBSCRIBE, send, route, methods)
        if token is None:
            return
        method = scope["method"]
        if method != "POST":
            action = scope.get("root_path", "") + scope["path"]
            await _html(send, 200, pages.confirm_page(action), head=method == "HEAD")
            route.ok.inc()
            return
        if not await _within_form_limit(scope, receive):
            route.too_large.inc()
            await _plain(send, 413, b"request body too large\n")
            return
        try:
            done = await unsubscribe(self.runtime.pool, token.message_id, self._settle_s)
        except Exception as exc:
            # Never a 500: the client is told to try again, which is always safe here.
            if isinstance(exc, _DATABASE_AWAY):
                log.warning(
                    "unsubscribe failed, database unavailable",
                    extra={"message_id": token.message_id, "error": repr(exc)},
                )
            else:
                log.exception("unsubscribe failed", extra={"message_id": token.message_id})
            route.unavailable.inc()
            await _html(send, 503, pages.UNAVAILABLE_PAGE, extra=((b"retry-after", RETRY_AFTER_S),))
            return
        if done is None:
            await _not_found(send, route)
            return
        self._record("unsubscribed", token, scope)
        log.info(
            "unsubscribed",
            extra={
                "message_id": token.message_id,
                "scope": done.scope,
                "cancelled": done.cancelled,
            },
        )
        await _html(send, 200, pages.done_page(done.scope))
        route.ok.inc()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                except Exception as exc:
                    log.exception("tracker startup failed")
                    # Reported and raised, as Starlette does: uvicorn reads the message, test
                    # harnesses (asgi-lifespan) the exception.
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def route_of(path: str) -> str:
    """A request's route for its span name, without the token: the token is the credential."""
    for prefix in (_OPEN, _CLICK, _UNSUBSCRIBE):
        if path.startswith(prefix):
            return prefix + "{token}"
    return path


def _forwarded_ip(header: bytes) -> str | None:
    """The first X-Forwarded-For entry, if it is an IP address."""
    first = header.split(b",", 1)[0].strip().decode("latin-1")
    try:
        return str(ipaddress.ip_address(first))
    except ValueError:
        return None


async def _within_form_limit(scope: Scope, receive: Receive) -> bool:
    """Read the request body; False once it is known to exceed MAX_FORM_BYTES.

    The body itself is not looked at: RFC 8058 says what it holds, but any POST to a valid
    token is a request to unsubscribe, however the client encoded its form.
    """
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_FORM_BYTES:
            return False
    size = 0
    while True:
        message: dict[str, Any] = await receive()
        if message["type"] != "http.request":
            return True  # the client went away; the unsubscribe it asked for still happens
        size += len(message.get("body", b""))
        if size > MAX_FORM_BYTES:
            return False
        if not message.get("more_body", False):
            return True
