"""OAuth2 bearer tokens that tests issue and revoke, and an introspection endpoint serving them.

``TokenRegistry`` holds access tokens, each for one mailbox: ``issue()`` makes one, ``revoke()``
ends it. ``IntrospectionServer`` answers RFC 7662 token introspection over HTTP on a free port
of 127.0.0.1 (``POST /introspect`` with a ``token=`` form body, or ``GET /introspect?token=``),
which is what Dovecot's ``oauth2`` passdb asks (tests/bouncer/servers.py); the SMTP peer
(tests/smtp_peer.py) asks the registry directly. A live token answers
``{"active": true, "email": ..., "username": ..., "scope": ..., "exp": ..., ...}``; a revoked,
expired or unknown one answers ``{"active": false}`` and nothing else, as RFC 7662 section 2.2
advises.

``xoauth2_response()`` and ``oauthbearer_response()`` build the SASL initial responses clients
send (https://developers.google.com/gmail/imap/xoauth2-protocol, RFC 7628), and
``parse_bearer_response()`` reads either back.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tests.doubles.oauth import TokenStore

GMAIL_SCOPE = "https://mail.google.com/"
OUTLOOK_SCOPE = (
    "https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All"
)
HOST = "127.0.0.1"


@dataclass(frozen=True)
class IssuedToken:
    """An access token as the authorization server knows it."""

    address: str
    scope: str
    expires_at: float
    client_id: str


class TokenRegistry:
    """Access tokens for mailboxes, safe to use from the test and the servers' threads."""

    def __init__(self) -> None:
        self._tokens: dict[str, IssuedToken] = {}
        self._lock = threading.Lock()

    def issue(
        self,
        address: str,
        *,
        scope: str = GMAIL_SCOPE,
        lifetime: float = 3600.0,
        client_id: str = "mailfleet-tests",
    ) -> str:
        """A new access token for ``address``, live for ``lifetime`` seconds (negative: expired)."""
        token = "ya29." + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = IssuedToken(
                address.lower(), scope, time.time() + lifetime, client_id
            )
        return token

    def revoke(self, token: str) -> None:
        """Ends a token: from now on it introspects as inactive and logs in nowhere."""
        with self._lock:
            self._tokens.pop(token, None)

    def holder(self, token: str) -> IssuedToken | None:
        """Who a live token was issued to, or None for a revoked, expired or unknown one."""
        with self._lock:
            issued = self._tokens.get(token)
        if issued is None or issued.expires_at <= time.time():
            return None
        return issued

    def introspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for a token."""
        issued = self.holder(token)
        if issued is None:
            return {"active": False}
        return {
            "active": True,
            "token_type": "Bearer",
            "scope": issued.scope,
            "client_id": issued.client_id,
            "username": issued.address,
            "email": issued.address,
            "sub": issued.address,
            "exp": int(issued.expires_at),
        }


class ProviderTokens(TokenRegistry):
    """The access tokens a provider's double (tests/doubles) issued, checked as the registry's.

    Gives the SMTP peer (or the introspection endpoint) the tokens the sender got from the
    Google or Microsoft double, so a grant revoked there is refused here too.
    """

    def __init__(self, store: "TokenStore") -> None:
        super().__init__()
        self._store = store

    def holder(self, token: str) -> IssuedToken | None:
        record = self._store.authenticate(token)
        if record is None:
            return None
        scope = " ".join(sorted(record.scopes))
        return IssuedToken(record.user.lower(), scope, record.expires_at, record.client_id)


class _IntrospectionHandler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        self._answer(form.get("token", [""])[0])

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        self._answer(query.get("token", [""])[0])

    def _answer(self, token: str) -> None:
        if urlsplit(self.path).path != "/introspect":
            self.send_error(404)
            return
        body = json.dumps(self.server.tokens.introspect(token)).encode()
        with self.server.lock:
            self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest's output is no place for an access log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tokens: TokenRegistry) -> None:
        super().__init__((HOST, 0), _IntrospectionHandler)
        self.tokens = tokens
        self.requests = 0
        self.lock = threading.Lock()


class IntrospectionServer:
    """An RFC 7662 token introspection endpoint over ``tokens``, in a thread of the test process."""

    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens
        self._server = _Server(tokens)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where Dovecot's ``introspection_url`` points."""
        return f"http://{HOST}:{self._server.server_address[1]}/introspect"

    @property
    def requests(self) -> int:
        """How many introspection requests were answered so far."""
        with self._server.lock:
            return self._server.requests

    def start(self) -> "IntrospectionServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def xoauth2_response(address: str, token: str) -> bytes:
    """The XOAUTH2 initial client response, before base64."""
    return f"user={address}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer_response(address: str, token: str) -> bytes:
    """The OAUTHBEARER (RFC 7628) initial client response, before base64."""
    return f"n,a={address},\x01auth=Bearer {token}\x01\x01".encode()


def parse_bearer_response(mechanism: str, blob: bytes) -> tuple[str, str] | None:
    """(address, token) from an XOAUTH2 or OAUTHBEARER client response, or None if malformed."""
    text = blob.decode("utf-8", "replace")
    fields = text.split("\x01")
    address = ""
    if mechanism == "OAUTHBEARER":
        gs2, *fields = fields
        parts = gs2.split(",")
        if len(parts) < 2 or parts[0] not in ("n", "y"):
            return None
        address = next((part[2:] for part in parts[1:] if part.startswith("a=")), "")
    pairs = dict(field.split("=", 1) for field in fields if "=" in field)
    address = pairs.get("user", address)
    scheme, _, token = pairs.get("auth", "").partition(" ")
    if not address or scheme.lower() != "bearer" or not token:
        return None
    return address, token
