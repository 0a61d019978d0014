"""One Gmail mailbox as the double keeps it: messages, labels and the history log."""

import base64
import email
import email.policy
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

SYSTEM_LABELS = (
    "INBOX",
    "SENT",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "SPAM",
    "TRASH",
    "DRAFT",
    "CHAT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)

# Gmail ids are 16 hex digits; one sequence for the whole double keeps them unique.
_ids = itertools.count(0x18C2_0000_0000_0000)


def new_id() -> str:
    """A fresh message id."""
    return f"{next(_ids):x}"


def b64url(data: bytes) -> str:
    """Gmail's `raw` and body `data`: base64url with padding."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def parse(raw: bytes) -> EmailMessage:
    """An RFC 5322 message as the stdlib reads it."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@dataclass
class StoredMessage:
    """A message in a mailbox."""

    id: str
    thread_id: str
    label_ids: list[str]
    raw: bytes
    internal_date: int  # milliseconds since the epoch, as Gmail reports it
    history_id: int
    message: EmailMessage

    def minimal(self) -> dict[str, Any]:
        """The `minimal` resource: ids and labels."""
        return {"id": self.id, "threadId": self.thread_id, "labelIds": list(self.label_ids)}


@dataclass
class HistoryRecord:
    """One change: messageAdded, labelAdded or labelRemoved."""

    id: int
    kind: str
    message_id: str
    label_ids: list[str] = field(default_factory=list)


@dataclass
class SentMessage:
    """A message accepted by messages.send, as the tests read it back."""

    user: str
    id: str
    thread_id: str
    raw: bytes
    message: EmailMessage
    at: float

    @property
    def message_id(self) -> str:
        """The RFC 5322 Message-ID header."""
        return str(self.message["Message-ID"])

    @property
    def recipients(self) -> list[str]:
        """Every address in To, Cc and Bcc."""
        return recipients_of(self.message)


def recipients_of(message: EmailMessage) -> list[str]:
    """Every address in To, Cc and Bcc."""
    fields = [str(v) for name in ("To", "Cc", "Bcc") for v in message.get_all(name, [])]
    return [address for _, address in getaddresses(fields) if address]


@dataclass
class Mailbox:
    """A user's mailbox; `history_floor` is the oldest startHistoryId history.list still serves."""

    address: str
    history_id: int = 1000
    history_floor: int = 1000
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)  # id -> name
    history: list[HistoryRecord] = field(default_factory=list)
    sent: list[SentMessage] = field(default_factory=list)
    spent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, quota units)
    sends_today: int = 0

    def label_exists(self, label_id: str) -> bool:
        """A system label or one of the user's."""
        return label_id in SYSTEM_LABELS or label_id in self.user_labels

    def thread_for(self, message: EmailMessage) -> str | None:
        """The thread of the message this one replies to, by In-Reply-To and References."""
        wanted = " ".join(str(message.get(h, "")) for h in ("In-Reply-To", "References")).split()
        if not wanted:
            return None
        for stored in self.messages.values():
            if str(stored.message.get("Message-ID", "")).strip() in wanted:
                return stored.thread_id
        return None

    def add(self, raw: bytes, labels: list[str], thread_id: str | None = None) -> StoredMessage:
        """Store a message and log messageAdded."""
        message = parse(raw)
        message_id = new_id()
        self.history_id += 1
        stored = StoredMessage(
            message_id,
            thread_id or self.thread_for(message) or message_id,
            list(labels),
            raw,
            int(time.time() * 1000),
            self.history_id,
            message,
        )
        self.messages[message_id] = stored
        self.history.append(HistoryRecord(self.history_id, "messageAdded", message_id))
        return stored

    def relabel(self, stored: StoredMessage, add: list[str], remove: list[str]) -> None:
        """Apply label changes and log what actually changed."""
        added = [label for label in dict.fromkeys(add) if label not in stored.label_ids]
        removed = [label for label in dict.fromkeys(remove) if label in stored.label_ids]
        for kind, labels in (("labelAdded", added), ("labelRemoved", removed)):
            if not labels:
                continue
            if kind == "labelAdded":
                stored.label_ids.extend(labels)
            else:
                stored.label_ids = [label for label in stored.label_ids if label not in labels]
            self.history_id += 1
            stored.history_id = self.history_id
            self.history.append(HistoryRecord(self.history_id, kind, stored.id, labels))

    def expire_history(self) -> None:
        """Forget the history log, so any earlier startHistoryId answers 404."""
        self.history.clear()
        self.history_floor = self.history_id

    def spend(self, units: int, limit: int, now: float) -> float | None:
        """Charge quota units in a sliding minute; when over `limit`, the time to retry instead."""
        while self.spent and self.spent[0][0] <= now - 60:
            self.spent.popleft()
        if sum(u for _, u in self.spent) + units > limit:
            return self.spent[0][0] + 60 if self.spent else now + 60
        self.spent.append((now, units))
        return None
