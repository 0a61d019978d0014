"""Telling machines from readers: mail-privacy proxies, link scanners and fetches on delivery.

A machine's hit is still recorded, flagged with a short reason, so that open and click rates
can leave it out without losing the fact that the message arrived somewhere.
"""

import re
from functools import lru_cache

# One pass of one compiled pattern; the group that matched names the reason.
_SIGNATURES = re.compile(
    r"""
    (?P<google_image_proxy>googleimageproxy|ggpht\.com)
    |(?P<yahoo_mail_proxy>yahoomailproxy)
    # Apple Mail Privacy Protection fetches through its proxy with this and nothing else.
    |(?P<apple_mail_privacy>\Amozilla/5\.0\Z)
    # Office checks a link before opening it; SafeLinks and Bing preview every link.
    |(?P<microsoft_scanner>bingpreview|safelinks|microsoft\ office\ protocol\ discovery
        |microsoft\ office\ existence\ discovery|microsoft-webdav-miniredir)
    |(?P<barracuda>barracuda)
    |(?P<mimecast>mimecast)
    |(?P<proofpoint>proofpoint|ppops)
    |(?P<http_library>\Acurl/|\Awget/|python|go-http-client|\Ajava/|okhttp|libwww-perl
        |aiohttp|httpx|\Aaxios/|node-fetch|\Ascrapy|headlesschrome|phantomjs)
    # "Googlebot/2.1", "bingbot", "Slackbot-LinkExpanding"; not a phone named "CUBOT X19".
    |(?P<bot>(?<!cu)bot(?:\b|_)|spider|crawler)
    """,
    re.IGNORECASE | re.VERBOSE,
)
_REASONS = {name: name.replace("_", "-") for name in _SIGNATURES.groupindex}
TOO_SOON = "too-soon-after-send"
MAX_USER_AGENT = 512  # TrackingHit.user_agent
EMPTY_USER_AGENT = "empty-user-agent"


def user_agent_reason(user_agent: str) -> str | None:
    """The kind of machine a User-Agent names (``google-image-proxy``, ``bot``, ...), or None."""
    if not user_agent.strip():
        return EMPTY_USER_AGENT
    match = _SIGNATURES.search(user_agent.strip())
    if match is None or match.lastgroup is None:
        return None
    return _REASONS[match.lastgroup]


@lru_cache(maxsize=4096)
def read_user_agent(raw: bytes) -> tuple[str | None, str | None]:
    """A User-Agent header as a hit records it (cut to 512 characters), and its reason.

    Cached by the raw header: a few clients and proxies send most of the requests.
    """
    user_agent = raw.decode("latin-1")
    return user_agent[:MAX_USER_AGENT] or None, user_agent_reason(user_agent)


def machine_reason(
    user_agent_reason: str | None, issued_at: float, now: float, window_s: float
) -> str | None:
    """Why a hit looks like a machine's, or None if it looks like a reader's.

    A known machine's User-Agent says it; otherwise a hit within `window_s` of `issued_at`
    (when the message was built, from its token) is a scanner's fetch on delivery.
    """
    if user_agent_reason is None and now - issued_at < window_s:
        return TOO_SOON
    return user_agent_reason
