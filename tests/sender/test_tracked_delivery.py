"""Delivered campaign messages carry tracked links, the pixel and unsubscribe headers."""

from email.message import EmailMessage
from typing import Any

from mailfleet_common.tracking import TokenKind, TokenSigner
from mailfleet_sender.replica import SenderReplica
from selectolax.lexbor import LexborHTMLParser

from tests.sender.conftest import TRACKER, deliver_one, verified
from tests.smtp_peer import SmtpPeer

HTML = (
    "<!doctype html><html><body><p>Hi {{ name }}</p>"
    '<p><a href="https://shop.example.com/s?ref={{ code }}&amp;utm=mail#new">Shop</a></p>'
    "{{ footer }}</body></html>"
)
TEXT = "Hi {{ name }}, shop at https://shop.example.com/s?ref={{ code }}&utm=mail#new\n{{ footer }}"


def _parts(message: EmailMessage) -> tuple[str, str]:
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert isinstance(html, EmailMessage)
    assert isinstance(text, EmailMessage)
    return str(html.get_content()), str(text.get_content()).replace("\r\n", "\n")


def _unsubscribe_headers(message: EmailMessage, signer: TokenSigner, message_id: int) -> str:
    """The one-click unsubscribe URL, after checking both headers as a mail client reads them."""
    web, mailto = str(message["List-Unsubscribe"]).split(", ")
    url = web.removeprefix("<").removesuffix(">")
    assert verified(signer, url, "/unsubscribe/", message_id).kind is TokenKind.UNSUBSCRIBE
    token = url.rpartition("/")[2]
    assert mailto == f"<mailto:news@fleet.example.com?subject=unsubscribe%20{token}>"
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    return url


async def test_a_delivered_message_has_tracked_links_one_pixel_and_unsubscribe_headers(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str, signer: TokenSigner
) -> None:
    [message_id] = await deliver_one(
        db, smtp_peer.port, rabbit_url, "tracked@example.org", html=HTML, text=TEXT
    )

    [received] = smtp_peer.handler.to("tracked@example.org")
    message = received.message
    assert isinstance(message, EmailMessage)
    unsubscribe = _unsubscribe_headers(message, signer, message_id)
    html, text = _parts(message)
    tree = LexborHTMLParser(html)
    shop, footer = (str(a.attrs.get("href")) for a in tree.css("a"))
    token = verified(signer, shop, "/track/click/", message_id)
    assert token.url == "https://shop.example.com/s?ref=c-1&utm=mail#new"
    assert footer == unsubscribe
    [pixel] = [str(img.attrs.get("src")) for img in tree.css("img")]
    assert verified(signer, pixel, "/track/open/", message_id).kind is TokenKind.OPEN
    assert text == f"Hi Reader, shop at {shop}\n\nUnsubscribe: <{unsubscribe}>\n"


async def test_a_campaign_without_tracking_still_gets_its_unsubscribe_url_and_headers(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str, signer: TokenSigner
) -> None:
    # The templates place the unsubscribe URL themselves: no footer is added to either part.
    [message_id] = await deliver_one(
        db,
        smtp_peer.port,
        rabbit_url,
        "private@example.org",
        html=HTML.replace("{{ footer }}", '<a href="{{ unsubscribe_url }}">Leave</a>'),
        text=TEXT.replace("{{ footer }}", "Leave: {{ unsubscribe_url }}\n"),
        tracking=False,
    )

    [received] = smtp_peer.handler.to("private@example.org")
    message = received.message
    assert isinstance(message, EmailMessage)
    unsubscribe = _unsubscribe_headers(message, signer, message_id)
    html, text = _parts(message)
    assert "/track/" not in html + text
    assert [str(a.attrs.get("href")) for a in LexborHTMLParser(html).css("a")] == [
        "https://shop.example.com/s?ref=c-1&utm=mail#new",
        unsubscribe,
    ]
    assert "<img" not in html
    assert text == (
        "Hi Reader, shop at https://shop.example.com/s?ref=c-1&utm=mail#new\n"
        f"Leave: {unsubscribe}\n"
    )
    assert unsubscribe.startswith(f"{TRACKER}/unsubscribe/")
