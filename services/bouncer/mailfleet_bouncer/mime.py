"""Reading a message for the classifier: lenient, bounded, and never raising.

The stdlib parser with the compat32 policy does the MIME work: it registers defects instead of
raising, keeps raw 8-bit header bytes (as surrogate escapes) and parses message/delivery-status
into its field blocks. What it leaves raw is decoded here, leniently, and whatever was tolerated
is written down in `Notes` for the classification's `problem`.

Bounds, so that the cost does not grow with what an attacker (or a 20 MB attachment) sends:
the parser sees at most the first 2 MiB and 20,000 lines (the parser and flufl.bounce's
detectors cost per line; what tells a report apart comes first anyway: headers, notification,
report fields, returned headers); MIME containers past the 32nd are read as text (the parser
recurses and checks every line against every open boundary); and before anything scans the
text, binary parts are emptied and text parts cut to 64 KiB and 1,000 lines, 3,000 in all.
"""

import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser
from email.utils import getaddresses

from mailfleet_bouncer.dsn import Fields, parse_blocks, unfold

PARSE_BYTES = 2 * 1024 * 1024
PARSE_LINES = 20_000
PART_TEXT_MAX = 64 * 1024
FIELD_TYPES = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/feedback-report",
        "message/disposition-notification",
        "message/global-disposition-notification",
    }
)
BINARY = frozenset({"application", "image", "audio", "video", "font", "model"})

_MAX_CONTAINERS = 32
_MAX_PARTS = 1000
_MAX_DEPTH = 64
_MAX_HEADERS = 500
_HEADER_VALUE_MAX = 16 * 1024
_MAX_BLOCKS = 100
_PART_LINES = 1000
_TEXT_LINES = 3000
_TEXT_BYTES = 256 * 1024
_BASE64_DEFECTS = frozenset(
    {"InvalidBase64PaddingDefect", "InvalidBase64CharactersDefect", "InvalidBase64LengthDefect"}
)
# Expected when the message was cut: the closing boundaries are in what was not read.
_CUT_DEFECTS = frozenset(
    {
        "CloseBoundaryNotFoundDefect",
        "StartBoundaryNotFoundDefect",
        "MultipartInvariantViolationDefect",
    }
)
_UTF8_ALIASES = frozenset(
    {"", "unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined"}
)

_CONTAINER = re.compile(rb"content-type:\s*(?:multipart|message)/", re.IGNORECASE)
_SURROGATES = re.compile("[\udc80-\udcff]")
_LINE_BREAK = re.compile(r"\r?\n|\r")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\([^()]*\)")
_ANGLE = re.compile(r"<\s*([^<>\s]+@[^<>\s]+?)\s*>")
# Matches start at the start of a run (the lookbehind): a long run costs one scan.
_BARE = re.compile(r"(?<![^\s<>()\[\];:,\"'])[^\s<>()\[\];:,\"']+@[^\s<>()\[\];:,\"']+")
_BRACKETED = re.compile(r"<([^<>]*)>")


class Notes:
    """What was wrong but tolerated, in the order noticed, each once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        """Note `text` unless it already is."""
        if text not in self.items:
            self.items.append(text)


@dataclass(slots=True)
class Part:
    """One MIME part, its content type, and whether it is inside a returned message."""

    message: Message
    content_type: str
    inside: bool


def parse(raw: bytes, notes: Notes) -> tuple[Message, bool]:
    """The parsed message, and whether it was cut to the parsing bounds."""
    data, cut = _bounded(raw)
    if b"\r" in data and b"\n" not in data:
        # CR alone ends the lines (old Mac clients): the parser copes, the text readers do not.
        data = data.replace(b"\r", b"\n")
    if cut:
        notes.add(f"truncated for parsing: the first {len(data)} of {len(raw)} bytes were read")
    containers = [match.start() for match in _CONTAINER.finditer(data)]
    if len(containers) > _MAX_CONTAINERS:
        changed = bytearray(data)
        for start in containers[_MAX_CONTAINERS:]:
            changed[start + 11] = ord("x")  # "Content-Typx": read as text/plain
        data = bytes(changed)
        notes.add(f"malformed MIME: over {_MAX_CONTAINERS} nested parts, the rest read as text")
    try:
        return BytesParser(policy=policy.compat32).parsebytes(data), cut
    except Exception as exc:  # RecursionError, or a parser bug: keep what can be kept
        notes.add(f"malformed MIME: unparseable body ({type(exc).__name__}), headers only")
    try:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(data), cut
    except Exception:
        return Message(), cut


def _bounded(raw: bytes) -> tuple[bytes, bool]:
    """The first 2 MiB and 20,000 lines (CR alone ends a line for the parser too)."""
    end = min(len(raw), PARSE_BYTES)
    for separator in (b"\n", b"\r"):
        if raw.count(separator, 0, end) > PARSE_LINES:
            position = -1
            for _ in range(PARSE_LINES):
                position = raw.find(separator, position + 1, end)
            end = position + 1
    if end < len(raw) and raw[end - 1 : end] not in (b"\n", b"\r"):
        end = max(raw.rfind(b"\n", 0, end), raw.rfind(b"\r", 0, end)) + 1 or end
    return raw[:end], end < len(raw)


def walk(root: Message) -> list[Part]:
    """Every part, depth first in document order, without recursion and with limits.

    Report field parts (message/delivery-status...) are not descended into: their "parts" are
    field blocks.
    """
    parts: list[Part] = []
    stack = [(root, False, 0)]
    while stack and len(parts) < _MAX_PARTS:
        message, inside, depth = stack.pop()
        try:
            content_type = message.get_content_type()
        except Exception:
            content_type = "text/plain"
        parts.append(Part(message, content_type, inside))
        if content_type in FIELD_TYPES or depth >= _MAX_DEPTH:
            continue
        children = payload(message)
        if isinstance(children, list):
            inner = inside or content_type.startswith("message/")
            stack.extend(
                (child, inner, depth + 1)
                for child in reversed(children)
                if isinstance(child, Message)
            )
    return parts


def prune(parts: list[Part]) -> None:
    """Binary parts emptied, text parts cut, before anything (flufl.bounce too) scans them."""
    budget_bytes, budget_lines = _TEXT_BYTES, _TEXT_LINES
    for part in parts:
        if part.content_type in FIELD_TYPES:
            continue
        try:
            body = part.message.get_payload()
        except Exception:
            part.message.set_payload("")
            continue
        if not isinstance(body, str):
            continue
        if part.content_type.split("/", 1)[0] in BINARY:
            if body:
                part.message.set_payload("")
            continue
        keep = min(len(body), PART_TEXT_MAX, budget_bytes)
        lines = min(_PART_LINES, budget_lines)
        position = -1
        for _ in range(lines):
            position = body.find("\n", position + 1, keep)
            if position < 0:
                break
        else:
            keep = position + 1
        budget_bytes -= keep
        budget_lines -= min(lines, body.count("\n", 0, keep))
        if keep < len(body):
            part.message.set_payload(body[:keep])


def clean_headers(parts: list[Part], notes: Notes) -> None:
    """Headers made safe for flufl.bounce's detectors, which assume well-formed mail.

    They call str methods on header values, which the parser gives as Header objects when they
    hold raw 8-bit bytes, and take the first address of From, which an empty From lacks; one
    detector raising stops all of them. Raw 8-bit values are replaced by their decoded text,
    and a From without an address by "<>".
    """
    for part in parts:
        message = part.message
        items = list(message.raw_items())
        dirty = {name.lower() for name, value in items if _SURROGATES.search(str(value))}
        for name in dirty:
            del message[name]
        for name, value in items:
            if name.lower() in dirty:
                message[name] = _eight_bit(str(value), notes)
    if parts:
        root = parts[0].message
        try:
            readable = bool(getaddresses([str(root.get("from", ""))]))
        except Exception:
            readable = False
        if not readable:
            del root["from"]
            root["From"] = "<>"


def payload(message: Message) -> object:
    """The undecoded payload: a str, a list of parts, or None if even that failed."""
    try:
        return message.get_payload()
    except Exception:
        return None


def headers(message: Message, notes: Notes) -> dict[str, list[str]]:
    """Lower-case name -> unfolded values; raw 8-bit bytes decoded, encoded-words kept.

    At most 500 fields, and 16 KiB of each value.
    """
    found: dict[str, list[str]] = {}
    try:
        items = list(message.raw_items())[:_MAX_HEADERS]
    except Exception:
        return found
    for name, value in items:
        key = str(name).strip().lower()
        text = str(value)
        if len(text) > _HEADER_VALUE_MAX:
            # The nearest References are the last ones.
            text = text[-_HEADER_VALUE_MAX:] if key == "references" else text[:_HEADER_VALUE_MAX]
        text = _LINE_BREAK.sub("", _eight_bit(text, notes)).strip()
        found.setdefault(key, []).append(text)
    return found


def _eight_bit(value: str, notes: Notes) -> str:
    if not _SURROGATES.search(value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        notes.add("charset: raw 8-bit header bytes that are not UTF-8 were replaced")
        return data.decode("utf-8", "replace")


def decode_words(value: str, notes: Notes) -> str:
    """RFC 2047 encoded-words decoded; white space between two of them dropped."""
    pieces: list[str] = []
    position = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        if not (after_word and not between.strip()):
            pieces.append(between)
        charset, encoding, text = match.groups()
        if encoding in "Bb":
            data = _base64(text, notes)
        else:
            data = _QP_ESCAPE.sub(
                lambda m: bytes([int(m.group(1), 16)]), text.replace("_", " ").encode()
            )
        pieces.append(decode(data, charset.split("*", 1)[0], notes))
        position = match.end()
        after_word = True
    pieces.append(value[position:])
    return "".join(pieces)


def _base64(text: str, notes: Notes) -> bytes:
    clean = _NOT_BASE64.sub("", text)
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    try:
        return binascii.a2b_base64(clean + "=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        notes.add("decode: an encoded-word's base64 could not be decoded")
        return b""


def decode(data: bytes, charset: str | None, notes: Notes) -> str:
    """Bytes in a declared charset to text; an unknown charset is read as UTF-8, and noted."""
    name = (charset or "utf-8").strip().strip('"').lower()
    if name in _UTF8_ALIASES:
        name = "utf-8"
    try:
        return data.decode(name, "replace")
    except Exception:  # LookupError, a bytes-to-bytes codec, a codec without "replace"
        shown = re.sub(r"[^\w.:-]", "?", name)[:40]
        notes.add(f"charset: unknown charset {shown!r} read as UTF-8")
        return data.decode("utf-8", "replace")


def part_text(message: Message, notes: Notes) -> str:
    """A leaf part's text: transfer-decoded, charset-decoded, at most 64 KiB of it."""
    try:
        data = message.get_payload(decode=True)
    except Exception:
        notes.add("decode: a part's content transfer encoding could not be decoded")
        return ""
    if not isinstance(data, bytes):
        return ""
    try:
        charset = message.get_content_charset()
    except Exception:
        charset = None
    return decode(data[:PART_TEXT_MAX], charset, notes)


def field_blocks(part: Message, notes: Notes, *, merge: bool) -> list[Fields]:
    """A report part's field blocks, however the parser left them.

    The stdlib makes message/delivery-status a list of header blocks and the other report
    types one message; whatever it could not read as fields is parsed here, and a part sent as
    text is parsed here entirely. `merge`: what follows a broken line in a block still belongs
    to that block (message/delivery-status, where the parser stops a block there).
    """
    body = payload(part)
    if not isinstance(body, list):
        return parse_blocks(part_text(part, notes))
    blocks: list[Fields] = []
    for sub in body[:_MAX_BLOCKS]:
        if not isinstance(sub, Message):
            continue
        block = [
            (name, unfold(value))
            for name, values in headers(sub, notes).items()
            for value in values
        ]
        text = part_text(sub, notes)
        extra = parse_blocks(text) if text.strip() else []
        if merge and extra:
            block.extend(extra.pop(0))
        if block:
            blocks.append(block)
        blocks.extend(extra)
    return blocks


def header_block(text: str) -> Message:
    """The header fields at the start of `text` (a returned copy), as a message."""
    text = text.lstrip("\r\n")[:PART_TEXT_MAX]
    try:
        return HeaderParser(policy=policy.compat32).parsestr(text)
    except Exception:
        return Message()


def param(message: Message, name: str) -> str:
    """A Content-Type parameter, unquoted and lower-cased ("" if absent or unreadable)."""
    try:
        value = message.get_param(name)
    except Exception:
        return ""
    if isinstance(value, tuple):  # RFC 2231: (charset, language, value)
        value = value[2]
    return value.strip().strip('"').lower() if isinstance(value, str) else ""


def defects(parts: list[Part], cut: bool) -> list[str]:
    """The parser's complaints, as problem texts ("malformed MIME: ...", "decode: ...")."""
    malformed: list[str] = []
    undecodable: list[str] = []
    for part in parts:
        for defect in getattr(part.message, "defects", ()):
            name = type(defect).__name__
            if cut and name in _CUT_DEFECTS:
                continue
            found = undecodable if name in _BASE64_DEFECTS else malformed
            if name not in found:
                found.append(name)
    problems = []
    if malformed:
        problems.append("malformed MIME: " + ", ".join(malformed[:5]))
    if undecodable:
        problems.append("decode: " + ", ".join(undecodable))
    return problems


def addresses(value: str) -> list[str]:
    """The bare addresses of an address-list header value, lower-cased."""
    cleaned = _COMMENT.sub(" ", _QUOTED.sub(" ", value))
    found: list[str] = []
    for chunk in cleaned.split(","):
        found.extend(_ANGLE.findall(chunk) or _BARE.findall(chunk))
    return unique(address.strip(".").lower() for address in found)


def message_ids(value: str) -> list[str]:
    """Message-IDs in a header value, normalised to "<local@domain>" with case kept."""
    ids = ["<" + "".join(inner.split()) + ">" for inner in _BRACKETED.findall(value)]
    ids = [found for found in ids if found != "<>"]
    if not ids:
        ids = [f"<{token}>" for token in re.split(r"[\s,]+", value) if "@" in token]
    return ids


def bracketed(value: str) -> list[str]:
    """What a header value has between angle brackets (the URIs of List-Unsubscribe)."""
    return ["".join(inner.split()) for inner in _BRACKETED.findall(value)]


def unique(items: Iterable[str]) -> list[str]:
    """Non-empty items, first occurrence kept, in order."""
    return list(dict.fromkeys(item for item in items if item))
