"""``mailfleet campaigns``: list, show, create, start, pause and cancel campaigns."""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from mailfleet_api.client.api import DEFAULT_API_URL, ApiKey, ApiUrl, Json, pages, session, show
from mailfleet_api.client.render import rows_table

app = typer.Typer(help="Campaigns, through the API.", no_args_is_help=True)

CampaignId = Annotated[str, typer.Argument(help="The campaign's id.", show_default=False)]
LIST_COLUMNS = ("id", "name", "status", "subject", "start_at", "created_at")


@app.command("list")
def list_campaigns(
    status: Annotated[
        str | None, typer.Option(help="Only this status: draft, running, paused, ...")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Start at this page.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """List campaigns, newest first."""
    with session(api_url, api_key, as_json) as (client, output):
        params = {"status": status, "limit": limit, "cursor": cursor}
        found = pages(client, "/api/campaigns", params)
        if every:
            page: dict[str, Any] = {"items": [item for p in found for item in p["items"]]}
        else:
            page = next(found)
        if as_json:
            output.json(page)
            return
        output.table(rows_table(page["items"], columns=LIST_COLUMNS))
        if page.get("next_cursor"):
            output.note(f"more: --cursor {page['next_cursor']} (or --all)")


@app.command("show")
def show_campaign(
    campaign_id: CampaignId,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Show a campaign: settings, messages in each status, engagement, feedback."""
    show(api_url, api_key, as_json, f"/api/campaigns/{campaign_id}", f"campaign {campaign_id}")


def _read_body(path: Path | None) -> str | None:
    if path is None:
        return None
    return typer.get_text_stream("stdin").read() if str(path) == "-" else path.read_text()


BodyFile = Annotated[
    Path | None,
    typer.Option(dir_okay=False, help="A Jinja template in a file; - reads standard input."),
]


@app.command("create")
def create_campaign(
    name: Annotated[str, typer.Option(help="What it is called.")],
    subject: Annotated[str, typer.Option(help="A template, like the bodies.")],
    html: BodyFile = None,
    text: BodyFile = None,
    account: Annotated[
        list[str] | None, typer.Option(help="Send only through this account (repeat).")
    ] = None,
    pool: Annotated[
        list[str] | None, typer.Option(help="Send through accounts with this tag (repeat).")
    ] = None,
    start_at: Annotated[
        datetime | None, typer.Option(help="Not before this time (with a timezone).")
    ] = None,
    tracking: Annotated[bool, typer.Option(help="Track opens and clicks.")] = True,
    unsubscribe_scope: Annotated[
        str | None, typer.Option(help="global, or campaign: what an unsubscribe stops.")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Create a campaign in draft, with an HTML and/or a text body from files."""
    body: dict[str, Any] = {
        "name": name,
        "subject": subject,
        "html_body": _read_body(html),
        "text_body": _read_body(text),
        "account_ids": account or [],
        "pools": pool or [],
        "start_at": None if start_at is None else start_at.isoformat(),
        "tracking": tracking,
    }
    if unsubscribe_scope is not None:
        body["unsubscribe_scope"] = unsubscribe_scope
    with session(api_url, api_key, as_json) as (client, output):
        campaign = client.post("/api/campaigns", body)
        if as_json:
            output.json(campaign)
        else:
            output.line(f"created campaign {campaign['id']} ({campaign['status']})")


@app.command("start")
def start_campaign(
    campaign_id: CampaignId,
    at: Annotated[
        datetime | None, typer.Option(help="Not before this time (with a timezone).")
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Start (or resume) a draft or paused campaign."""
    body = {} if at is None else {"start_at": at.isoformat()}
    _change(api_url, api_key, as_json, f"/api/campaigns/{campaign_id}/start", body)


@app.command("pause")
def pause_campaign(
    campaign_id: CampaignId,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Pause a running campaign: nothing more goes out until it is started again."""
    _change(api_url, api_key, as_json, f"/api/campaigns/{campaign_id}/pause", None)


def _change(
    api_url: str, api_key: str | None, as_json: bool, path: str, body: dict[str, Any] | None
) -> None:
    with session(api_url, api_key, as_json) as (client, output):
        campaign = client.post(path, body)
        if as_json:
            output.json(campaign)
            return
        when = f", from {campaign['start_at']}" if campaign.get("start_at") else ""
        output.line(f"campaign {campaign['id']} is {campaign['status']}{when}")


@app.command("cancel")
def cancel_campaign(
    campaign_id: CampaignId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Cancel a campaign and every message not yet being sent (asks first, unless --yes)."""
    if not yes:
        typer.confirm(f"Cancel campaign {campaign_id}? This cannot be undone", abort=True)
    with session(api_url, api_key, as_json) as (client, output):
        cancelled = client.request("DELETE", f"/api/campaigns/{campaign_id}")
        if as_json:
            output.json(cancelled)
            return
        output.line(
            f"cancelled campaign {campaign_id}: {cancelled['cancelled_messages']} messages "
            f"cancelled, {cancelled['released_reservations']} reservations given back"
        )
