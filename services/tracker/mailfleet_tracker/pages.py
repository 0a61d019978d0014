"""The unsubscribe pages a reader sees: plain HTML, no script, no outside resources."""

from html import escape

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1.25rem;cursor:pointer}}</style>
</head>
<body>
<h1>{title}</h1>
{content}
</body>
</html>
"""


def _page(title: str, content: str) -> bytes:
    return _PAGE.format(title=escape(title), content=content).encode()


def confirm_page(action: str) -> bytes:
    """Asks before unsubscribing: link scanners follow links, but do not submit forms.

    The form carries the RFC 8058 field, so a reader's click and a mail client's one-click
    POST take the same path.
    """
    return _page(
        "Unsubscribe",
        f"""<p>Do you want to stop receiving these emails?</p>
<form method="post" action="{escape(action)}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>""",
    )


def done_page(scope: str) -> bytes:
    """Confirms the unsubscribe, saying how far it reaches."""
    if scope == "campaign":
        reach = "You will not receive any more emails from this campaign."
    else:
        reach = "You will not receive any more emails from us at this address."
    return _page("You are unsubscribed", f"<p>{reach}</p>")


UNAVAILABLE_PAGE = _page(
    "Please try again", "<p>We could not unsubscribe you just now. Please try again shortly.</p>"
)
