"""`mailfleet accounts connect` and `import-oauth` against the API running as a process."""

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from mailfleet_api.cli import app
from typer.testing import CliRunner, Result

from tests.doubles.fixtures import _google_server
from tests.doubles.google import GoogleDouble
from tests.e2e.conftest import FAST_ENV
from tests.stack import Stack

from .test_account_kinds import gmail_body

__all__ = ["_google_server"]

# Not the API's own address: the provider's redirect is followed by hand in these tests.
REDIRECT_URI = "http://mailfleet.test/oauth/callback"
CLIENT_ID, CLIENT_SECRET = "cli-google", "cli-google-secret"


@dataclass
class Api:
    url: str
    key: str

    def run(self, *args: str, stdin: str = "") -> Result:
        env = {"MAILFLEET_API_URL": self.url, "MAILFLEET_API_KEY": self.key, "COLUMNS": "250"}
        return CliRunner().invoke(app, list(args), env=env, input=stdin)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def create_account(self) -> str:
        body = gmail_body(name=f"cli-{uuid.uuid4().hex[:6]}")
        headers = {"Authorization": f"Bearer {self.key}"}
        created = httpx.post(f"{self.url}/api/admin/accounts", json=body, headers=headers)
        assert created.status_code == 201, created.text
        account_id: str = created.json()["id"]
        return account_id


@pytest.fixture(scope="module")
async def api(
    database_dsn: str, rabbit_url: str, crypto_keys: str, _google_server: GoogleDouble
) -> AsyncIterator[Api]:
    google = _google_server
    # Only some of the client's settings: its scopes stay the default ones.
    env = {
        **FAST_ENV,
        "MAILFLEET_OAUTH__GOOGLE__CLIENT_ID": CLIENT_ID,
        "MAILFLEET_OAUTH__GOOGLE__CLIENT_SECRET": CLIENT_SECRET,
        "MAILFLEET_OAUTH__GOOGLE__TOKEN_URI": google.token_uri,
        "MAILFLEET_OAUTH__GOOGLE__AUTH_URI": google.auth_uri,
        "MAILFLEET_OAUTH__REDIRECT_URI": REDIRECT_URI,
        "MAILFLEET_GMAIL__API_URL": google.gmail_url,
    }
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=env
    ) as stack:
        server = await stack.start_api()
        email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
        await stack.create_admin(email, "plum tractor violet 42")
        output = await stack.run_cli("create-api-key", "--email", email, "--name", "cli tests")
        yield Api(server.url, output.strip().splitlines()[-1])


@pytest.fixture
def google(_google_server: GoogleDouble) -> GoogleDouble:
    _google_server.reset()
    _google_server.tokens.add_client(CLIENT_ID, CLIENT_SECRET, (REDIRECT_URI,))
    _google_server.add_user("news@example.com")
    return _google_server


def test_connect_prints_a_consent_url_whose_callback_connects_the_account(
    api: Api, google: GoogleDouble
) -> None:
    account_id = api.create_account()
    printed = api.run("accounts", "connect", account_id, "--provider", "google")
    assert printed.exit_code == 0, printed.output
    url = printed.stdout.strip()
    assert url.startswith(google.auth_uri)
    assert "code_challenge_method=S256" in url

    redirected = httpx.get(url)
    assert redirected.status_code == 302
    back = urlsplit(redirected.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
    page = httpx.get(f"{api.url}/oauth/callback?{back.query}")
    assert page.status_code == 200, page.text
    shown = api.json("accounts", "show", account_id)
    assert (shown["status"], shown["oauth"]["provider"]) == ("active", "google")

    as_json = api.json("accounts", "connect", account_id, "--provider", "google")
    assert set(as_json) == {"provider", "authorization_url", "redirect_uri", "expires_at"}
    assert as_json["redirect_uri"] == REDIRECT_URI


def test_import_oauth_reads_the_refresh_token_from_a_file_or_stdin(
    api: Api, google: GoogleDouble, tmp_path: Path
) -> None:
    account_id = api.create_account()
    token = tmp_path / "token"
    token.write_text("1//refresh-token-from-a-file\n")
    imported = api.run(
        "accounts", "import-oauth", account_id, "--provider", "google",
        "--refresh-token-file", str(token),
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.strip() == (
        f"account {account_id} signs in with OAuth2 (google, refresh_token); status active"
    )
    from_stdin = api.run(
        "accounts", "import-oauth", account_id, "--provider", "google",
        "--refresh-token-file", "-", "--json", stdin="1//from-stdin\n",
    )  # fmt: skip
    assert from_stdin.exit_code == 0, from_stdin.output
    assert json.loads(from_stdin.stdout)["oauth"]["credential"] == "refresh_token"


def test_accounts_commands_say_what_is_wrong(api: Api, google: GoogleDouble) -> None:
    account_id = api.create_account()
    unknown = api.run("accounts", "connect", account_id, "--provider", "yahoo")
    assert unknown.exit_code == 2
    refused = api.run("accounts", "connect", account_id, "--provider", "microsoft")
    assert refused.exit_code == 1
    assert (
        "error 409 Conflict: OAuth consent is not configured: set "
        "MAILFLEET_OAUTH__MICROSOFT__CLIENT_ID"
    ) in refused.stderr
    neither = api.run("accounts", "import-oauth", account_id, "--provider", "google")
    assert neither.exit_code == 2
    missing = api.run("accounts", "connect", str(uuid.uuid4()), "--provider", "google")
    assert missing.exit_code == 1
    assert "404" in missing.stderr
