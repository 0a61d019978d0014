"""Hard or soft, and why: the verdict on one failed recipient.

A hard bounce suppresses the address for good, so "hard" is kept for a failure that says the
address itself is bad: the mailbox does not exist, was disabled, moved, or its domain does not
exist or takes no mail (null MX, RFC 7505). Anything else, and anything ambiguous, is soft, with
the reason recorded; repeated soft bounces are escalated by the suppression policy instead.

The decision, for a recipient that failed (Action failed, or a 5.x.x code with no Action):

1. The code. The remote server's own code in the Diagnostic-Code beats the Status field when
   they disagree (a relay writes "Status: 5.1.1" over "550 5.7.1 IP blacklisted"), and a 4xx
   reply from the remote server is temporary whatever the Status says.
2. The text. Generic and even specific codes come with text that names the real cause: SPF,
   DKIM or DMARC failures, a missing PTR record, a blocklisted IP, spam, too many recipients,
   a full mailbox, a message too big, a delivery that expired. Such text makes the failure
   soft, unless the text names a bad address as well.
3. The codes of RFC 3463 that are about the address are hard: 5.1.1 (bad mailbox), 5.1.2 (bad
   domain), 5.1.3 (bad address syntax), 5.1.6 (mailbox moved), 5.1.10 (null MX, RFC 7505),
   5.2.1 (mailbox disabled) and 5.7.27 (the domain publishes a null MX). 5.1.7 and 5.1.8 are
   about the *sender's* address and are soft. 5.2.2, 5.2.3, 5.3.x, 5.4.7, 5.6.x and the
   other 5.7.x (policy, authentication, spam) are about the mailbox's size, the message, the
   receiving system or the sender, and are soft.
4. Everything else (5.0.0, 5.1.0, 5.2.0, 5.5.x, 5.4.4, vendor codes, or no code at all) is hard
   only when the text says the address is bad ("user unknown", "no such mailbox", "domain not
   found"...); otherwise soft, as ambiguous.
"""

import re
from typing import Literal

BounceType = Literal["hard", "soft"]
Verdict = tuple[BounceType | None, str | None]

SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
_ADDRESS_CODES = {
    ("1", "1"): "bad destination mailbox",
    ("1", "2"): "bad destination domain",
    ("1", "3"): "bad destination address syntax",
    ("1", "6"): "mailbox has moved",
    ("1", "10"): "the domain accepts no mail (null MX)",
    ("2", "1"): "mailbox disabled",
    ("7", "27"): "the domain publishes a null MX",
}
_SENDER_CODES = {("1", "7"): "bad sender address", ("1", "8"): "bad sender's domain"}
_SOFT_CODES = {
    ("2", "2"): "mailbox full",
    ("2", "3"): "message over the mailbox's size limit",
    ("4", "7"): "delivery time expired",
}
_SOFT_SUBJECTS = {
    "3": "the receiving mail system",
    "6": "the message's content or media",
    "7": "policy or security, about the sender",
}
# The Japanese mobile carriers' mail domains.
_CARRIER_DOMAINS = (
    "docomo.ne.jp",
    "ezweb.ne.jp",
    "au.com",
    "softbank.ne.jp",
    "i.softbank.jp",
    "disney.ne.jp",
    "vodafone.ne.jp",
    "pdx.ne.jp",
    "willcom.com",
    "ymobile.ne.jp",
    "emobile.ne.jp",
)
_RCPT_STAGE = re.compile(r"recipient address rejected|in reply to rcpt to", re.IGNORECASE)
AFTER_DATA = re.compile(r"in reply to (?:the )?(?:end of )?data\b", re.IGNORECASE)
_LEADING_CODE = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;)?\s*([245])\d\d(?![\d.])")

# Text that names a cause other than the address. Checked in this order; the first wins.
_SOFT_TEXT: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern))
    for label, pattern in (
        (
            "mailbox full",
            r"mailbox (?:is )?full|full mailbox|mail ?folder is full|over ?quota|quota"
            r"|insufficient (?:storage|space|disk)|exceeded (?:storage|the storage)"
            r"|mailbox size limit|storage (?:limit|space|allocation)|disk (?:is )?full"
            r"|not enough (?:space|storage)|mailbox has exceeded",
        ),
        (
            "message too big",
            r"message (?:is )?too (?:big|large)|message size|size limit|too large|exceeds? "
            r"(?:the )?(?:maximum|max\.?|size)|line limit exceeded|message length exceeds",
        ),
        (
            "the sender's address was refused",
            r"sender (?:address|domain|e-?mail)? ?(?:is )?(?:rejected|refused|invalid|unknown"
            r"|verif)|domain of sender|unroutable sender|sender verif|envelope[- ]from"
            r"|unauthenticated senders?|sender (?:is )?not (?:allowed|authorized|permitted)"
            r"|mail from",
        ),
        (
            "sender authentication (SPF, DKIM, DMARC)",
            r"\bspf\b|\bdkim\b|\bdmarc\b|sender policy framework|not allowed to send from"
            r"|authentication (?:failed|failure|required)|not authenticated|unauthenticated",
        ),
        (
            "the sending IP's reverse DNS (PTR)",
            r"\bptr\b|reverse dns|reverse[- ]lookup|\brdns\b|reverse (?:host|record|name)"
            r"|mismatches client ip|no reverse|client host rejected: cannot find your hostname",
        ),
        (
            "blocklisted or blocked sender",
            r"black ?list|block ?list|blocked|spamhaus|spamcop|\brbl\b|dnsbl"
            r"|(?<!not )\blisted (?:at|on|in|by)"
            r"|reputation|banned|access denied|denied by policy|rejected by policy"
            r"|poor reputation|not accepted from|your ip|ip address .{0,40}(?:rejected|refused)"
            r"|messages from \S+ (?:weren't|were not|are not) sent",
        ),
        (
            "spam or content rejected",
            r"\bspam|junk|content (?:rejected|filter)|message content|virus|malware|phish"
            r"|suspicious|unsolicited|bulk (?:e-?)?mail|policy (?:violation|reasons)"
            r"|protocol violation|rejected (?:by|due to) (?:the )?(?:content|filter|policy)"
            r"|not (?:rfc|rfc ?5322)[- ]compliant|message rejected|refused by (?:the )?filter",
        ),
        (
            "rate or recipient limits",
            r"too many (?:recipients|connections|messages|rcpt|concurrent)|rate limit"
            r"|at a rate|throttl|(?:sending|connection|rate|daily) limit"
            r"|limit (?:exceeded|reached)|exceeded (?:the )?(?:rate|sending|connection|limit)",
        ),
        ("the remote server said to try again", r"try (?:again|later)"),
        (
            "relaying refused",
            r"relay(?:ing)? (?:access )?(?:is )?(?:denied|not (?:permitted|allowed)|prohibited"
            r"|refused)|not permitted to relay|unable to relay|we do not relay|no relaying",
        ),
        (
            "delivery expired after temporary failures",
            r"retry time(?:out)? (?:exceeded|expired)|delivery time expired|message expired"
            r"|has expired|time ?out|timed out|could not be delivered (?:with)?in|gave up"
            r"|giving up|hop count|too many hops|mail loop|loops? (?:back|detected)"
            r"|deferred|still (?:undelivered|pending)|will (?:be )?retr",
        ),
        (
            "network or connection failure",
            r"connection (?:refused|reset|timed out|lost|closed|dropped)|network"
            r"|no route to host|unreachable|name server (?:timeout|failure|error)"
            r"|unexpected name server reply|dns query failed"
            r"|temporary failure in name resolution|servfail|lost connection",
        ),
        (
            "not permitted to post to a group or list",
            r"permission to post|not (?:allowed|authorized|permitted) to (?:post|send)"
            r"|members? only|moderat",
        ),
        (
            "the receiving system failed",
            r"system error|internal error|transaction failed|local error|server error"
            r"|not implemented|syntax error|command unrecognized|unrecognized command"
            r"|mailer error|delivery failed: \d|error_code\s*:\s*4\d\d|resources? "
            r"(?:temporarily )?unavailable|out of memory|too busy|service unavailable",
        ),
    )
)
# Text that says the address itself is bad. These patterns and the ones above are matched
# against the lower-cased text, which is several times faster than IGNORECASE.
_ADDRESS_TEXT = re.compile(
    r"user unknown|unknown (?:user|recipient|mailbox|address|local[- ]?part|account|alias)"
    r"|no such (?:user|mailbox|recipient|account|address|local user|person|domain|host)"
    r"|(?:user|mailbox|recipient|account|address|addressee|e-?mail account)\b[^.;\n]{0,80}?"
    r"(?:does not|doesn't|did not|does no longer) exist|does not exist|doesn't exist"
    r"|recipient (?:unknown|not found|invalid)|invalid (?:recipient|mailbox|user|address)"
    r"|(?:mailbox|user|recipient|account) (?:is )?(?:unknown|not found|invalid)"
    r"|no mailbox|mailbox not found|not a valid (?:user|mailbox|recipient)"
    r"|unrouteable address|domain (?:not found|does not exist|is unknown|unknown)"
    r"|(?:host (?:or domain name )?|host \S+ )not found(?!, try again)|host unknown|unknown host"
    r"|nxdomain|null ?mx|not listed in (?:the )?(?:domino |public )?(?:directory|address book)"
    r"|(?:does not|doesn't) accept (?:any )?(?:e-?)?mail|accepts no mail"
    r"|account (?:has been |is )?(?:disabled|deactivated|closed|terminated|deleted|removed"
    r"|inactive|expired|discontinued)|mailbox (?:has been |is )?(?:disabled|inactive|closed"
    r"|deactivated|removed|deleted)|(?:is|was) disabled|no longer (?:active|available|in use"
    r"|valid|exists?)|has moved|address (?:has )?changed|unknown or illegal alias"
    r"|not a known user|is not a valid|bad (?:destination )?(?:mailbox|address)"
    r"|address unknown|no account|dd sorry your message"
    r"|(?:doesn't|does not) have an? \S+ account"
    r"|(?:user|mailbox|recipient|address|account) not exists?"
    r"|invalid (?:recipient )?domain\b(?! name)"
    r"|no smtp service|couldn't find a mail exchanger or ip address",
)


def judge(
    action: str | None,
    status: str | None,
    diagnostic: str | None,
    *,
    after_data: bool = False,
    address: str | None = None,
) -> Verdict:
    """Hard, soft or None (not a failure), with the reason; see the module docstring.

    `after_data`: the refusal answered the DATA command, when the address had been accepted at
    RCPT TO; a recipient's filter that refuses our sender often says "user unknown" then, so
    no refusal after DATA is hard. The Japanese mobile carriers (docomo, au, SoftBank) answer
    "user unknown" to a sender their user's filter refuses, at any stage: for an `address` of
    theirs, only a specific code (5.1.1...) is hard.
    """
    text = diagnostic.lower() if diagnostic else None
    bounce, reason = _judge(action, status, text)
    after_data = after_data or bool(text and AFTER_DATA.search(text))
    # Postfix's RCPT TO restrictions say "Recipient address rejected": a reply to RCPT TO that
    # a pipelining client reads after sending DATA.
    if after_data and text and _RCPT_STAGE.search(text):
        after_data = False
    if bounce == "hard" and after_data:
        return "soft", f"refused after DATA, the address having been accepted: {reason}"
    code = tuple(status.split(".")[1:]) if status else ()
    if bounce == "hard" and code not in _ADDRESS_CODES and _carrier(address):
        return "soft", f"a mobile carrier's refusal, also its answer to a filtered sender: {reason}"
    return bounce, reason


def _carrier(address: str | None) -> bool:
    domain = (address or "").rpartition("@")[2]
    return any(domain == d or domain.endswith("." + d) for d in _CARRIER_DOMAINS)


def _judge(action: str | None, status: str | None, diagnostic: str | None) -> Verdict:
    if action in SUCCESS_ACTIONS:
        return None, None
    if action == "delayed":
        return "soft", "delayed: the MTA is still trying"
    # "expired" is not an RFC 3464 Action, but some ESPs write it for a message they gave up on.
    failed = action is not None and action.startswith(("fail", "error", "expired"))
    if status is None or status[0] == "2":
        if not failed:
            return None, None
        return _by_text(diagnostic, "a permanent failure without a status code", first_wins=True)
    where = f" ({status})"
    if status[0] == "4":
        return "soft", f"temporary failure{where}"
    if diagnostic and (match := _LEADING_CODE.match(diagnostic)) and match.group(1) == "4":
        return "soft", f"the remote server's reply was temporary{where}"
    _, subject, detail = status.split(".")
    soft_cause = _soft_cause(diagnostic)
    if (subject, detail) in _SENDER_CODES:
        return (
            "soft",
            f"about the sender's address, not the recipient's: "
            f"{_SENDER_CODES[subject, detail]}{where}",
        )
    if (subject, detail) in _ADDRESS_CODES:
        if soft_cause and not _names_bad_address(diagnostic):
            return "soft", f"{soft_cause}, said under{where}"
        return "hard", f"{_ADDRESS_CODES[subject, detail]}{where}"
    if (subject, detail) in _SOFT_CODES:
        return "soft", f"{_SOFT_CODES[subject, detail]}{where}"
    if subject in _SOFT_SUBJECTS:
        return "soft", f"{soft_cause or _SOFT_SUBJECTS[subject]}{where}"
    return _by_text(diagnostic, f"a non-specific failure{where}")


def _by_text(diagnostic: str | None, what: str, *, first_wins: bool = False) -> Verdict:
    """A failure whose code does not decide: hard only if the text names a bad address.

    `first_wins`: the text is a notice's paragraph rather than a server's reply (no code was
    found), so the cause it names first is the one; boilerplate further on ("if you think
    this was sent in error, check the sender's address") says nothing about this failure.
    """
    soft_cause = _soft_cause(diagnostic, first=first_wins)
    if diagnostic and first_wins and (bad := _ADDRESS_TEXT.search(diagnostic)):
        soft_at = min((p.search(diagnostic) for _, p in _SOFT_TEXT), key=_start, default=None)
        if soft_at is None or bad.start() < soft_at.start():
            return "hard", f"the text says the address is bad, in {what}"
    if soft_cause:
        return "soft", f"{soft_cause}, said in the text of {what}"
    if _names_bad_address(diagnostic):
        return "hard", f"the text says the address is bad, in {what}"
    return "soft", f"ambiguous: {what} that does not say the address is bad"


def _start(match: re.Match[str] | None) -> int:
    return match.start() if match else 1 << 30


def _soft_cause(text: str | None, *, first: bool = False) -> str | None:
    """The label of the cause other than the address that the text names.

    The first in `_SOFT_TEXT`'s order, or with `first`, the one named first in the text.
    """
    if not text:
        return None
    found = [(_start(p.search(text)), index) for index, (_, p) in enumerate(_SOFT_TEXT)]
    hits = sorted(hit for hit in found if hit[0] < 1 << 30)
    if not hits:
        return None
    index = hits[0][1] if first else min(index for _, index in hits)
    return _SOFT_TEXT[index][0]


def _names_bad_address(text: str | None) -> bool:
    return bool(text and _ADDRESS_TEXT.search(text))
