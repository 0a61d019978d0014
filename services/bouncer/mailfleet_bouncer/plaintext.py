"""Bounces written for people: the failed recipients named in a notification's text.

For what neither RFC 3464 nor flufl.bounce's detectors read: DragonFly Mail Agent, v5
sendmail transcripts, OpenSMTPD, Lotus Notes and Domino, mFILTER, the Japanese carriers'
notices (au/KDDI, docomo, SoftBank), Verizon, Zoho and other "could not be delivered to"
messages. They differ in their words but not in their shape: a notification, the failed
addresses in it, each near the server's reply when there is one, then a copy of the original.

So: the notification is cut where the copy of the original starts; the addresses it names are
the candidates; an address is dropped when it is not a recipient at all: the notice's own
addresses (From, To, Reply-To...), the original's sender (its From, Sender, Return-Path, the
MAIL FROM of a transcript), daemons (MAILER-DAEMON, the reporting side's postmaster),
Message-IDs, and anything that is not a mail address (a file path, a host name).

`valid_address` and `own_addresses` are the checks every recipient the classifier returns goes
through, whichever parser found it.
"""

import re
from collections.abc import Callable, Iterable

from mailfleet_bouncer import mime

_MAX_CANDIDATES = 20
# A mail address as a bounce may name it: a dot-atom-ish local part, a domain of 2+ labels
# with a letter in its top label, or an address literal.
_VALID = re.compile(
    r"[\w!#$%&'*+=?^`{|}~-]+(?:\.[\w!#$%&'*+=?^`{|}~-]+)*"
    r"@(?:(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_][\w-]*[^\W_]|\[[\d.:a-f]+\])",
    re.IGNORECASE,
)
# Matches start at the start of a run (the lookbehind): a long run without "@" costs one scan.
_CANDIDATE = re.compile(
    r"(?<![\w!#$%&'*+=?^`{|}~./-])[\w!#$%&'*+=?^`{|}~./-]+@[\w.\[\]:-]+", re.IGNORECASE
)
_DAEMON = re.compile(
    r"(?:mailer[-_.]?daemon|mail[-_.]?daemon|mdaemon|double-bounce)(?:[+=-].*)?",
    re.IGNORECASE,
)
# Lines that name the sender, not a recipient: a transcript's MAIL FROM, "From:" headers,
# Exim's "envelope-from", Received lines (they name hosts and the message's own recipient).
_SENDER_LINE = re.compile(
    r"mail from|^[\s>]*(?:from|sender|reply-to|return-path|x-sender|envelope-from)\s*:"
    r"|envelope-from|smtp\.mailfrom|\bfrom:|^\s*received:|message-id|in-reply-to|references:",
    re.IGNORECASE,
)
# Where a notification's copy of the original starts (the classifier looks for the returned
# headers there too).
ORIGINAL = re.compile(
    # Every alternative starts with a letter: the leading run of dashes, spaces and ">" is the
    # prefix's alone, so a long such line is scanned once.
    r"^[ \t>-]*(?:below (?:this line )?is a copy of (?:the|your) (?:original )?message"
    r"|this is a copy of the message|a copy of the original message"
    r"|original message (?:follows|headers?|below)"
    r"|(?:returned|unsent|undelivered|original) (?:mail|message|message headers?)"
    r"(?: follows?)?\b|message headers? follows?|headers? of (?:the )?(?:original|returned)"
    r"|the header of original message|content-type: message/rfc822)[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
# A header block that starts a copy of the original without announcing it: three header
# fields in a row, the first one that a message starts with.
_HEADER = r"[\w-]+:[^\n]*\n(?:[ \t][^\n]*\n)*"
_HEADER_START = re.compile(
    r"\n\n(?=(?:Received|Return-Path|Message-ID|Delivered-To|DKIM-Signature|X-[\w-]+):"
    rf"[^\n]*\n(?:[ \t][^\n]*\n)*{_HEADER}{_HEADER})",
    re.IGNORECASE,
)
_TRAILING = ".,;:>)]}'\""


def notification(text: str) -> str:
    """The part of a bounce's text before its copy of the original message."""
    text = text.replace("\r\n", "\n")
    cut = len(text)
    if match := ORIGINAL.search(text):
        cut = match.start()
    if (match := _HEADER_START.search(text, 0, cut)) and match.start() > 0:
        cut = match.start()
    return text[:cut]


def candidates(text: str, accept: Callable[[str], bool]) -> list[str]:
    """The addresses a notification names as recipients, in order, lower-cased, each once.

    `accept` says whether an address may be a recipient (see `valid_address`).
    """
    found: list[str] = []
    for line in text.split("\n"):
        if "@" not in line or _SENDER_LINE.search(line):
            continue
        for match in _CANDIDATE.finditer(line):
            address = match.group(0).strip(_TRAILING).lstrip(".").lower()
            if address.startswith(("mailto:", "rfc822;")):
                address = address.split(":", 1)[1].split(";", 1)[-1]
            if address in found or not accept(address):
                continue
            found.append(address)
            if len(found) >= _MAX_CANDIDATES:
                return found
    return found


def valid_address(address: str | None) -> bool:
    """Whether a found "recipient" is a mail address that may belong to a person.

    Not a daemon's (MAILER-DAEMON), not a path or a host name,
    not something with "@" in the middle of a Message-ID's random part.
    """
    if not address or len(address) > 254 or "/" in address or ".." in address:
        return False
    if not _VALID.fullmatch(address):
        return False
    local = address.rpartition("@")[0]
    return not _DAEMON.fullmatch(local)


def reporting_postmaster(address: str, sender: str | None) -> bool:
    """Whether the address is the postmaster of the notice's own side (its sender's domain).

    Detectors pick up the "send mail to postmaster@..." of the notice's text; a postmaster of
    another domain may well be the recipient we wrote to.
    """
    local, _, domain = address.rpartition("@")
    if local != "postmaster" or not sender:
        return False
    own = sender.rpartition("@")[2]
    if not own:
        return True
    base = ".".join(own.split(".")[-2:])
    return domain in (own, base) or domain.endswith(("." + own, "." + base))


def own_addresses(
    headers: dict[str, list[str]], returned: dict[str, list[str]], message_ids: Iterable[str]
) -> set[str]:
    """Addresses that are never the failed recipient of this bounce.

    The notice's own From, To, Cc, Reply-To, Sender, Return-Path and Delivered-To (it was sent
    to us), the original's From, Sender, Reply-To and Return-Path (our sender), and each
    Message-ID without its angle brackets.
    """
    own: set[str] = set()
    for name in ("from", "to", "cc", "reply-to", "sender", "return-path", "delivered-to"):
        own.update(a for value in headers.get(name, []) for a in mime.addresses(value))
    for name in ("from", "sender", "reply-to", "return-path", "errors-to"):
        own.update(a for value in returned.get(name, []) for a in mime.addresses(value))
    own.update(i.strip("<>").lower() for i in message_ids)
    return own
