"""``mailfleet events tail``: follow events as they happen, by polling the events feed."""

import time
from typing import Annotated, Any

import typer
from rich.text import Text

from mailfleet_api.client.api import (
    DEFAULT_API_URL,
    ApiClient,
    ApiKey,
    ApiUnreachableError,
    ApiUrl,
    Json,
    session,
)
from mailfleet_api.client.render import Output, to_json

app = typer.Typer(help="Events, through the API.", no_args_is_help=True)

FEED_PATH = "/api/events/feed"
# While the API cannot be reached mid-tail, retry after 1, 2, 4 ... seconds, up to this.
MAX_BACKOFF_S = 30.0


def _event_line(event: dict[str, Any]) -> Text:
    text = Text()
    text.append(str(event.get("occurred_at", "")), style="dim")
    text.append(f"  {event.get('type', '')}", style="bold")
    for name in ("campaign_id", "message_id", "account_id"):
        if event.get(name) is not None:
            text.append(f"  {name.removesuffix('_id')}={event[name]}")
    if event.get("data"):
        text.append(f"  {to_json(event['data'])}", style="cyan")
    return text


class Feed:
    """The feed read on from a cursor: each read returns what came after the previous one.

    Without a cursor, the first read gives the feed's end and no events: only what happens
    from then on follows.
    """

    def __init__(
        self, client: ApiClient, filters: dict[str, Any], limit: int, cursor: str | None
    ) -> None:
        self.client = client
        self.filters = filters
        self.limit = limit
        self.cursor = cursor

    def read(self) -> list[dict[str, Any]]:
        params = {**self.filters, "after": self.cursor, "limit": self.limit}
        page = self.client.get(FEED_PATH, params)
        self.cursor = page["next_cursor"]
        items: list[dict[str, Any]] = page["items"]
        return items


def _follow(feed: Feed, output: Output, interval: float, count: int | None) -> None:
    """Print events until `count` of them, or forever."""
    shown, backoff = 0, 1.0
    while count is None or shown < count:
        try:
            items = feed.read()
        except ApiUnreachableError as exc:
            output.warn(f"{exc}; retrying in {backoff:.0f} s")
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        backoff = 1.0
        for event in items[: None if count is None else count - shown]:
            if output.as_json:
                output.json(event)
            else:
                output.out.print(_event_line(event), soft_wrap=True)
            shown += 1
        if len(items) < feed.limit:
            time.sleep(interval)  # caught up: a full page means more is waiting already


@app.command("tail")
def tail_events(
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only this type (sent, opened, bounced, ...).")
    ] = None,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign's events.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Start after this cursor (printed when a tail stops) instead of now."),
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    interval: Annotated[
        float, typer.Option(min=0.1, max=60, help="Seconds between polls once caught up.")
    ] = 1.0,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Events per request.")] = 500,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Print events as they happen, oldest first, until Ctrl-C (--json: one object a line)."""
    filters = {"type": event_type, "campaign_id": campaign}
    with session(api_url, api_key, as_json) as (client, output):
        feed = Feed(client, filters, limit, since)
        try:
            if since is None:
                feed.read()
            output.note("following events (Ctrl-C to stop)")
            _follow(feed, output, interval, count)
        except KeyboardInterrupt:
            pass
        if feed.cursor is not None:
            output.note(f"to go on from here: mailfleet events tail --since {feed.cursor}")
