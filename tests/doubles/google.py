"""Google's OAuth 2.0 endpoints and the Gmail REST subset, as one server for the tests.

References: developers.google.com/identity/protocols/oauth2/web-server (authorization code,
PKCE, refresh), .../oauth2/service-account (JWT bearer grant, domain-wide delegation),
developers.google.com/gmail/api/reference/rest and .../guides/handle-errors.
"""

import secrets
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.doubles.gmail import Gmail
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

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class ServiceAccount:
    """A service account key; `delegated_scopes` are what domain-wide delegation grants it."""

    email: str
    key_id: str
    public_key: rsa.RSAPublicKey
    info: dict[str, str]  # the JSON key file, as google-auth reads it
    delegated_scopes: frozenset[str] = field(default_factory=frozenset)


class GoogleDouble:
    """Token endpoint, consent redirect, revocation and Gmail on one loopback port.

    `token_uri`, `auth_uri` and `gmail_url` replace oauth2.googleapis.com/token,
    accounts.google.com/o/oauth2/v2/auth and gmail.googleapis.com.
    """

    def __init__(self) -> None:
        self.tokens = TokenStore(token_prefix="ya29.")
        self.gmail = Gmail(self.tokens)
        self.service_accounts: dict[str, ServiceAccount] = {}
        self.consenting_user: str | None = None
        self.deny_consent = False
        app = Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route("/revoke", self._revoke, methods=["POST"]),
                Route("/o/oauth2/v2/auth", self._authorize, methods=["GET"]),
                *self.gmail.routes(),
            ]
        )
        self._served = ServedApp(app)
        self.url = self._served.url
        self.token_uri = f"{self.url}/token"
        self.auth_uri = f"{self.url}/o/oauth2/v2/auth"
        self.revoke_uri = f"{self.url}/revoke"
        self.gmail_url = f"{self.url}/gmail/v1"

    def start(self) -> "GoogleDouble":
        """Start serving; returns self."""
        self._served.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._served.stop()

    def reset(self) -> None:
        """Back to a fresh double: no clients, tokens, accounts, mailboxes or faults."""
        self.tokens.reset()
        self.gmail.reset()
        with self.tokens.lock:
            self.service_accounts.clear()
            self.consenting_user = None
            self.deny_consent = False

    # -- the tests' side ----------------------------------------------------------------------

    def add_client(self, redirect_uris: tuple[str, ...] = (), public: bool = False) -> OAuthClient:
        """Register an OAuth client (a public one has no secret and must use PKCE)."""
        return self.tokens.add_client(secret=None if public else "", redirect_uris=redirect_uris)

    def add_user(self, address: str) -> None:
        """A Gmail user, with an empty mailbox."""
        self.gmail.mailbox(address)

    def issue_refresh_token(self, client: OAuthClient, user: str, scopes: list[str]) -> str:
        """A refresh token as if `user` had consented to `scopes` for `client`."""
        self.add_user(user)
        return self.tokens.issue_refresh_token(client.client_id, user, frozenset(scopes))

    def issue_access_token(self, user: str, scopes: list[str]) -> str:
        """A bearer token for `user`, without any grant behind it."""
        self.add_user(user)
        return self.tokens.mint(user, frozenset(scopes))[0]

    def add_service_account(
        self,
        email: str | None = None,
        delegated_scopes: list[str] = (),  # type: ignore[assignment]
    ) -> dict[str, str]:
        """A service account with a fresh RSA key; returns its JSON key file as a dict."""
        email = email or f"sa-{secrets.token_hex(4)}@project.iam.gserviceaccount.com"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": "project",
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "token_uri": self.token_uri,
        }
        with self.tokens.lock:
            self.service_accounts[email] = ServiceAccount(
                email, key_id, key.public_key(), info, frozenset(delegated_scopes)
            )
        return info

    def revoke_refresh_token(self, token: str) -> None:
        """Revoke a refresh token and the access tokens minted from it."""
        self.tokens.revoke(token)

    def revoke_user(self, user: str) -> None:
        """The user removes the app's access: every grant and token of theirs stops working."""
        self.tokens.revoke_user(user)

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Expire access tokens now (of one user, or all); refresh tokens still work."""
        self.tokens.expire_access_tokens(user)

    # -- the HTTP side ------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        form = await read_form(request)
        grant_type = form.get("grant_type", "")
        user = None
        try:
            if grant_type == JWT_BEARER:
                user, scopes, client_id = self._verify_assertion(form.get("assertion", ""))
                token, record = self.tokens.mint(user, scopes, client_id)
                body: dict[str, Any] = {}
            elif grant_type == "refresh_token":
                client = self.tokens.authenticate_client(request, form)
                refresh, grant = self.tokens.refreshed_grant(client, form)
                user, scopes = grant.user, grant.scopes
                token, record = self.tokens.mint(user, scopes, client.client_id, refresh)
                body = {"scope": " ".join(sorted(scopes))}
            elif grant_type == "authorization_code":
                client = self.tokens.authenticate_client(request, form)
                grant = self.tokens.redeem_code(client, form)
                user, scopes = grant.user, grant.scopes
                self.add_user(user)
                refresh = None
                body = {"scope": " ".join(sorted(scopes))}
                if grant.offline:
                    refresh = self.tokens.issue_refresh_token(client.client_id, user, scopes)
                    body["refresh_token"] = refresh
                token, record = self.tokens.mint(user, scopes, client.client_id, refresh)
            else:
                raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        except OAuthError as error:
            self.tokens.record(grant_type, form, user, error.error)
            return oauth_error_response(error)
        self.tokens.record(grant_type, form, user, None)
        return token_response(
            {
                "access_token": token,
                "expires_in": int(record.expires_at - self.tokens.now()),
                "token_type": "Bearer",
                **body,
            }
        )

    def _verify_assertion(self, assertion: str) -> tuple[str, frozenset[str], str]:
        """RFC 7523 with Google's rules: RS256 by the account's key, aud the token URI, 1 h max."""
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as error:
            raise OAuthError("invalid_grant", "Invalid JWT: malformed assertion.") from error
        with self.tokens.lock:
            account = self.service_accounts.get(str(claims.get("iss", "")))
        if account is None:
            raise OAuthError("invalid_grant", "Invalid grant: account not found")
        if header.get("kid") not in (None, account.key_id):
            raise OAuthError("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=[self.token_uri, GOOGLE_TOKEN_URI],
                options={"require": ["iss", "aud", "iat", "exp"]},
                leeway=0,
            )
        except jwt.InvalidAudienceError as error:
            raise OAuthError(
                "invalid_grant", f"Invalid JWT: Failed audience check. Expected {self.token_uri}"
            ) from error
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as error:
            raise OAuthError("invalid_grant", _SHORT_LIVED) from error
        except jwt.PyJWTError as error:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.") from error
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            raise OAuthError("invalid_grant", _SHORT_LIVED)
        scopes = scope_set(claims.get("scope"))
        if not scopes:
            raise OAuthError("invalid_scope", "Empty or missing scope not allowed.")
        subject = claims.get("sub")
        if subject is None or subject == account.email:
            return account.email, scopes, account.email
        if not scopes <= account.delegated_scopes:
            raise OAuthError(
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client "
                "not authorized for any of the scopes requested.",
                401,
            )
        with self.tokens.lock:
            known = str(subject).lower() in self.gmail.mailboxes
        if not known:
            raise OAuthError("invalid_grant", "Invalid email or User ID")
        return str(subject), scopes, account.email

    async def _revoke(self, request: Request) -> Response:
        token = request.query_params.get("token") or (await read_form(request)).get("token", "")
        if not self.tokens.revoke(token):
            return oauth_error_response(OAuthError("invalid_token", "Token expired or revoked"))
        return Response(status_code=200)

    async def _authorize(self, request: Request) -> Response:
        user = request.query_params.get("login_hint") or self.consenting_user
        if user is not None:
            self.add_user(user)
        return self.tokens.authorize(request, user, self.deny_consent)


_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)
