"""The link rewriter: click URLs, open pixel, unsubscribe footer and headers, on their own."""

import re
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

import pytest
from mailfleet_common.settings import TrackingSettings
from mailfleet_common.tracking import Token, TokenKind, TokenSigner
from mailfleet_sender.mime import build_message
from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import Settings
from mailfleet_sender.tracking import MessageLinks, Tracker, TrackingConfigError
from selectolax.lexbor import LexborHTMLParser

from tests.sender.conftest import TRACKER, verified

MESSAGE_ID = 4242
FROM = "news@fleet.example.com"


@pytest.fixture
def tracker(tracking_keys: str) -> Tracker:
    return Tracker(TrackingSettings(keys=tracking_keys, base_url=TRACKER))


@pytest.fixture
def links(tracker: Tracker) -> MessageLinks:
    return tracker.links(MESSAGE_ID, FROM)


def _token(signer: TokenSigner, url: str, path: str) -> Token:
    return verified(signer, url, path, MESSAGE_ID)


def _click_target(signer: TokenSigner, url: str) -> str:
    token = _token(signer, url, "/track/click/")
    assert token.kind is TokenKind.CLICK
    assert token.url is not None
    return token.url


def _hrefs(html: str) -> list[str]:
    return [str(node.attrs.get("href")) for node in LexborHTMLParser(html).css("a, area")]


def _clicks(part: str) -> list[str]:
    return re.findall(rf"{re.escape(TRACKER)}/track/click/[A-Za-z0-9_-]+", part)


def _pixels(html: str) -> list[str]:
    tree = LexborHTMLParser(html)
    return [
        str(src)
        for node in tree.css("img")
        if (src := node.attrs.get("src")) and src.startswith(f"{TRACKER}/track/open/")
    ]


def test_web_links_become_click_urls_that_verify_to_the_exact_original(
    links: MessageLinks, signer: TokenSigner
) -> None:
    html = links.html(
        '<p><a href="https://shop.example.com/a?x=1&amp;y=%C3%A9&z=2#top">A</a>'
        '<a href="HTTP://Example.org/Upper">B</a>'
        '<a href=" https://example.org/spaced ">C</a></p>'
        '<map name="m"><area href="https://example.org/area?q=a+b" shape="rect"></map>',
        tracked=True,
    )

    assert _hrefs(html)[-1] == links.unsubscribe_url
    assert _hrefs(html)[:-1] == _clicks(html)
    assert [_click_target(signer, url) for url in _clicks(html)] == [
        "https://shop.example.com/a?x=1&y=%C3%A9&z=2#top",
        "HTTP://Example.org/Upper",
        "https://example.org/spaced",
        "https://example.org/area?q=a+b",
    ]


def test_links_that_must_not_be_tracked_are_left_as_written(links: MessageLinks) -> None:
    html = links.html(
        '<a href="mailto:help@example.com?subject=Hi%20there">mail</a>'
        '<a href="tel:+351210000000">call</a>'
        '<a href="#section-2">jump</a>'
        '<a href="/relative/path">relative</a>'
        '<a href="ftp://files.example.com/x">ftp</a>'
        '<a href="https://example.org/keep?a=1&amp;b=2" data-mf-notrack>kept</a>'
        f'<a href="{TRACKER}/somewhere">ours</a>'
        f'<a href="{links.unsubscribe_url}">unsubscribe</a>',
        tracked=True,
    )

    assert _hrefs(html) == [
        "mailto:help@example.com?subject=Hi%20there",
        "tel:+351210000000",
        "#section-2",
        "/relative/path",
        "ftp://files.example.com/x",
        "https://example.org/keep?a=1&b=2",
        f"{TRACKER}/somewhere",
        links.unsubscribe_url,
    ]
    assert "data-mf-notrack" not in html
    assert 'href="https://example.org/keep?a=1&amp;b=2"' in html


def test_the_open_pixel_is_added_once_as_the_last_element_of_the_body(
    links: MessageLinks, signer: TokenSigner
) -> None:
    html = links.html(
        f'<html><body><p>Hi</p><p><a href="{links.unsubscribe_url}">Leave</a></p></body></html>',
        tracked=True,
    )

    [pixel] = _pixels(html)
    assert _token(signer, pixel, "/track/open/").kind is TokenKind.OPEN
    assert html.endswith(
        f'<img src="{pixel}" width="1" height="1" alt="" style="display:none;border:0">'
        "</body></html>"
    )


def test_footer_and_pixel_land_inside_the_body_whatever_follows_it(links: MessageLinks) -> None:
    html = links.html("<p>x</p></body></html>\n<!-- </body> --><p>late</p>", tracked=True)

    tree = LexborHTMLParser(html)
    body = tree.body
    assert body is not None
    assert [node.tag for node in body.iter()] == ["p", "p", "p", "img"]
    assert html.endswith("</body></html><!-- </body> -->")


def test_a_link_repeated_in_both_parts_is_signed_once(links: MessageLinks) -> None:
    url = "https://shop.example.com/spring?ref=1"
    html = links.html(f'<a href="{url}">one</a><a href="{url}">two</a>', tracked=True)
    text = links.text(f"See {url}\n", tracked=True)

    first, second = _hrefs(html)[:2]
    assert first == second == links.click_url(url)
    assert links.click_url(url) in text


def test_the_document_round_trips_through_the_parser(links: MessageLinks) -> None:
    source = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head>'
        '<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">'
        "<title>Caf\u00e9 &amp; co</title>"
        "<!--[if mso]><style>td{padding:0}</style><![endif]--></head>"
        '<body style="margin:0"><p title="Tom &amp; &quot;Jerry&quot;">'
        "Fish &amp; chips &lt;3 &nbsp; caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 &copy;</p>"
        '<a href="https://example.org/?a=1&amp;b=2" data-mf-notrack>x</a>'
        f'<a href="{links.unsubscribe_url}">leave</a></body></html>'
    )

    html = links.html(source, tracked=False)

    assert html == (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head>'
        '<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">'
        "<title>Caf\u00e9 &amp; co</title>"
        "<!--[if mso]><style>td{padding:0}</style><![endif]--></head>"
        '<body style="margin:0"><p title="Tom &amp; &quot;Jerry&quot;">'
        "Fish &amp; chips &lt;3 &nbsp; caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 \u00a9</p>"
        '<a href="https://example.org/?a=1&amp;b=2">x</a>'
        f'<a href="{links.unsubscribe_url}">leave</a></body></html>'
    )


def test_html_without_the_unsubscribe_url_gets_an_untracked_footer_link(
    links: MessageLinks,
) -> None:
    html = links.html("<p>Hello</p>", tracked=True)

    tree = LexborHTMLParser(html)
    [footer] = [a for a in tree.css("a") if a.attrs.get("href") == links.unsubscribe_url]
    assert footer.text() == "Unsubscribe"
    assert html.count(links.unsubscribe_url) == 1
    assert html.index(links.unsubscribe_url) < html.index("/track/open/")


def test_a_template_that_places_the_unsubscribe_url_gets_no_footer(links: MessageLinks) -> None:
    source = f'<p>Bye? <a href="{links.unsubscribe_url}">Leave this list</a></p>'

    html = links.html(source, tracked=True)

    assert html.count(links.unsubscribe_url) == 1
    assert "Unsubscribe</a>" not in html


def test_text_links_are_tracked_without_the_punctuation_around_them(
    links: MessageLinks, signer: TokenSigner
) -> None:
    text = links.text(
        "Shop at https://shop.example.com/a?x=1&y=2#frag. Or (https://example.org/b), "
        "or https://en.wikipedia.org/wiki/Foo_(bar)!\nmailto:x@example.org stays.\n",
        tracked=True,
    )

    first, second, third = _clicks(text)
    assert [_click_target(signer, url) for url in (first, second, third)] == [
        "https://shop.example.com/a?x=1&y=2#frag",
        "https://example.org/b",
        "https://en.wikipedia.org/wiki/Foo_(bar)",
    ]
    assert text == (
        f"Shop at {first}. Or ({second}), or {third}!\nmailto:x@example.org stays.\n"
        f"\nUnsubscribe: <{links.unsubscribe_url}>\n"
    )


def test_text_that_carries_the_unsubscribe_url_gets_no_extra_line(links: MessageLinks) -> None:
    source = f"Leave at {links.unsubscribe_url}\nBye"

    assert links.text(source, tracked=True) == source
    assert links.text("No newline at the end", tracked=False) == (
        f"No newline at the end\n\nUnsubscribe: <{links.unsubscribe_url}>\n"
    )


def test_with_tracking_off_nothing_is_tracked_but_unsubscribe_is_still_there(
    links: MessageLinks,
) -> None:
    html = links.html(
        '<p><a href="https://example.org/a" data-mf-notrack>a</a>'
        '<a href="https://example.org/b">b</a></p>',
        tracked=False,
    )
    text = links.text("Go to https://example.org/b\n", tracked=False)

    assert "/track/" not in html + text
    assert "data-mf-notrack" not in html
    assert _hrefs(html) == ["https://example.org/a", "https://example.org/b", links.unsubscribe_url]
    assert text == f"Go to https://example.org/b\n\nUnsubscribe: <{links.unsubscribe_url}>\n"


def test_untracked_html_that_needs_nothing_is_not_reparsed(links: MessageLinks) -> None:
    source = f'<!doctype html>\n<p><a href="{links.unsubscribe_url}">leave</a><table><tr><td>x'

    assert links.html(source, tracked=False) is source


def _headers(links: MessageLinks) -> EmailMessage:
    raw = build_message(
        from_header=FROM,
        to_header="reader@example.org",
        subject="Hi",
        message_id="<1@fleet.example.com>",
        html=None,
        text="Hi\n",
        headers=links.headers(),
    )
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    return message


def test_list_unsubscribe_headers_offer_the_web_and_mailto_uris_and_one_click(
    links: MessageLinks, signer: TokenSigner
) -> None:
    message = _headers(links)

    token = links.unsubscribe_url.rpartition("/")[2]
    assert _token(signer, links.unsubscribe_url, "/unsubscribe/").kind is TokenKind.UNSUBSCRIBE
    assert str(message["List-Unsubscribe"]) == (
        f"<{links.unsubscribe_url}>, <mailto:{FROM}?subject=unsubscribe%20{token}>"
    )
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert message.get_content().splitlines() == ["Hi"]  # the body still starts where it should


def test_list_unsubscribe_is_folded_between_the_uris(links: MessageLinks) -> None:
    # A URI cannot be folded inside, and with a signed token the first alone passes 78.
    unsubscribe, post = links.headers()

    assert unsubscribe.startswith(f"List-Unsubscribe: <{links.unsubscribe_url}>,\r\n <mailto:")
    assert unsubscribe.count("\r\n") == 1
    assert post == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"


def test_a_configured_unsubscribe_mailbox_replaces_the_from_address(tracking_keys: str) -> None:
    tracker = Tracker(
        TrackingSettings(
            keys=tracking_keys,
            base_url=TRACKER,
            unsubscribe_mailto="leave+list@b\u00fccher.example",
        )
    )

    message = _headers(tracker.links(MESSAGE_ID, FROM))

    assert "<mailto:leave+list@xn--bcher-kva.example?subject=unsubscribe%20" in str(
        message["List-Unsubscribe"]
    )


@pytest.mark.parametrize(
    ("tracking", "named"),
    [
        (TrackingSettings(keys="k" * 32), "MAILFLEET_TRACKING__BASE_URL"),
        (TrackingSettings(base_url=TRACKER), "MAILFLEET_TRACKING__KEYS"),
        (TrackingSettings(keys="short", base_url=TRACKER), "MAILFLEET_TRACKING__KEYS"),
        (
            TrackingSettings(keys="k" * 32, base_url=TRACKER, unsubscribe_mailto="not an address"),
            "MAILFLEET_TRACKING__UNSUBSCRIBE_MAILTO",
        ),
    ],
)
def test_the_sender_refuses_to_start_without_usable_tracking_settings(
    settings: Settings, tracking: TrackingSettings, named: str
) -> None:
    with pytest.raises(TrackingConfigError, match=named):
        SenderReplica(settings.model_copy(update={"tracking": tracking}))
