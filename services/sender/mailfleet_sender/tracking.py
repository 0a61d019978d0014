"""Signed tracking and unsubscribe links of a campaign message, put into its parts and headers.

Every campaign message gets an unsubscribe URL (a template variable, a footer when the
template did not place it, and RFC 2369/8058 List-Unsubscribe headers). With the campaign's
tracking switch on, its http(s) links also go through the tracker and its HTML gets an open
pixel.

The HTML is rewritten on a real parse tree (lexbor, through selectolax: a C HTML5 parser that
parses and serializes a 4 KB message in tens of microseconds), never with patterns; plain text
has no markup, so a URL pattern is what finds its links there.
"""

import re
import secrets
import time
from functools import lru_cache
from html import escape
from urllib.parse import quote

from mailfleet_common.errors import MailfleetError
from mailfleet_common.settings import TrackingSettings
from mailfleet_common.tracking import (
    InvalidTrackingKeysError,
    TokenKind,
    TokenSigner,
    click_path,
    open_path,
    parse_keys,
    unsubscribe_path,
)
from selectolax.lexbor import LexborAttributes, LexborHTMLParser

from mailfleet_sender.mime import MessageBuildError, envelope_address

# A template marks a link it wants left as written with this attribute; it never goes out.
NO_TRACK = "data-mf-notrack"
UNSUBSCRIBE_TEXT = "Unsubscribe"

_URL_IN_TEXT = re.compile(r"\bhttps?://[^\s<>\"]+", re.IGNORECASE)
# What ends a sentence rather than a URL written in it ("see https://x.example/a.").
_TRAILING = ".,;:!?'\""
_CLOSERS = {")": "(", "]": "[", "}": "{"}
# Browsers strip these around an href before resolving it.
_URL_SPACE = " \t\n\r\f"
_FOOTER_STYLE = "margin:24px 0 0 0;font-size:12px;color:#666666;text-align:center"
_PIXEL_ATTRIBUTES = ' width="1" height="1" alt="" style="display:none;border:0"'
# Marks where the footer and pixel go; random per process, so no message can contain it.
_PLACEHOLDER = f"mf-{secrets.token_hex(16)}"
_BODY_END = "</body></html>"
_LIST_UNSUBSCRIBE = "List-Unsubscribe: "
_MAX_LINE = 78  # RFC 5322 2.1.1: lines SHOULD stay within 78 characters
# RFC 6068: what an addr-spec may keep unencoded in a mailto URI (besides unreserved).
_MAILTO_SAFE = "!$'()*+,;:@"


class TrackingConfigError(MailfleetError):
    """Tracking keys or base URL are missing or unusable: the sender must not start."""


def _text_url(candidate: str) -> tuple[str, str]:
    """Split a URL pattern match into the URL and the punctuation that follows it."""
    url = candidate
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _CLOSERS and url.count(_CLOSERS[last]) < url.count(last):
            url = url[:-1]  # "(see https://x.example/a)" but not "https://x.example/a_(b)"
        else:
            break
    return url, candidate[len(url) :]


@lru_cache(maxsize=1024)
def _mailto_address(address: str) -> str:
    return quote(envelope_address(address), safe=_MAILTO_SAFE)


class Tracker:
    """Signs the URLs of each message with the first tracking key and the tracker's base URL."""

    def __init__(self, settings: TrackingSettings) -> None:
        """Check the settings; raises TrackingConfigError saying what to fix."""
        if not settings.base_url:
            raise TrackingConfigError(
                "no tracking base URL configured (MAILFLEET_TRACKING__BASE_URL, e.g. "
                "https://t.example.com): every campaign message needs an unsubscribe URL"
            )
        try:
            keys = parse_keys(settings.keys.get_secret_value())
        except InvalidTrackingKeysError as exc:
            raise TrackingConfigError(f"MAILFLEET_TRACKING__KEYS: {exc}") from exc
        self._mailto = settings.unsubscribe_mailto.strip()
        if self._mailto:
            try:
                _mailto_address(self._mailto)
            except MessageBuildError as exc:
                raise TrackingConfigError(f"MAILFLEET_TRACKING__UNSUBSCRIBE_MAILTO: {exc}") from exc
        self.signer = TokenSigner(keys)
        self.base_url = settings.base_url
        self.base_html = escape(settings.base_url)
        self.own_prefix = settings.base_url + "/"

    def links(self, message_id: int, from_address: str) -> "MessageLinks":
        """One message's links; `from_address` receives mailto unsubscribes unless configured."""
        return MessageLinks(self, message_id, _mailto_address(self._mailto or from_address))

    def tracks(self, url: str) -> bool:
        """Whether a link goes through the tracker: http(s), and not already one of ours."""
        return (
            url[:8].lower().startswith(("http://", "https://"))
            and not url.startswith(self.own_prefix)
            and url != self.base_url
        )


class MessageLinks:
    """The signed URLs of one message: unsubscribe first, then pixel and clicks as needed."""

    __slots__ = (
        "_clicks",
        "_issued_at",
        "_mailto",
        "_message_id",
        "_token",
        "_tracker",
        "unsubscribe_url",
    )

    def __init__(self, tracker: Tracker, message_id: int, mailto: str) -> None:
        self._tracker = tracker
        self._message_id = message_id
        self._mailto = mailto
        self._issued_at = int(time.time())
        self._token = tracker.signer.sign(TokenKind.UNSUBSCRIBE, message_id, self._issued_at)
        self.unsubscribe_url = tracker.base_url + unsubscribe_path(self._token)
        # A link repeated in the message (or in both parts) is signed once.
        self._clicks: dict[str, str] = {}

    def headers(self) -> tuple[str, str]:
        """List-Unsubscribe (RFC 2369, web and mailto) and List-Unsubscribe-Post (RFC 8058)."""
        web = f"<{self.unsubscribe_url}>"
        mail = f"<mailto:{self._mailto}?subject=unsubscribe%20{self._token}>"
        # A URI is never folded inside; the fold goes between the two.
        fold = len(_LIST_UNSUBSCRIBE) + len(web) + 2 + len(mail) > _MAX_LINE
        return (
            _LIST_UNSUBSCRIBE + web + (",\r\n " if fold else ", ") + mail,
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        )

    def html(self, source: str, tracked: bool, unsubscribe: bool = True) -> str:
        """The HTML part with tracked links, the pixel and, if missing, an unsubscribe footer.

        Without `unsubscribe` (a transactional message) no footer is added.
        """
        marked = NO_TRACK in source
        footer = unsubscribe and self.unsubscribe_url not in source
        if not (tracked or marked or footer):
            return source
        tree = LexborHTMLParser(source)
        if tracked or marked:
            for node in (*tree.tags("a"), *tree.tags("area")):
                self._rewrite_link(node.attrs, tracked, marked)
        added = self._footer() if footer else ""
        if tracked:
            added += self._pixel()
        if not added:
            return _with_doctype_of(source, tree.html or "")
        serialized = tree.html or ""
        if serialized.endswith(_BODY_END):
            # The serializer writes the parsed document, whose body always closes last
            # (whatever the source wrote after it belongs to the body): our markup goes just
            # before that end tag, at a fraction of the cost of inserting a node.
            end = len(serialized) - len(_BODY_END)
            return _with_doctype_of(source, serialized[:end] + added + serialized[end:])
        body = tree.body
        if body is not None:
            # Not the usual shape (a frameset, say): a placeholder goes in as text at the end
            # of the body, and our own markup replaces it after serializing.
            body.insert_child(_PLACEHOLDER)
            serialized = tree.html or ""
            before, placeholder, after = serialized.rpartition(_PLACEHOLDER)
            if placeholder:
                serialized = before + added + after
        return _with_doctype_of(source, serialized)

    def text(self, text: str, tracked: bool, unsubscribe: bool = True) -> str:
        """The text part with tracked links and, if missing, an unsubscribe line at its end."""
        if tracked:
            text = _URL_IN_TEXT.sub(self._rewrite_text_url, text)
        if not unsubscribe or self.unsubscribe_url in text:
            return text
        if text and not text.endswith("\n"):
            text += "\n"
        return f"{text}\n{UNSUBSCRIBE_TEXT}: <{self.unsubscribe_url}>\n"

    def click_url(self, url: str) -> str:
        """The tracker URL that records a click and redirects to `url`."""
        tracked = self._clicks.get(url)
        if tracked is None:
            tracker = self._tracker
            token = tracker.signer.sign(TokenKind.CLICK, self._message_id, self._issued_at, url)
            tracked = self._clicks[url] = tracker.base_url + click_path(token)
        return tracked

    def _rewrite_link(self, attributes: LexborAttributes, tracked: bool, marked: bool) -> None:
        if marked and NO_TRACK in attributes:
            del attributes[NO_TRACK]
        elif tracked and (href := attributes.get("href")) is not None:
            url = href.strip(_URL_SPACE)
            if self._tracker.tracks(url):
                attributes["href"] = self.click_url(url)

    def _rewrite_text_url(self, match: re.Match[str]) -> str:
        url, rest = _text_url(match.group())
        return (self.click_url(url) if self._tracker.tracks(url) else url) + rest

    def _footer(self) -> str:
        href = self._tracker.base_html + unsubscribe_path(self._token)
        return f'<p style="{_FOOTER_STYLE}"><a href="{href}">{UNSUBSCRIBE_TEXT}</a></p>'

    def _pixel(self) -> str:
        tracker = self._tracker
        token = tracker.signer.sign(TokenKind.OPEN, self._message_id, self._issued_at)
        return f'<img src="{tracker.base_html}{open_path(token)}"{_PIXEL_ATTRIBUTES}>'


def _with_doctype_of(source: str, serialized: str) -> str:
    """The serialized document with the source's own DOCTYPE.

    An HTML5 serializer writes every doctype as ``<!DOCTYPE html>``; an email's XHTML or HTML
    4 doctype (public and system identifiers) selects the rendering mode clients lay tables out
    in, so it is carried over as written.
    """
    if not serialized.startswith("<!DOCTYPE"):
        return serialized
    start = len(source) - len(source.lstrip()) if source[:1].isspace() else 0
    if source[start : start + 9].lower() != "<!doctype":
        return serialized
    # In every doctype tokenizer state, ">" ends the token (even inside a quoted identifier).
    end = source.find(">", start) + 1
    doctype = source[start:end]
    if not end or doctype.lower() == "<!doctype html>":
        return serialized
    return doctype + serialized[serialized.index(">") + 1 :]
