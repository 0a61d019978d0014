"""The doubles answered by real clients: google-auth, authlib and httpx."""

import base64
import time
from datetime import UTC
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
from authlib.integrations.requests_client import OAuth2Session
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from tests.doubles import gmail_errors
from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient

SEND = "https://www.googleapis.com/auth/gmail.send"
MODIFY = "https://www.googleapis.com/auth/gmail.modify"
USER = "alice@example.com"
REDIRECT = "https://mailfleet.example/oauth/callback"


def _raw(message_id: str = "<m1@mailfleet.example>", to: str = "bob@example.net") -> str:
    message = EmailMessage()
    message["From"] = f"Alice <{USER}>"
    message["To"] = to
    message["Subject"] = "Hello"
    message["Message-ID"] = message_id
    message.set_content("Hi Bob,\nthe report is attached.\n")
    message.add_attachment(
        b"\x00\x01report", maintype="application", subtype="pdf", filename="report.pdf"
    )
    return base64.urlsafe_b64encode(message.as_bytes()).decode().rstrip("=")


def _gmail(google: GoogleDouble, scopes: tuple[str, ...] = (SEND, MODIFY)) -> httpx.Client:
    token = google.issue_access_token(USER, list(scopes))
    return httpx.Client(
        base_url=f"{google.gmail_url}/users/me", headers={"Authorization": f"Bearer {token}"}
    )


def _error(response: httpx.Response) -> tuple[int, str, str, str]:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    [detail] = error["errors"]
    assert detail["message"] == error["message"]
    return error["code"], error["status"], detail["reason"], detail["domain"]


# -- Google OAuth -------------------------------------------------------------------------------


def test_google_auth_refreshes_a_user_token_until_it_is_revoked(google: GoogleDouble) -> None:
    client = google.add_client()
    refresh = google.issue_refresh_token(client, USER, [SEND, MODIFY])
    creds = user_credentials.Credentials(
        None,
        refresh_token=refresh,
        client_id=client.client_id,
        client_secret=client.secret,
        token_uri=google.token_uri,
        scopes=[SEND, MODIFY],
    )
    creds.refresh(GoogleRequest())
    assert creds.token.startswith("ya29.")
    assert creds.expiry is not None
    lifetime = creds.expiry.replace(tzinfo=UTC).timestamp() - time.time()
    assert 3500 < lifetime < 3600
    with _gmail(google) as gmail:
        profile = gmail.get("/profile", headers={"Authorization": f"Bearer {creds.token}"})
    assert profile.json()["emailAddress"] == USER

    google.revoke_refresh_token(refresh)
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(GoogleRequest())
    assert [r.error for r in google.tokens.requests] == [None, "invalid_grant"]


def test_token_endpoint_errors_are_googles_documented_bodies(google: GoogleDouble) -> None:
    client = google.add_client()
    refresh = google.issue_refresh_token(client, USER, [SEND])
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client.client_id}
    wrong_secret = httpx.post(google.token_uri, data=form | {"client_secret": "nope"})
    assert wrong_secret.status_code == 401
    assert wrong_secret.json() == {"error": "invalid_client", "error_description": "Unauthorized"}
    unknown = httpx.post(google.token_uri, data=form | {"client_id": "x", "client_secret": "y"})
    assert (unknown.status_code, unknown.json()["error"]) == (401, "invalid_client")
    google.revoke_user(USER)
    revoked = httpx.post(google.token_uri, data=form | {"client_secret": client.secret})
    assert revoked.status_code == 400
    assert revoked.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    assert revoked.headers["cache-control"] == "no-store"


def test_expired_access_tokens_are_refused_and_refreshed(google: GoogleDouble) -> None:
    with _gmail(google) as gmail:
        assert gmail.get("/profile").status_code == 200
        google.expire_access_tokens(USER)
        response = gmail.get("/profile")
    assert response.status_code == 401
    assert _error(response) == (401, "UNAUTHENTICATED", "authError", "global")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_service_account_with_delegation_gets_a_token_for_the_user(google: GoogleDouble) -> None:
    google.add_user(USER)
    info = google.add_service_account(delegated_scopes=[SEND, MODIFY])
    creds = service_account.Credentials.from_service_account_info(
        info, scopes=[MODIFY], subject=USER
    )
    creds.refresh(GoogleRequest())
    with _gmail(google) as gmail:
        profile = gmail.get("/profile", headers={"Authorization": f"Bearer {creds.token}"})
    assert profile.json()["emailAddress"] == USER

    # Without a subject the token is the service account's own: it has no mailbox.
    own = service_account.Credentials.from_service_account_info(info, scopes=[MODIFY])
    own.refresh(GoogleRequest())
    with _gmail(google) as gmail:
        refused = gmail.get("/profile", headers={"Authorization": f"Bearer {own.token}"})
    assert _error(refused) == (400, "FAILED_PRECONDITION", "failedPrecondition", "global")


def test_service_account_assertions_are_verified(google: GoogleDouble) -> None:
    google.add_user(USER)
    info = google.add_service_account(delegated_scopes=[SEND])
    undelegated = service_account.Credentials.from_service_account_info(
        info, scopes=[MODIFY], subject=USER
    )
    with pytest.raises(RefreshError, match="unauthorized_client"):
        undelegated.refresh(GoogleRequest())
    # The same account name signed with another key.
    forged = dict(info, private_key=google.add_service_account()["private_key"])
    with pytest.raises(RefreshError, match="Invalid JWT Signature"):
        service_account.Credentials.from_service_account_info(
            forged, scopes=[SEND], subject=USER
        ).refresh(GoogleRequest())

    now = int(time.time())
    claims = {
        "iss": info["client_email"],
        "sub": USER,
        "scope": SEND,
        "aud": google.token_uri,
        "iat": now,
        "exp": now + 3600,
    }

    def exchange(**changes: object) -> httpx.Response:
        assertion = jwt.encode(
            claims | changes,
            info["private_key"],
            algorithm="RS256",
            headers={"kid": info["private_key_id"]},
        )
        grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
        return httpx.post(google.token_uri, data={"grant_type": grant, "assertion": assertion})

    assert exchange().status_code == 200
    assert exchange(aud="https://oauth2.googleapis.com/token").status_code == 200
    for changes, description in [
        ({"exp": now - 10, "iat": now - 3610}, "short-lived token"),
        ({"exp": now + 7200}, "short-lived token"),
        ({"aud": "https://elsewhere.example/token"}, "audience"),
        ({"iss": "nobody@project.iam.gserviceaccount.com"}, "account not found"),
        ({"sub": "stranger@example.com"}, "Invalid email or User ID"),
    ]:
        response = exchange(**changes)
        assert response.status_code == 400, changes
        assert response.json()["error"] == "invalid_grant"
        assert description in response.json()["error_description"]
    assert exchange(scope="").json()["error"] == "invalid_scope"


def _pkce_session(client: OAuthClient, scope: str, **extra: str) -> OAuth2Session:
    return OAuth2Session(
        client.client_id,
        client.secret,
        scope=scope,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        **extra,
    )


def _consent(session: OAuth2Session, auth_uri: str, verifier: str, **extra: str) -> str:
    url, _ = session.create_authorization_url(auth_uri, code_verifier=verifier, **extra)
    answer = httpx.get(url)
    assert answer.status_code == 302
    return answer.headers["location"]


def test_authorization_code_flow_with_pkce(google: GoogleDouble) -> None:
    client = google.add_client(redirect_uris=(REDIRECT,))
    session = _pkce_session(client, f"{SEND} {MODIFY}")
    verifier = generate_token(48)
    callback = _consent(
        session, google.auth_uri, verifier, access_type="offline", login_hint=USER, prompt="consent"
    )
    assert callback.startswith(REDIRECT)
    token = session.fetch_token(
        google.token_uri, authorization_response=callback, code_verifier=verifier
    )
    assert token["refresh_token"].startswith("1//")
    assert set(token["scope"].split()) == {SEND, MODIFY}
    with _gmail(google) as gmail:
        profile = gmail.get(
            "/profile", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
    assert profile.json()["emailAddress"] == USER
    # A code is good once.
    with pytest.raises(AuthlibOAuthError, match="invalid_grant"):
        session.fetch_token(
            google.token_uri, authorization_response=callback, code_verifier=verifier
        )
    session.close()


def test_pkce_verifier_and_consent_are_checked(google: GoogleDouble) -> None:
    client = google.add_client(redirect_uris=(REDIRECT,))
    session = _pkce_session(client, SEND)
    callback = _consent(session, google.auth_uri, generate_token(48), login_hint=USER)
    with pytest.raises(AuthlibOAuthError, match="invalid_grant"):
        session.fetch_token(
            google.token_uri, authorization_response=callback, code_verifier=generate_token(48)
        )
    google.deny_consent = True
    denied = _consent(session, google.auth_uri, generate_token(48), state="s1")
    assert parse_qs(urlsplit(denied).query) == {"error": ["access_denied"], "state": ["s1"]}
    mismatch = httpx.get(
        google.auth_uri,
        params={"client_id": client.client_id, "redirect_uri": "https://evil.example/"},
    )
    assert mismatch.status_code == 400
    session.close()


# -- Gmail --------------------------------------------------------------------------------------


def test_send_list_get_and_modify(google: GoogleDouble) -> None:
    with _gmail(google) as gmail:
        sent = gmail.post("/messages/send", json={"raw": _raw()}).json()
        assert sent["labelIds"] == ["SENT"]
        assert sent["threadId"] == sent["id"]
        [record] = google.gmail.sent
        assert record.message_id == "<m1@mailfleet.example>"
        assert record.recipients == ["bob@example.net"]
        assert record.message.get_body(("plain",)).get_content().startswith("Hi Bob")

        raw = gmail.get(f"/messages/{sent['id']}", params={"format": "raw"}).json()
        assert base64.urlsafe_b64decode(raw["raw"]) == record.raw
        full = gmail.get(f"/messages/{sent['id']}").json()
        assert full["payload"]["mimeType"] == "multipart/mixed"
        text, attachment = full["payload"]["parts"]
        assert (text["partId"], attachment["partId"]) == ("0", "1")
        assert base64.urlsafe_b64decode(attachment["body"]["data"]) == b"\x00\x01report"
        assert attachment["filename"] == "report.pdf"
        assert full["snippet"] == "Hi Bob, the report is attached."
        metadata = gmail.get(
            f"/messages/{sent['id']}", params={"format": "metadata", "metadataHeaders": "Subject"}
        ).json()
        assert metadata["payload"]["headers"] == [{"name": "Subject", "value": "Hello"}]

        label = gmail.post("/labels", json={"name": "mailfleet/processed"}).json()
        assert label["type"] == "user"
        duplicate = gmail.post("/labels", json={"name": "MAILFLEET/processed"})
        assert duplicate.status_code == 409
        names = [item["name"] for item in gmail.get("/labels").json()["labels"]]
        assert {"INBOX", "SENT", "mailfleet/processed"} <= set(names)

        modified = gmail.post(
            f"/messages/{sent['id']}/modify",
            json={"addLabelIds": [label["id"]], "removeLabelIds": ["SENT"]},
        )
        assert modified.json()["labelIds"] == [label["id"]]
        bad = gmail.post(f"/messages/{sent['id']}/modify", json={"addLabelIds": ["Label_99"]})
        assert _error(bad) == (400, "INVALID_ARGUMENT", "invalidArgument", "global")
        missing = gmail.get("/messages/0000000000000000")
        assert _error(missing) == (404, "NOT_FOUND", "notFound", "global")


def test_list_filters_by_query_and_labels_and_pages(google: GoogleDouble) -> None:
    google.add_user(USER)
    for n in range(7):
        bounce = EmailMessage()
        bounce["From"] = "MAILER-DAEMON@example.net" if n % 2 else "bob@example.net"
        bounce["To"] = USER
        bounce["Subject"] = f"Undelivered Mail {n}" if n % 2 else f"Re: Hello {n}"
        bounce.set_content("body")
        google.gmail.deliver(USER, bounce.as_bytes())
    with _gmail(google) as gmail:
        gmail.post("/messages/send", json={"raw": _raw()})
        everything = gmail.get("/messages", params={"maxResults": 3}).json()
        assert len(everything["messages"]) == 3
        assert everything["resultSizeEstimate"] == 8
        ids = [m["id"] for m in everything["messages"]]
        token = everything["nextPageToken"]
        while token:
            page = gmail.get("/messages", params={"maxResults": 3, "pageToken": token}).json()
            ids += [m["id"] for m in page["messages"]]
            token = page.get("nextPageToken")
        assert len(set(ids)) == 8
        assert ids == sorted(ids, reverse=True)  # newest first
        inbox = gmail.get("/messages", params={"labelIds": ["INBOX", "UNREAD"]}).json()
        assert inbox["resultSizeEstimate"] == 7
        daemon = gmail.get("/messages", params={"q": "from:mailer-daemon in:inbox"}).json()
        assert daemon["resultSizeEstimate"] == 3
        quoted = gmail.get("/messages", params={"q": 'subject:"Re: Hello"'}).json()
        assert quoted["resultSizeEstimate"] == 4
        none = gmail.get("/messages", params={"q": "rfc822msgid:nothing@x"}).json()
        assert none == {"resultSizeEstimate": 0}


def test_history_lists_added_messages_and_404s_when_too_old(google: GoogleDouble) -> None:
    google.add_user(USER)
    with _gmail(google) as gmail:
        start = gmail.get("/profile").json()["historyId"]
        gmail.post("/messages/send", json={"raw": _raw()})
        reply = EmailMessage()
        reply["From"], reply["To"], reply["Subject"] = "bob@example.net", USER, "Re: Hello"
        reply["In-Reply-To"] = "<m1@mailfleet.example>"
        reply.set_content("Thanks")
        reply_id = google.gmail.deliver(USER, reply.as_bytes())
        gmail.post(f"/messages/{reply_id}/modify", json={"removeLabelIds": ["UNREAD"]})

        added = gmail.get(
            "/history", params={"startHistoryId": start, "historyTypes": "messageAdded"}
        ).json()
        assert int(added["historyId"]) > int(start)
        messages = [h["messagesAdded"][0]["message"] for h in added["history"]]
        assert [m["labelIds"] for m in messages] == [["SENT"], ["INBOX"]]
        assert messages[1]["id"] == reply_id
        assert messages[1]["threadId"] == messages[0]["threadId"]  # the reply joins the thread
        every = gmail.get("/history", params={"startHistoryId": start}).json()["history"]
        assert every[-1]["labelsRemoved"][0]["labelIds"] == ["UNREAD"]
        latest = gmail.get("/history", params={"startHistoryId": added["historyId"]}).json()
        assert latest == {"historyId": added["historyId"]}

        google.gmail.mailbox(USER).expire_history()
        gone = gmail.get("/history", params={"startHistoryId": start})
        assert _error(gone) == (404, "NOT_FOUND", "notFound", "global")
        assert _error(gmail.get("/history")) == (
            400,
            "INVALID_ARGUMENT",
            "invalidArgument",
            "global",
        )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            gmail_errors.USER_RATE_LIMIT,
            (403, "PERMISSION_DENIED", "userRateLimitExceeded", "usageLimits"),
        ),
        (gmail_errors.RATE_LIMIT, (403, "PERMISSION_DENIED", "rateLimitExceeded", "usageLimits")),
        (gmail_errors.DAILY_LIMIT, (403, "PERMISSION_DENIED", "dailyLimitExceeded", "usageLimits")),
        (
            gmail_errors.TOO_MANY_REQUESTS,
            (429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "usageLimits"),
        ),
        (gmail_errors.BACKEND_ERROR, (500, "INTERNAL", "backendError", "global")),
    ],
)
def test_injected_send_failures_send_nothing(
    google: GoogleDouble, error: gmail_errors.GmailError, expected: tuple[int, str, str, str]
) -> None:
    google.gmail.fail_next_sends(2, error)
    with _gmail(google) as gmail:
        failures = [gmail.post("/messages/send", json={"raw": _raw()}) for _ in range(2)]
        assert [_error(f) for f in failures] == [expected, expected]
        assert google.gmail.sent == []
        assert gmail.post("/messages/send", json={"raw": _raw()}).status_code == 200
    assert len(google.gmail.sent) == 1


def test_auth_scope_and_request_errors(google: GoogleDouble) -> None:
    anonymous = httpx.get(f"{google.gmail_url}/users/me/profile")
    assert _error(anonymous) == (401, "UNAUTHENTICATED", "authError", "global")
    with _gmail(google, scopes=(SEND,)) as gmail:
        assert _error(gmail.get("/messages")) == (
            403,
            "PERMISSION_DENIED",
            "insufficientPermissions",
            "global",
        )
        other = gmail.post(
            f"{google.gmail_url}/users/carol@example.com/messages/send", json={"raw": _raw()}
        )
        assert other.status_code == 403
        nobody = gmail.post("/messages/send", json={"raw": _raw(to="")})
        assert nobody.json()["error"]["message"] == "Recipient address required"
        assert gmail.post("/messages/send", json={"raw": "%%%"}).status_code == 400


def test_a_slow_answer_after_the_send_leaves_it_sent(google: GoogleDouble) -> None:
    google.gmail.delay_next_sends(1, 1.0)
    google.gmail.delay_next_sends(1, 1.0, deliver=False)
    with _gmail(google) as gmail:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):
                gmail.post("/messages/send", json={"raw": _raw()}, timeout=0.2)
    time.sleep(1.0)
    assert len(google.gmail.sent) == 1


def test_quota_of_15000_units_per_user_per_minute(google: GoogleDouble) -> None:
    with _gmail(google) as gmail:
        answers = [
            gmail.post("/messages/send", json={"raw": _raw()}).status_code for _ in range(150)
        ]
        assert set(answers) == {200}
        over = gmail.post("/messages/send", json={"raw": _raw()})
        assert _error(over) == (429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "usageLimits")
        assert "Retry after" in over.json()["error"]["message"]
        # Another user's quota is their own.
        bob = google.issue_access_token("bob@example.com", [SEND])
        other = gmail.post(
            "/messages/send", json={"raw": _raw()}, headers={"Authorization": f"Bearer {bob}"}
        )
        assert other.status_code == 200
        google.gmail.quota_status = 403
        over = gmail.post("/messages/send", json={"raw": _raw()})
        assert _error(over) == (403, "PERMISSION_DENIED", "userRateLimitExceeded", "usageLimits")
    assert len(google.gmail.sent) == 151


def test_daily_sending_limit(google: GoogleDouble) -> None:
    google.gmail.daily_send_limit = 2
    with _gmail(google) as gmail:
        answers = [gmail.post("/messages/send", json={"raw": _raw()}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 403]
    assert answers[2].json()["error"]["errors"][0]["reason"] == "dailyLimitExceeded"


# -- Microsoft ----------------------------------------------------------------------------------

SMTP_SEND = "https://outlook.office.com/SMTP.Send"
IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"


def test_microsoft_code_flow_with_pkce_and_rotating_refresh(microsoft: MicrosoftDouble) -> None:
    tenant = "contoso.onmicrosoft.com"
    client = microsoft.add_client(tenant, redirect_uris=(REDIRECT,))
    session = _pkce_session(
        client,
        f"offline_access {SMTP_SEND} {IMAP}",
        token_endpoint_auth_method="client_secret_post",
    )
    verifier = generate_token(48)
    callback = _consent(session, microsoft.auth_uri(tenant), verifier, login_hint=USER)
    token = session.fetch_token(
        microsoft.token_uri(tenant), authorization_response=callback, code_verifier=verifier
    )
    assert microsoft.user_for(token["access_token"]) == USER
    assert token["ext_expires_in"] == token["expires_in"]
    first_refresh = token["refresh_token"]
    refreshed = session.refresh_token(microsoft.token_uri(tenant), refresh_token=first_refresh)
    assert refreshed["refresh_token"] != first_refresh
    session.close()

    microsoft.revoke_refresh_token(refreshed["refresh_token"])
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refreshed["refresh_token"],
        "client_id": client.client_id,
        "client_secret": client.secret,
    }
    revoked = httpx.post(microsoft.token_uri(tenant), data=form)
    assert revoked.status_code == 400
    body = revoked.json()
    assert body["error"] == "invalid_grant"
    assert body["error_codes"] == [50173]
    assert body["error_description"].startswith("AADSTS50173: ")
    assert f"Trace ID: {body['trace_id']}" in body["error_description"]


def test_microsoft_errors_carry_aadsts_codes(microsoft: MicrosoftDouble) -> None:
    tenant = "contoso.onmicrosoft.com"
    client = microsoft.add_client(tenant, redirect_uris=(REDIRECT,))
    refresh = microsoft.issue_refresh_token(client, USER, [SMTP_SEND])
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client.client_id}
    cases = [
        (tenant, form | {"client_secret": "wrong"}, 401, "invalid_client", 7000215),
        ("fabrikam.example", form, 400, "invalid_request", 90002),
        (
            tenant,
            form | {"client_secret": client.secret, "scope": IMAP},
            400,
            "invalid_grant",
            65001,
        ),
        (
            tenant,
            form | {"client_secret": client.secret, "grant_type": "password"},
            400,
            "unsupported_grant_type",
            70003,
        ),
    ]
    for where, data, status, error, code in cases:
        response = httpx.post(microsoft.token_uri(where), data=data)
        assert (response.status_code, response.json()["error"]) == (status, error), code
        assert response.json()["error_codes"] == [code]
    ok = httpx.post(microsoft.token_uri(tenant), data=form | {"client_secret": client.secret})
    assert "refresh_token" not in ok.json()  # no offline_access consented
