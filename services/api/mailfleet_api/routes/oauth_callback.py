"""The OAuth consent callback: where the consenting browser comes back from the provider.

This is the one route reached without credentials of the API: the browser is the mailbox
owner's, who may have no mailfleet account at all. It is authorized by the ``state`` alone: a
random 256-bit value handed out with the consent URL to an admin, stored only as its SHA-256,
usable once and for MAILFLEET_CONSENT__TTL_S. A code without a live state is never exchanged,
so nobody can attach their own mailbox to an account (RFC 6749 10.12), and the PKCE verifier
(kept encrypted with the state) makes a stolen code useless to anyone else (RFC 7636). The
answer is a small page of its own, never a redirect: no open redirect.
"""

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from mailfleet_common import oauth

from mailfleet_api import consent, queries
from mailfleet_api.consent import ConsentError
from mailfleet_api.deps import DbConn, SecretBoxDep, SettingsDep
from mailfleet_api.errors import ConflictError
from mailfleet_api.queries import consents as consent_queries
from mailfleet_api.routes.account_oauth import account_mailbox, consent_client

log = logging.getLogger(__name__)

router = APIRouter(prefix="/oauth", tags=["oauth"])

# The page's URL holds the code: no referrer may carry it, nothing may cache or frame it.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
_MAX_PARAM = 4096
Param = Annotated[str | None, Query(max_length=_MAX_PARAM)]


def _page(title: str, text: str, status: int) -> HTMLResponse:
    title, text = html.escape(title, quote=False), html.escape(text, quote=False)
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>mailfleet: {title}</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:3em auto}</style></head>"
        f"<body><h1>{title}</h1><p>{text}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


@router.get("/callback", include_in_schema=False)
async def oauth_callback(
    conn: DbConn,
    box: SecretBoxDep,
    settings: SettingsDep,
    state: Param = None,
    code: Param = None,
    error: Param = None,
    error_description: Param = None,
) -> HTMLResponse:
    """Finish a consent: exchange the code, check the mailbox, store the refresh token."""
    if not state:
        return _page("Not connected", "The provider sent no state: start the consent again.", 400)
    state_hash = consent.state_digest(state)
    async with conn.transaction():
        used = await consent_queries.use_consent(conn, state_hash)
    try:
        if used is None:
            raise ConsentError("this consent link is unknown: start the consent again")
        if used.verifier_enc is None:
            raise ConsentError(
                "this consent link has expired: start the consent again"
                if used.expired
                else "this consent link was used already: start the consent again"
            )
        if error:
            detail = f" ({error_description})" if error_description else ""
            raise ConsentError(f"the provider answered {error}{detail}: nothing was connected")
        if not code:
            raise ConsentError("the provider sent no authorization code")
        mailbox = await _connect(conn, box, settings, used, code)
    except ConsentError as exc:
        log.info("OAuth consent not completed: %s", exc.reason)
        if used is not None:
            await consent_queries.record_outcome(conn, state_hash, exc.reason)
        return _page("Not connected", f"Not connected: {exc.reason}.", exc.status)
    await consent_queries.record_outcome(conn, state_hash, "connected")
    return _page(
        "Connected",
        f"The account is connected to {mailbox} and may send. You may close this window.",
        200,
    )


async def _connect(
    conn: DbConn,
    box: SecretBoxDep,
    settings: SettingsDep,
    used: consent_queries.UsedConsent,
    code: str,
) -> str:
    """Exchange the code and store the refresh token; the mailbox connected."""
    assert used.verifier_enc is not None  # noqa: S101 - checked by the caller
    try:
        client, redirect_uri = consent_client(settings, used.provider)
    except ConflictError as exc:
        raise ConsentError(str(exc), 503) from exc
    token = await consent.exchange_code(
        client, redirect_uri, code, box.decrypt(used.verifier_enc), settings.oauth.timeout_s
    )
    granted = await consent.granted_mailbox(used.provider, token, settings.gmail)
    async with conn.transaction():
        account = await queries.lock_account(conn, used.account_id)
        if account is None or account.status == "archived":
            raise ConsentError("the account was archived meanwhile")
        expected = account_mailbox(account)
        if granted is not None and granted.lower() != expected.lower():
            raise ConsentError(
                f"consent was given for {granted}, but the account's mailbox is {expected}: "
                f"sign in as {expected} and start the consent again"
            )
        await oauth.import_refresh_token(
            conn, box, used.account_id, used.provider, token["refresh_token"]
        )
        await queries.resume_after_consent(conn, used.account_id, "connected by OAuth consent")
    return granted or expected
