"""Delivery status: RFC 3464 field blocks, RFC 3463 status codes, hard or soft, flufl.bounce.

Everything here works on text and plain data (field blocks, a body's text); finding those in a
message is the business of `mailfleet_bouncer.classify`. The one exception is `flufl_failures`,
which hands a parsed message to flufl.bounce, Mailman's detectors for bounces that are not
RFC 3464 (qmail, Exim, Yahoo's old format and some thirty others).

Hard or soft
------------
A hard bounce suppresses the address for good, so "hard" is kept for what is about the address
itself. The RFC 3463 class decides (5.x.x hard, 4.x.x soft, Action: delayed soft), except for
these permanent codes, which most ESPs count as soft and so do we:

- 5.2.2 mailbox full and 5.2.3 message over the mailbox's size limit: the mailbox exists and
  will take mail again; repeated soft bounces are escalated by the suppression policy instead.
- 5.3.x (5.3.4 message too big, mail system full or not accepting mail): about the message or
  the receiving system, not the address.
- 5.4.7 delivery time expired: the MTA gave up after temporary failures, which stay temporary.
- 5.6.x media errors: about the content.
- 5.7.x policy and security (5.7.1 blocked as spam, 5.7.26 DMARC, 5.7.25 reverse DNS...): about
  the sender, its IP or its authentication, not the recipient's address; suppressing the
  address would punish the recipient for the sender's reputation. The diagnostic is kept, so a
  run of them shows up as a sending problem.
- a non-specific 5.0.0 (or a bare 5xx reply code) whose diagnostic says the mailbox is full or
  over quota: some MTAs say it in words only.

Everything else in class 5 is hard: 5.1.x (bad mailbox, bad domain), 5.2.1 (disabled), 5.4.4
(no route to the domain), 5.5.x (a 550 "mailbox unavailable" often arrives as 5.5.0).
"""

import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from flufl.bounce import all_failures

BounceType = Literal["hard", "soft"]
Fields = list[tuple[str, str]]

_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)")
_RECIPIENT_FIELDS = frozenset({"original-recipient", "final-recipient"})
_PER_RECIPIENT_FIELDS = frozenset(
    {
        "action",
        "status",
        "diagnostic-code",
        "remote-mta",
        "last-attempt-date",
        "final-log-id",
        "will-retry-until",
    }
)
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
# An RFC 3463 enhanced status code, not part of an IP address or a version number.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# The SMTP reply code at the start of a Diagnostic-Code ("smtp; 550 ..." or "550-...").
_LEADING_CODE = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;)?\s*([245])\d\d(?![\d.])")
# A reply code anywhere in free text, followed by what SMTP puts after one.
_ANY_CODE = re.compile(r"(?<![\w.])([45])\d\d(?=[ :-])")
_ADDRESS = re.compile(r"[^\s<>()\[\];,\"']+@[^\s<>()\[\];,\"']+")
_UNITEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_MAILBOX_FULL = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota (?:exceeded|full)|exceeded (?:storage|quota)"
    r"|insufficient (?:storage|space)|mailbox size limit",
    re.IGNORECASE,
)
_DIAGNOSTIC_MAX = 1000
_WINDOW = 1200


@dataclass(frozen=True, slots=True)
class Entry:
    """One per-recipient block of a DSN, its fields reduced to what the classifier reports."""

    address: str | None
    action: str | None
    status: str | None
    diagnostic: str | None
    bounce: BounceType | None


def unfold(value: str) -> str:
    """One line: folding, line breaks and runs of white space become single spaces."""
    return " ".join(value.split())


def parse_blocks(text: str) -> list[Fields]:
    """RFC 3464 field blocks from text: "Name: value" lines, blocks separated by blank lines.

    Continuation lines (starting with white space) extend the previous field; lines that are
    neither are skipped, so prose around the fields does no harm.
    """
    blocks: list[Fields] = []
    block: Fields = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            if block:
                blocks.append(block)
                block = []
        elif line[0] in " \t":
            if block:
                name, value = block[-1]
                block[-1] = (name, f"{value} {line.strip()}")
        elif match := _FIELD.fullmatch(line):
            block.append((match.group(1), match.group(2).strip()))
    if block:
        blocks.append(block)
    return blocks


def entries(blocks: list[Fields]) -> list[Entry]:
    """The per-recipient entries of a DSN's field blocks, in order.

    A block with a recipient field is a per-recipient block; the per-message block has none and
    is skipped. Broken DSNs are tolerated: blocks run together without the blank line are split
    where a recipient field repeats, and a per-recipient field written before the block's
    recipient field still belongs to it. A block with an Action but no recipient field at all
    gives an entry without an address.
    """
    found: list[dict[str, str]] = []
    for block in blocks:
        pending: dict[str, str] = {}
        first: dict[str, str] | None = None
        current: dict[str, str] | None = None
        for name, value in block:
            key = name.lower()
            if key in _RECIPIENT_FIELDS:
                if current is None or key in current:
                    current = {}
                    found.append(current)
                    first = first or current
                current[key] = value
            elif current is not None:
                current.setdefault(key, value)
            elif key in _PER_RECIPIENT_FIELDS:
                pending.setdefault(key, value)
        if first is not None:
            for key, value in pending.items():
                first.setdefault(key, value)
        elif "action" in pending:
            found.append(pending)
    return [_entry(fields) for fields in found]


def _entry(fields: dict[str, str]) -> Entry:
    # The Original-Recipient is the address as we gave it (ORCPT); the Final-Recipient may be
    # where a forward or an alias led. Ours is the one to act on, when the report has it.
    address = recipient_address(fields.get("original-recipient")) or recipient_address(
        fields.get("final-recipient")
    )
    action = (fields.get("action") or "").strip().lower().split(" ", 1)[0].rstrip(";") or None
    diagnostic = unfold(fields.get("diagnostic-code", ""))[:_DIAGNOSTIC_MAX] or None
    status = status_code(fields.get("status"), diagnostic)
    return Entry(address, action, status, diagnostic, bounce_type(action, status, diagnostic))


def recipient_address(value: str | None) -> str | None:
    """The bare, lower-cased address of "rfc822; User@Example.COM" (or "utf-8; ...", "<...>")."""
    if not value:
        return None
    kind, separator, rest = value.partition(";")
    if not separator:
        kind, rest = "rfc822", value
    if kind.strip().lower() == "utf-8":
        rest = _UNITEXT.sub(_unitext_char, rest)
    if match := _ADDRESS.search(rest):
        return match.group(0).lower()
    bare = rest.strip().strip("<>").strip()
    return bare.lower() if bare and not any(c.isspace() for c in bare) else None


def _unitext_char(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def status_code(status: str | None, diagnostic: str | None) -> str | None:
    """The RFC 3463 code of a Status field, else the one the diagnostic gives.

    A non-specific X.0.0 is refined by a code of the same class in the diagnostic ("Status:
    5.0.0" with "550 5.1.1 user unknown" is 5.1.1). With no enhanced code anywhere, a bare SMTP
    reply code at the start of the diagnostic gives its class: 550 is 5.0.0, 421 is 4.0.0.
    """
    code = None
    if status and (match := _ENHANCED.search(status)):
        code = ".".join(match.groups())
    if diagnostic:
        if match := _ENHANCED.search(diagnostic):
            better = ".".join(match.groups())
            if code is None or (code.endswith(".0.0") and better[0] == code[0]):
                code = better
        if code is None and (match := _LEADING_CODE.match(diagnostic)):
            code = f"{match.group(1)}.0.0"
    return code


def bounce_type(
    action: str | None, status: str | None, diagnostic: str | None
) -> BounceType | None:
    """Hard, soft or None (not a failure); see the module docstring for the exceptions."""
    if action in _SUCCESS_ACTIONS:
        return None
    if action == "delayed":
        return "soft"
    failed = action is not None and action.startswith(("fail", "error"))
    if status is None or status[0] == "2":
        # "failed" without a usable code: the Action says permanent.
        if not failed:
            return None
        return "soft" if diagnostic and _MAILBOX_FULL.search(diagnostic) else "hard"
    if status[0] == "4":
        return "soft"
    return "soft" if _transient(status, diagnostic) else "hard"


def _transient(status: str, diagnostic: str | None) -> bool:
    """Whether a 5.x.x code is about something other than the address (see module docstring)."""
    _, subject, detail = status.split(".")
    if (subject, detail) in {("2", "2"), ("2", "3"), ("4", "7")}:
        return True
    if subject in {"3", "6", "7"}:
        return True
    return (subject, detail) == ("0", "0") and bool(diagnostic and _MAILBOX_FULL.search(diagnostic))


def status_near(text: str, address: str) -> tuple[str | None, str | None]:
    """The status code and diagnostic line a free-text bounce gives near an address.

    For bounces flufl.bounce recognised: in the paragraph where the address is named (qmail's
    "Remote host said: 550 5.1.1 ...", Exim's indented SMTP error, Yahoo's "554: delivery
    error"), the first enhanced status code, else the first SMTP reply code, with its line.
    """
    text = text.replace("\r\n", "\n")
    lowered = text.lower()
    start = 0
    for _ in range(5):
        index = lowered.find(address, start)
        if index < 0:
            break
        end = lowered.find("\n\n", index + len(address))
        window = text[index : min(index + _WINDOW, end if end >= 0 else len(text))]
        match = _ENHANCED.search(window) or _ANY_CODE.search(window)
        if match is not None:
            line_start = window.rfind("\n", 0, match.start()) + 1
            line_end = window.find("\n", match.end())
            line = window[line_start : line_end if line_end >= 0 else len(window)]
            diagnostic = unfold(line)[:_DIAGNOSTIC_MAX] or None
            if match.re is _ENHANCED:
                return ".".join(match.groups()), diagnostic
            return f"{match.group(1)}.0.0", diagnostic
        start = index + len(address)
    return None, None


def flufl_failures(message: Message) -> tuple[list[str], list[str]]:
    """Temporary and permanent failures flufl.bounce finds, lower-cased and sorted.

    Its detectors run in order, most specific first, and stop at the first that finds anything;
    any exception inside one (they were written for well-formed mail) counts as nothing found.
    """
    try:
        temporary, permanent = all_failures(message)
    except Exception:
        return [], []
    return _addresses(temporary - permanent), _addresses(permanent)


def _addresses(found: frozenset[bytes]) -> list[str]:
    decoded = {item.decode("ascii", "replace").strip().strip("<>").lower() for item in found}
    return sorted(address for address in decoded if address)
