"""The Microsoft identity platform's v2.0 endpoints (authorize, token), for Microsoft 365 tests.

Reference: learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow (codes, PKCE,
refresh, the error body) and .../reference-error-codes (AADSTS numbers).
"""

import uuid
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.oauth import (
    OAuthClient,
    OAuthError,
    TokenStore,
    oauth_error_response,
    read_form,
    scope_set,
    token_response,
)
from tests.doubles.server import ServedApp

SHARED_TENANTS = {"common", "organizations", "consumers"}

# What the shared token logic reports, as Entra ID words it: (error, AADSTS code, text, status).
_AADSTS = {
    "Could not determine client ID from request.": (
        "invalid_request",
        900144,
        "The request body must contain the following parameter: 'client_id'.",
        400,
    ),
    "The OAuth client was not found.": (
        "unauthorized_client",
        700016,
        "Application with identifier was not found in the directory.",
        400,
    ),
    "Unauthorized": (
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID.",
        401,
    ),
    "Token has been expired or revoked.": (
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
        400,
    ),
    "Malformed auth code.": (
        "invalid_grant",
        70000,
        "The provided value for the 'code' parameter is not valid.",
        400,
    ),
    "Bad Request": (
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to inactivity.",
        400,
    ),
    "Missing code verifier.": (
        "invalid_grant",
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization "
        "request.",
        400,
    ),
    "Invalid code verifier.": (
        "invalid_grant",
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization "
        "request.",
        400,
    ),
}


def _aadsts(error: OAuthError) -> Response:
    """Entra ID's error body: the AADSTS text with trace ids, and `error_codes`."""
    name, code, text, status = _AADSTS.get(
        error.description, (error.error, error.code or 9002313, error.description, error.status)
    )
    if error.error == "redirect_uri_mismatch":
        name, code, text = "invalid_grant", 50011, "The redirect URI does not match."
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    description = (
        f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\n"
        f"Timestamp: {timestamp}"
    )
    return oauth_error_response(
        OAuthError(name, description, status),
        {
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
    )


class MicrosoftDouble:
    """login.microsoftonline.com/{tenant}/oauth2/v2.0/{authorize,token} on a loopback port."""

    def __init__(self) -> None:
        self.tokens = TokenStore(token_prefix="EwB")
        self.tenants: set[str] = set()
        self.consenting_user: str | None = None
        self.deny_consent = False
        app = Starlette(
            routes=[
                Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
                Route("/{tenant}/oauth2/v2.0/authorize", self._authorize, methods=["GET"]),
            ]
        )
        self._served = ServedApp(app)
        self.url = self._served.url

    def token_uri(self, tenant: str = "common") -> str:
        """The token endpoint of a tenant."""
        return f"{self.url}/{tenant}/oauth2/v2.0/token"

    def auth_uri(self, tenant: str = "common") -> str:
        """The authorization endpoint of a tenant."""
        return f"{self.url}/{tenant}/oauth2/v2.0/authorize"

    def start(self) -> "MicrosoftDouble":
        """Start serving; returns self."""
        self._served.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._served.stop()

    def reset(self) -> None:
        """Back to a fresh double."""
        self.tokens.reset()
        with self.tokens.lock:
            self.tenants.clear()
            self.consenting_user = None
            self.deny_consent = False

    def add_client(
        self, tenant: str, redirect_uris: tuple[str, ...] = (), public: bool = False
    ) -> OAuthClient:
        """An app registration in `tenant` (a GUID or a domain), with a secret unless public."""
        with self.tokens.lock:
            self.tenants.add(tenant)
        return self.tokens.add_client(
            client_id=str(uuid.uuid4()), secret=None if public else "", redirect_uris=redirect_uris
        )

    def issue_refresh_token(self, client: OAuthClient, user: str, scopes: list[str]) -> str:
        """A refresh token as if `user` had consented to `scopes`."""
        return self.tokens.issue_refresh_token(client.client_id, user, frozenset(scopes))

    def user_for(self, access_token: str) -> str | None:
        """Who a live access token belongs to (what an introspection endpoint would say)."""
        record = self.tokens.authenticate(access_token)
        return None if record is None else record.user

    def revoke_refresh_token(self, token: str) -> None:
        """Revoke a refresh token and the access tokens minted from it."""
        self.tokens.revoke(token)

    def revoke_user(self, user: str) -> None:
        """Revoke every grant of `user` (an admin revoking sessions)."""
        self.tokens.revoke_user(user)

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Expire access tokens now."""
        self.tokens.expire_access_tokens(user)

    def _check_tenant(self, tenant: str) -> None:
        if tenant not in SHARED_TENANTS and tenant not in self.tenants:
            raise OAuthError(
                "invalid_request",
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
                400,
                90002,
            )

    async def _token(self, request: Request) -> Response:
        form = await read_form(request)
        grant_type = form.get("grant_type", "")
        user = None
        try:
            self._check_tenant(request.path_params["tenant"])
            client = self.tokens.authenticate_client(request, form)
            if grant_type == "refresh_token":
                _, grant = self.tokens.refreshed_grant(client, form)
            elif grant_type == "authorization_code":
                grant = self.tokens.redeem_code(client, form)
            else:
                raise OAuthError(
                    "unsupported_grant_type",
                    f"The provided grant_type '{grant_type}' is not supported.",
                    400,
                    70003,
                )
            user, scopes = grant.user, grant.scopes
            asked = scope_set(form.get("scope"))
            if asked and not asked <= scopes | {"openid", "profile", "email"}:
                raise OAuthError(
                    "invalid_grant",
                    "The user or administrator has not consented to use the application.",
                    400,
                    65001,
                )
        except OAuthError as error:
            self.tokens.record(grant_type, form, user, error.error)
            return _aadsts(error)
        # Entra ID rotates refresh tokens: each answer carries a new one (offline_access only).
        refresh = None
        body: dict[str, object] = {}
        if "offline_access" in scopes:
            refresh = self.tokens.issue_refresh_token(client.client_id, user, scopes)
            body["refresh_token"] = refresh
        token, record = self.tokens.mint(user, scopes, client.client_id, refresh)
        self.tokens.record(grant_type, form, user, None)
        lifetime = int(record.expires_at - self.tokens.now())
        return token_response(
            {
                "token_type": "Bearer",
                "scope": " ".join(sorted(scopes - {"offline_access"})),
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
                **body,
            }
        )

    async def _authorize(self, request: Request) -> Response:
        try:
            self._check_tenant(request.path_params["tenant"])
        except OAuthError as error:
            return _aadsts(error)
        user = request.query_params.get("login_hint") or self.consenting_user
        return self.tokens.authorize(request, user, self.deny_consent)
