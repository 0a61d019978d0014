"""``mailfleet messages show``: what happened to one email."""

from typing import Annotated

import typer

from mailfleet_api.client.api import DEFAULT_API_URL, ApiKey, ApiUrl, Json, show

app = typer.Typer(help="Messages, through the API.", no_args_is_help=True)


@app.command("show")
def show_message(
    message_id: Annotated[str, typer.Argument(help="The message's id.", show_default=False)],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Show a message: its status, every attempt, feedback, opens and clicks."""
    show(api_url, api_key, as_json, f"/api/messages/{message_id}", f"message {message_id}")
