"""Delivery status: RFC 3464 field blocks, RFC 3463 status codes, hard or soft, flufl.bounce.

Everything here works on text and plain data (field blocks, a body's text); finding those in a
message is the business of `mailfleet_bouncer.classify`. The one exception is `flufl_failures`,
which hands a parsed message to flufl.bounce, Mailman's detectors for bounces that are not
RFC 3464 (qmail, Exim, Yahoo's old format and some thirty others).

Hard or soft is `mailfleet_bouncer.verdict`'s business; here the code and the text it reads
are found.
"""

import re
from dataclasses import dataclass, replace
from email.message import Message

from flufl.bounce import all_failures

from mailfleet_bouncer.verdict import BounceType, judge

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
# An RFC 3463 enhanced status code, not part of an IP address or a version number.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# The SMTP reply code at the start of a Diagnostic-Code ("smtp; 550 ..." or "550-...").
_LEADING_CODE = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;)?\s*([245])\d\d(?![\d.])")
# A reply code anywhere in free text, followed by what SMTP puts after one.
_ANY_CODE = re.compile(r"(?<![\w.])([45])\d\d(?=[ :,-]|$)", re.MULTILINE)
# Each match starts at the start of a run (the lookbehind), so a long run without an "@" costs
# one scan, not one per character.
_ADDRESS = re.compile(r"(?<![^\s<>()\[\];,\"'])[^\s<>()\[\];,\"']+@[^\s<>()\[\];,\"']+")
_UNITEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
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
    reason: str | None


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
    verdict = judge(action, status, diagnostic, address=address)
    return Entry(address, action, status, diagnostic, *verdict)


def refused_after_data(entry: Entry) -> Entry:
    """The entry judged again, knowing that the refusal answered the DATA command."""
    verdict = judge(
        entry.action, entry.status, entry.diagnostic, after_data=True, address=entry.address
    )
    return replace(entry, bounce=verdict[0], reason=verdict[1])


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
    """The RFC 3463 code: the remote server's own, in the diagnostic, else the Status field's.

    A relay's Status field is its reading of the remote reply and often a poor one ("Status:
    5.1.1" over "550 5.7.1 IP blacklisted", "5.1.0" over "5.2.2 Mailbox Full"), so a code in
    the diagnostic wins, unless it is of another class than the Status (a 4.x.x retried until
    the relay gave up with 5.x.x keeps the Status). With no enhanced code anywhere, a bare SMTP
    reply code at the start of the diagnostic gives its class: 550 is 5.0.0, 421 is 4.0.0.
    """
    code = None
    if status and (match := _ENHANCED.search(status)):
        code = ".".join(match.groups())
    if diagnostic:
        if match := _ENHANCED.search(diagnostic):
            remote = ".".join(match.groups())
            if code is None or remote[0] == code[0]:
                code = remote
        if code is None and (match := _LEADING_CODE.match(diagnostic)):
            code = f"{match.group(1)}.0.0"
    return code


def status_near(text: str, address: str, *, only: bool = False) -> tuple[str | None, str | None]:
    """The status code and diagnostic a free-text bounce gives near an address.

    In the paragraph where the address is named (qmail's "Remote host said: 550 5.1.1 ...",
    Exim's indented SMTP error, Yahoo's "554: delivery error"), from the start of its line,
    the first enhanced status code, else the first SMTP reply code, with its line. Without a
    code anywhere near, no status, and the paragraph after the first mention as the
    diagnostic: its words may still say what went wrong ("As their mailbox is full").
    `only`: the notice names no other recipient, so what follows the first mention, blank
    lines and all, is about this one (DragonFly names it, then gives the reply below).
    """
    text = text.replace("\r\n", "\n")
    lowered = text.lower()
    start = 0
    first: str | None = None
    for _ in range(5):
        index = lowered.find(address, start)
        if index < 0:
            break
        # From the start of the line: a reply code often comes before the address in it.
        line_start = text.rfind("\n", 0, index) + 1
        end = -1 if only else lowered.find("\n\n", index + len(address))
        window = text[line_start : min(index + _WINDOW, end if end >= 0 else len(text))]
        if first is None:
            after = window[index - line_start + len(address) :]
            first = unfold(after.lstrip(">:;,. \t"))[:_DIAGNOSTIC_MAX] or None
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
    return None, first


def paragraph(text: str, address: str) -> str:
    """The paragraph where `text` first names `address` (empty if it does not)."""
    text = text.replace("\r\n", "\n")
    index = text.lower().find(address)
    if index < 0:
        return ""
    start = text.rfind("\n\n", 0, index) + 1
    end = text.find("\n\n", index)
    return text[start : min(end if end >= 0 else len(text), index + _WINDOW)]


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
