"""What Google's and Microsoft's token endpoints share: clients, grants, tokens and PKCE."""

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response


@dataclass
class OAuthClient:
    """A registered OAuth client; `secret` None is a public client (PKCE only)."""

    client_id: str
    secret: str | None
    redirect_uris: tuple[str, ...] = ()


@dataclass
class Grant:
    """A refresh token or an authorization code: who consented, for which client and scopes."""

    client_id: str
    user: str
    scopes: frozenset[str]
    revoked: bool = False
    # authorization codes only
    redirect_uri: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    expires_at: float | None = None
    offline: bool = True


@dataclass
class AccessToken:
    """An issued bearer token."""

    user: str
    scopes: frozenset[str]
    client_id: str
    expires_at: float
    refresh_token: str | None = None


@dataclass
class TokenRequest:
    """One call to the token endpoint, as a test sees it afterwards."""

    grant_type: str
    client_id: str | None
    user: str | None
    at: float
    error: str | None = None


class OAuthError(Exception):
    """An error answer of the token endpoint: `{"error": ..., "error_description": ...}`."""

    def __init__(self, error: str, description: str, status: int = 400, code: int = 0) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.code = code  # Microsoft's AADSTS number


async def read_form(request: Request) -> dict[str, str]:
    """RFC 6749 section 3.2: token requests are application/x-www-form-urlencoded."""
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))


def pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    """RFC 7636 section 4.6: S256 is BASE64URL(SHA256(verifier)) without padding."""
    if method == "plain":
        return secrets.compare_digest(verifier, challenge)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return secrets.compare_digest(expected, challenge)


def scope_set(scope: str | None) -> frozenset[str]:
    """RFC 6749 section 3.3: a space-delimited list."""
    return frozenset((scope or "").split())


@dataclass
class TokenStore:
    """Clients, grants and tokens of one identity provider, safe to touch from the test thread."""

    token_prefix: str
    access_token_lifetime: int = 3599
    clients: dict[str, OAuthClient] = field(default_factory=dict)
    refresh_tokens: dict[str, Grant] = field(default_factory=dict)
    codes: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    requests: list[TokenRequest] = field(default_factory=list)
    clock_offset: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock)

    def now(self) -> float:
        """The provider's clock: wall time plus what a test moved it by."""
        return time.time() + self.clock_offset

    def add_client(
        self,
        client_id: str | None = None,
        secret: str | None = "",
        redirect_uris: tuple[str, ...] = (),
    ) -> OAuthClient:
        """Register a client; secret "" means generate one, None a public client."""
        client = OAuthClient(
            client_id or f"client-{secrets.token_hex(6)}",
            secrets.token_urlsafe(18) if secret == "" else secret,
            redirect_uris,
        )
        with self.lock:
            self.clients[client.client_id] = client
        return client

    def issue_refresh_token(self, client_id: str, user: str, scopes: frozenset[str]) -> str:
        """A refresh token as if `user` had consented to `scopes` for the client."""
        token = f"1//{secrets.token_urlsafe(32)}"
        with self.lock:
            self.refresh_tokens[token] = Grant(client_id, user, scopes)
        return token

    def mint(
        self, user: str, scopes: frozenset[str], client_id: str = "", refresh: str | None = None
    ) -> tuple[str, AccessToken]:
        """Issue an access token valid for `access_token_lifetime` seconds: (token, record)."""
        token = f"{self.token_prefix}{secrets.token_urlsafe(40)}"
        record = AccessToken(
            user, scopes, client_id, self.now() + self.access_token_lifetime, refresh
        )
        with self.lock:
            self.access_tokens[token] = record
        return token, record

    def authenticate(self, token: str) -> AccessToken | None:
        """The live record of a bearer token, or None if unknown, expired or revoked."""
        with self.lock:
            record = self.access_tokens.get(token)
            if record is None or record.expires_at <= self.now():
                return None
            if record.refresh_token is not None:
                grant = self.refresh_tokens.get(record.refresh_token)
                if grant is None or grant.revoked:
                    return None
            return record

    def revoke(self, token: str) -> bool:
        """Revoke a refresh token (and the access tokens minted from it) or one access token."""
        with self.lock:
            grant = self.refresh_tokens.get(token)
            if grant is not None:
                grant.revoked = True
                return True
            return self.access_tokens.pop(token, None) is not None

    def revoke_user(self, user: str) -> None:
        """Withdraw every consent `user` gave, as when they remove the app from their account."""
        with self.lock:
            for grant in self.refresh_tokens.values():
                if grant.user == user:
                    grant.revoked = True
            for token in [t for t, r in self.access_tokens.items() if r.user == user]:
                del self.access_tokens[token]

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Make every access token (of `user`) expired now; refresh tokens stay valid."""
        with self.lock:
            for record in self.access_tokens.values():
                if user is None or record.user == user:
                    record.expires_at = self.now() - 1

    def reset(self) -> None:
        """Forget every client, grant, token and recorded request."""
        with self.lock:
            self.clients.clear()
            self.refresh_tokens.clear()
            self.codes.clear()
            self.access_tokens.clear()
            self.requests.clear()
            self.clock_offset = 0.0
            self.access_token_lifetime = 3599

    def authenticate_client(self, request: Request, form: dict[str, str]) -> OAuthClient:
        """RFC 6749 section 2.3.1: HTTP Basic or client_id/client_secret in the body."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:]).decode()
            except ValueError as error:
                raise OAuthError("invalid_client", "Unauthorized", 401) from error
            basic_id, _, basic_secret = decoded.partition(":")
            client_id, secret = unquote(basic_id), unquote(basic_secret)
        if not client_id:
            raise OAuthError("invalid_request", "Could not determine client ID from request.")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "The OAuth client was not found.", 401)
        if client.secret is not None and not secrets.compare_digest(secret or "", client.secret):
            raise OAuthError("invalid_client", "Unauthorized", 401)
        return client

    def authorize(self, request: Request, user: str | None, deny: bool) -> Response:
        """Answer an authorization request by redirecting back at once, as if `user` consented."""
        params = request.query_params
        client = self.clients.get(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        if client is None:
            return Response("Error 401: invalid_client", status_code=401)
        if redirect_uri not in client.redirect_uris:
            return Response("Error 400: redirect_uri_mismatch", status_code=400)
        state = {"state": params["state"]} if "state" in params else {}
        if params.get("response_type") != "code":
            query = {"error": "unsupported_response_type", **state}
            return RedirectResponse(f"{redirect_uri}?{urlencode(query)}", status_code=302)
        if deny or user is None:
            query = {"error": "access_denied", **state}
            return RedirectResponse(f"{redirect_uri}?{urlencode(query)}", status_code=302)
        code = f"4/{secrets.token_urlsafe(32)}"
        scopes = scope_set(params.get("scope"))
        with self.lock:
            self.codes[code] = Grant(
                client.client_id,
                user,
                scopes,
                redirect_uri=redirect_uri,
                code_challenge=params.get("code_challenge"),
                code_challenge_method=params.get("code_challenge_method", "plain"),
                expires_at=self.now() + 600,
                offline=params.get("access_type", "offline") == "offline",
            )
        query = {"code": code, "scope": " ".join(sorted(scopes)), **state}
        return RedirectResponse(f"{redirect_uri}?{urlencode(query)}", status_code=302)

    def redeem_code(self, client: OAuthClient, form: dict[str, str]) -> Grant:
        """Exchange an authorization code once, checking redirect_uri and the PKCE verifier."""
        with self.lock:
            grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "Malformed auth code.")
        assert grant.expires_at is not None
        if grant.expires_at <= self.now():
            raise OAuthError("invalid_grant", "Bad Request")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("redirect_uri_mismatch", "Bad Request")
        if grant.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                raise OAuthError("invalid_grant", "Missing code verifier.")
            method = grant.code_challenge_method or "plain"
            if not pkce_matches(verifier, grant.code_challenge, method):
                raise OAuthError("invalid_grant", "Invalid code verifier.")
        elif client.secret is None:
            raise OAuthError("invalid_request", "Missing code verifier.")
        return grant

    def refreshed_grant(self, client: OAuthClient, form: dict[str, str]) -> tuple[str, Grant]:
        """The live grant behind a refresh token of this client."""
        token = form.get("refresh_token", "")
        with self.lock:
            grant = self.refresh_tokens.get(token)
        if grant is None or grant.client_id != client.client_id or grant.revoked:
            raise OAuthError("invalid_grant", "Token has been expired or revoked.")
        return token, grant

    def record(
        self, grant_type: str, form: dict[str, str], user: str | None, error: str | None
    ) -> None:
        """Keep one token request for the tests to count."""
        with self.lock:
            self.requests.append(
                TokenRequest(grant_type, form.get("client_id"), user, self.now(), error)
            )


def oauth_error_response(error: OAuthError, extra: dict[str, object] | None = None) -> Response:
    """RFC 6749 section 5.2, with no caching of tokens or errors."""
    body: dict[str, object] = {"error": error.error, "error_description": error.description}
    return JSONResponse(
        {**body, **(extra or {})},
        status_code=error.status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def token_response(body: dict[str, object]) -> Response:
    """RFC 6749 section 5.1."""
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
