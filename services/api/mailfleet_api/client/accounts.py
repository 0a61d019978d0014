"""``mailfleet accounts``: show an account, connect it by OAuth consent, import credentials."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mailfleet_api.client.api import DEFAULT_API_URL, ApiKey, ApiUrl, Json, session, show

app = typer.Typer(help="Sender accounts, through the API (admin key).", no_args_is_help=True)

AccountId = Annotated[str, typer.Argument(help="The account's id.", show_default=False)]
Provider = Annotated[
    str, typer.Option(help="google or microsoft.", show_default=False, case_sensitive=False)
]
_PROVIDERS = ("google", "microsoft")


def _provider(value: str) -> str:
    provider = value.lower()
    if provider not in _PROVIDERS:
        raise typer.BadParameter("google or microsoft", param_hint="--provider")
    return provider


@app.command("show")
def show_account(
    account_id: AccountId,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Show an account: settings, status and its reason, OAuth2 state, usage today."""
    path = f"/api/admin/accounts/{account_id}"
    show(api_url, api_key, as_json, path, f"account {account_id}")


@app.command("connect")
def connect_account(
    account_id: AccountId,
    provider: Provider,
    login_hint: Annotated[
        str | None,
        typer.Option(help="The mailbox the sign-in page suggests; default: the account's."),
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Print a consent URL: its opener signs in as the mailbox and consents, which connects it.

    The URL is single use and expires (15 minutes by default). Once consent is given the
    account's refresh token is stored and, if it was paused for consent, it is resumed.
    """
    body: dict[str, Any] = {"provider": _provider(provider)}
    if login_hint is not None:
        body["login_hint"] = login_hint
    with session(api_url, api_key, as_json) as (client, output):
        started = client.post(f"/api/admin/accounts/{account_id}/oauth/consent", body)
        if as_json:
            output.json(started)
            return
        output.line(started["authorization_url"])
        output.note(
            f"open it in a browser signed in as the mailbox, before {started['expires_at']}; "
            f"the provider sends it back to {started['redirect_uri']}"
        )


@app.command("import-oauth")
def import_oauth(
    account_id: AccountId,
    provider: Provider,
    refresh_token_file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="A file holding the refresh token; - reads stdin."),
    ] = None,
    service_account_key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A Google service account's JSON key."),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(help="The Workspace mailbox the service account acts as."),
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Store an account's OAuth2 credentials: a refresh token, or a service-account key.

    Read from files, never from the command line (where other local users could see them).
    """
    body: dict[str, Any] = {"provider": _provider(provider)}
    if (refresh_token_file is None) == (service_account_key is None):
        raise typer.BadParameter("give --refresh-token-file or --service-account-key")
    if refresh_token_file is not None:
        stdin = str(refresh_token_file) == "-"
        text = typer.get_text_stream("stdin").read() if stdin else refresh_token_file.read_text()
        body["refresh_token"] = text.strip()
    if service_account_key is not None:
        try:
            body["service_account_key"] = json.loads(service_account_key.read_text())
        except ValueError as exc:
            raise typer.BadParameter(
                f"not JSON: {exc}", param_hint="--service-account-key"
            ) from None
    if subject is not None:
        body["subject"] = subject
    with session(api_url, api_key, as_json) as (client, output):
        account = client.post(f"/api/admin/accounts/{account_id}/oauth", body)
        if as_json:
            output.json(account)
            return
        oauth = account["oauth"]
        output.line(
            f"account {account['id']} signs in with OAuth2 ({oauth['provider']}, "
            f"{oauth['credential']}); status {account['status']}"
        )
