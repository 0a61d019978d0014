"""OAuth consent from the API: the authorization-code flow with PKCE (RFC 6749 4.1, RFC 7636).

An admin asks for a consent URL; the mailbox's owner opens it, consents at Google or
Microsoft, and their browser comes back to ``/oauth/callback`` with a code and the state. The
code is exchanged (with the PKCE verifier kept for that state) for a refresh token, which is
stored as an import would store it.

authlib builds the authorization URL and makes the token request (synchronous, in a worker
thread, as the refresh in mailfleet_common.oauth does): no hand-made OAuth parameters.
"""

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
from authlib.integrations.requests_client import OAuth2Session
from mailfleet_common.settings import GmailSettings, OAuthClientSettings

# RFC 7636 4.1: 43 to 128 characters; 64 random URL-safe characters hold 384 bits.
_VERIFIER_CHARS = 64


class ConsentError(Exception):
    """The consent cannot be completed; ``reason`` is shown to whoever consented."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """A consent URL handed out, and what the callback needs to finish it."""

    url: str
    state: str
    code_verifier: str


def state_digest(state: str) -> bytes:
    """What is stored of a state: enough to find it, not enough to use it."""
    return hashlib.sha256(state.encode()).digest()


def _session(client: OAuthClientSettings, redirect_uri: str) -> OAuth2Session:
    return OAuth2Session(
        client.client_id,
        client.client_secret.get_secret_value(),
        scope=client.scopes,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name
    )


def start(
    provider: str, client: OAuthClientSettings, redirect_uri: str, login_hint: str | None
) -> ConsentRequest:
    """A consent URL with a fresh random state and PKCE verifier (S256)."""
    # Google gives a refresh token only with access_type=offline, and again on a second
    # consent only with prompt=consent; Microsoft gives one for the offline_access scope.
    extra: dict[str, str] = (
        {"access_type": "offline", "prompt": "consent", "include_granted_scopes": "true"}
        if provider == "google"
        else {}
    )
    if login_hint:
        extra["login_hint"] = login_hint
    state = secrets.token_urlsafe(32)
    verifier = generate_token(_VERIFIER_CHARS)
    with _session(client, redirect_uri) as session:
        url, _ = session.create_authorization_url(
            client.auth_uri, state=state, code_verifier=verifier, **extra
        )
    return ConsentRequest(url, state, verifier)


def _exchange(
    client: OAuthClientSettings, redirect_uri: str, code: str, verifier: str, timeout_s: float
) -> dict[str, Any]:
    try:
        with _session(client, redirect_uri) as session:
            token: dict[str, Any] = session.fetch_token(
                client.token_uri,
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
                timeout=timeout_s,
            )
    except AuthlibOAuthError as exc:
        raise ConsentError(
            f"the provider refused the authorization code ({exc.error}: {exc.description})"
        ) from exc
    except Exception as exc:  # network errors, or a body that is not a token answer
        raise ConsentError(f"the provider's token endpoint could not be asked: {exc}", 502) from exc
    return token


async def exchange_code(
    client: OAuthClientSettings, redirect_uri: str, code: str, verifier: str, timeout_s: float
) -> dict[str, Any]:
    """The token answer for this code; ConsentError if the provider refused it.

    The answer must hold a refresh token: without one the account could not stay connected.
    """
    token = await asyncio.to_thread(_exchange, client, redirect_uri, code, verifier, timeout_s)
    if not token.get("refresh_token") or not token.get("access_token"):
        raise ConsentError(
            "the provider granted no refresh token (offline access was not granted): "
            "start the consent again"
        )
    return token


_ID_TOKEN_CLAIMS = ("email", "preferred_username", "upn")


async def granted_mailbox(provider: str, token: dict[str, Any], gmail: GmailSettings) -> str | None:
    """The mailbox whose owner consented, where it can be known; None where it cannot.

    An ID token (when the scopes asked for one) names it; its signature is not checked: it
    came straight from the token endpoint over TLS (OpenID Connect Core 3.1.3.7). For Google,
    Gmail's users.getProfile answers with the address the token acts for.
    """
    id_token = token.get("id_token")
    if isinstance(id_token, str):
        try:
            claims = jwt.decode(id_token, options={"verify_signature": False})
        except jwt.PyJWTError:
            claims = {}
        for claim in _ID_TOKEN_CLAIMS:
            if isinstance(claims.get(claim), str) and "@" in claims[claim]:
                return str(claims[claim])
    if provider != "google":
        return None
    try:
        async with httpx.AsyncClient(timeout=gmail.timeout_s) as http:
            answer = await http.get(
                f"{gmail.api_url}/users/me/profile",
                headers={"Authorization": f"Bearer {token['access_token']}"},
            )
    except httpx.HTTPError as exc:
        raise ConsentError(f"Gmail could not be asked whose mailbox this is: {exc}", 502) from exc
    if answer.status_code == 403:
        return None  # the scopes granted do not cover reading the profile (gmail.send only)
    if answer.status_code != 200:
        raise ConsentError(
            f"Gmail could not say whose mailbox this is (HTTP {answer.status_code})", 502
        )
    address = answer.json().get("emailAddress")
    return address if isinstance(address, str) else None
