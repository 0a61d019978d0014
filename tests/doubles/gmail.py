"""The Gmail REST subset (developers.google.com/gmail/api/reference/rest) over a TokenStore."""

import asyncio
import base64
import binascii
import json
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, getaddresses, make_msgid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.doubles import gmail_errors as errors
from tests.doubles.mailbox import (
    SYSTEM_LABELS,
    Mailbox,
    SentMessage,
    StoredMessage,
    b64url,
    parse,
    recipients_of,
)
from tests.doubles.oauth import AccessToken, TokenStore

MAIL = "https://mail.google.com/"
GMAIL = "https://www.googleapis.com/auth/gmail."
SEND_SCOPES = {MAIL, GMAIL + "send", GMAIL + "compose", GMAIL + "modify"}
READ_SCOPES = {MAIL, GMAIL + "readonly", GMAIL + "modify"}
MODIFY_SCOPES = {MAIL, GMAIL + "modify"}
LABEL_SCOPES = {MAIL, GMAIL + "modify", GMAIL + "labels"}
PROFILE_SCOPES = READ_SCOPES | {GMAIL + "compose", GMAIL + "metadata"}

# Quota units per method (developers.google.com/gmail/api/reference/quota).
COSTS = {"send": 100, "list": 5, "get": 5, "modify": 5, "history": 2, "labels": 1, "profile": 1}
COSTS["labels.create"] = 5


@dataclass
class SendFault:
    """What the next matching messages.send does instead of answering at once."""

    error: errors.GmailError | None
    delay: float = 0.0
    deliver: bool = True
    user: str | None = None


class GmailAnswerError(Exception):
    """Raised inside a handler to answer with a Gmail error."""

    def __init__(self, error: errors.GmailError) -> None:
        super().__init__(error.message)
        self.error = error


def _ms_rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _decode_raw(raw: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as error:
        message = "Invalid value at 'message.raw' (TYPE_BYTES), Base64 decoding failed"
        raise GmailAnswerError(errors.invalid_argument(message)) from error


def _page(request: Request, items: list[Any]) -> tuple[list[Any], str | None]:
    params = request.query_params
    try:
        size = min(int(params.get("maxResults", "100")), 500)
        start = int(params.get("pageToken", "0"))
    except ValueError as error:
        raise GmailAnswerError(
            errors.invalid_argument("Invalid pageToken or maxResults")
        ) from error
    if size < 1 or start < 0:
        raise GmailAnswerError(errors.invalid_argument("Invalid pageToken or maxResults"))
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def _payload(part: EmailMessage, part_id: str, headers: list[str] | None) -> dict[str, Any]:
    """A MessagePart: the MIME tree with each leaf's decoded body inline."""
    pairs = [{"name": k, "value": str(v)} for k, v in part.items()]
    if headers is not None:
        wanted = {h.lower() for h in headers}
        pairs = [p for p in pairs if not wanted or p["name"].lower() in wanted]
    node: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": pairs,
    }
    if headers is not None:
        return node  # format=metadata: headers only
    if part.is_multipart():
        node["body"] = {"size": 0}
        children = part.iter_parts()
        prefix = f"{part_id}." if part_id else ""
        node["parts"] = [
            _payload(child, f"{prefix}{index}", None)  # type: ignore[arg-type]
            for index, child in enumerate(children)
        ]
    else:
        data = part.get_payload(decode=True)
        body = data if isinstance(data, bytes) else b""
        node["body"] = {"size": len(body), "data": b64url(body)}
    return node


def _snippet(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""
    return " ".join(str(text).split())[:200]


class Gmail:
    """Mailboxes, quotas and injected faults, served under /gmail/v1/users/{userId}/."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self.lock = tokens.lock
        self.mailboxes: dict[str, Mailbox] = {}
        self.faults: list[SendFault] = []
        self.reset()

    def reset(self) -> None:
        """Empty every mailbox and forget faults; quotas back to Google's defaults."""
        with self.lock:
            self.mailboxes.clear()
            self.faults.clear()
            self.quota_per_minute = 15_000
            self.quota_status = 429
            self.daily_send_limit: int | None = None

    # -- the tests' side ----------------------------------------------------------------------

    def mailbox(self, address: str) -> Mailbox:
        """The mailbox of `address`, created empty on first use."""
        with self.lock:
            return self.mailboxes.setdefault(address.lower(), Mailbox(address.lower()))

    def deliver(
        self, address: str, raw: bytes, labels: tuple[str, ...] = ("INBOX", "UNREAD")
    ) -> str:
        """An inbound message (a bounce, a reply) arriving in a mailbox; returns its id."""
        with self.lock:
            return self.mailbox(address).add(raw, list(labels)).id

    @property
    def sent(self) -> list[SentMessage]:
        """Every message accepted by messages.send, in order, across users."""
        with self.lock:
            every = [m for box in self.mailboxes.values() for m in box.sent]
        return sorted(every, key=lambda m: m.at)

    def fail_next_sends(
        self, count: int, error: errors.GmailError, user: str | None = None
    ) -> None:
        """The next `count` sends (of `user`) answer `error` and send nothing."""
        with self.lock:
            self.faults.extend(SendFault(error, user=user) for _ in range(count))

    def delay_next_sends(
        self, count: int, seconds: float, deliver: bool = True, user: str | None = None
    ) -> None:
        """The next `count` sends are received (and sent, if `deliver`) but answered late."""
        with self.lock:
            self.faults.extend(SendFault(None, seconds, deliver, user) for _ in range(count))

    # -- the HTTP side ------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Starlette routes of the subset."""
        base = "/gmail/v1/users/{user_id}"
        handlers: list[tuple[str, Callable[..., Awaitable[Any]], str, str]] = [
            (f"{base}/profile", self._profile, "GET", "profile"),
            (f"{base}/messages/send", self._send, "POST", "send"),
            (f"/upload{base}/messages/send", self._send, "POST", "send"),
            (f"{base}/messages", self._list, "GET", "list"),
            (f"{base}/messages/{{message_id}}", self._get, "GET", "get"),
            (f"{base}/messages/{{message_id}}/modify", self._modify, "POST", "modify"),
            (f"{base}/history", self._history, "GET", "history"),
            (f"{base}/labels", self._labels, "GET", "labels"),
            (f"{base}/labels", self._create_label, "POST", "labels.create"),
        ]
        return [
            Route(path, self._endpoint(handler, cost), methods=[method])
            for path, handler, method, cost in handlers
        ]

    def _endpoint(
        self, handler: Callable[..., Awaitable[Any]], cost: str
    ) -> Callable[[Request], Awaitable[Response]]:
        scopes = {
            "send": SEND_SCOPES,
            "modify": MODIFY_SCOPES,
            "labels.create": LABEL_SCOPES,
            "labels": LABEL_SCOPES | READ_SCOPES,
            "profile": PROFILE_SCOPES,
        }.get(cost, READ_SCOPES)

        async def endpoint(request: Request) -> Response:
            try:
                token = self._authenticate(request)
                if not token.scopes & scopes:
                    raise GmailAnswerError(errors.INSUFFICIENT_SCOPES)
                box = self._mailbox_for(request.path_params["user_id"], token)
                if cost == "send":
                    return await self._send(request, box)
                self._charge(box, COSTS[cost])
                body = await handler(request, box)
                return JSONResponse(body)
            except GmailAnswerError as failure:
                return failure.error.response()

        return endpoint

    def _authenticate(self, request: Request) -> AccessToken:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        record = self.tokens.authenticate(token) if scheme.lower() == "bearer" else None
        if record is None:
            raise GmailAnswerError(errors.INVALID_CREDENTIALS)
        return record

    def _mailbox_for(self, user_id: str, token: AccessToken) -> Mailbox:
        if user_id not in ("me", token.user) and user_id.lower() != token.user.lower():
            raise GmailAnswerError(
                errors.GmailError(
                    403, "PERMISSION_DENIED", "forbidden", f"Delegation denied for {token.user}"
                )
            )
        with self.lock:
            box = self.mailboxes.get(token.user.lower())
        if box is None:  # e.g. a service account's own token, without a delegated subject
            raise GmailAnswerError(errors.FAILED_PRECONDITION)
        return box

    def _charge(self, box: Mailbox, units: int) -> None:
        with self.lock:
            retry_at = box.spend(units, self.quota_per_minute, self.tokens.now())
        if retry_at is not None:
            raise GmailAnswerError(
                errors.user_rate_limited(self.quota_status, _ms_rfc3339(retry_at))
            )

    def _take_fault(self, user: str) -> SendFault | None:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.user is None or fault.user.lower() == user:
                    return self.faults.pop(index)
        return None

    async def _send(self, request: Request, box: Mailbox) -> Response:
        """users.messages.send: the raw message, or the media upload of message/rfc822."""
        if request.url.path.startswith("/upload/"):
            if request.query_params.get("uploadType") != "media":
                raise GmailAnswerError(
                    errors.invalid_argument("Only uploadType=media is supported")
                )
            raw, thread_id = await request.body(), None
        else:
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError as error:
                raise GmailAnswerError(errors.invalid_argument("Invalid JSON payload")) from error
            if not isinstance(body, dict) or not isinstance(body.get("raw"), str):
                raise GmailAnswerError(
                    errors.invalid_argument("'raw' RFC822 payload message string")
                )
            raw, thread_id = _decode_raw(body["raw"]), body.get("threadId")
        fault = self._take_fault(box.address)
        if fault is not None and fault.error is not None:
            return fault.error.response()
        self._charge(box, COSTS["send"])
        with self.lock:
            if self.daily_send_limit is not None and box.sends_today >= self.daily_send_limit:
                return errors.DAILY_SENDING_LIMIT.response()
            stored = self._store_sent(box, raw, thread_id)
            if fault is not None and not fault.deliver:
                del box.messages[stored.id]
                box.sent.pop()
        if fault is not None:
            await asyncio.sleep(fault.delay)
        return JSONResponse(stored.minimal())

    def _store_sent(self, box: Mailbox, raw: bytes, thread_id: str | None) -> StoredMessage:
        message = parse(raw)
        if not recipients_of(message):
            raise GmailAnswerError(errors.invalid_argument("Recipient address required"))
        # Gmail sends from the authenticated user (send-as aliases aside) and adds a Message-ID.
        senders = getaddresses([str(message.get("From", ""))])
        if not senders or senders[0][1].lower() != box.address:
            name = senders[0][0] if senders else ""
            del message["From"]
            message["From"] = formataddr((name, box.address))
        if message["Message-ID"] is None:
            message["Message-ID"] = make_msgid(domain="mail.gmail.com")
        raw = message.as_bytes()
        known_thread = (
            thread_id if any(m.thread_id == thread_id for m in box.messages.values()) else None
        )
        stored = box.add(raw, ["SENT"], known_thread)
        box.sends_today += 1
        box.sent.append(
            SentMessage(
                box.address, stored.id, stored.thread_id, raw, stored.message, self.tokens.now()
            )
        )
        for address in recipients_of(message):
            local = self.mailboxes.get(address.lower())
            if local is not None and local is not box:
                local.add(raw, ["INBOX", "UNREAD"])
        return stored

    async def _profile(self, request: Request, box: Mailbox) -> dict[str, Any]:
        with self.lock:
            threads = {m.thread_id for m in box.messages.values()}
            return {
                "emailAddress": box.address,
                "messagesTotal": len(box.messages),
                "threadsTotal": len(threads),
                "historyId": str(box.history_id),
            }

    def _matches(self, box: Mailbox, stored: StoredMessage, terms: list[str]) -> bool:
        message = stored.message
        for term in terms:
            key, _, value = term.partition(":")
            value = value.lower()
            if key == "in" or key == "label":
                wanted = value.upper() if value.upper() in SYSTEM_LABELS else value
                names = {box.user_labels.get(lid, lid).lower() for lid in stored.label_ids}
                ok = wanted.lower() in names or wanted in stored.label_ids
            elif key == "is":
                ok = {
                    "unread": "UNREAD" in stored.label_ids,
                    "read": "UNREAD" not in stored.label_ids,
                    "starred": "STARRED" in stored.label_ids,
                }.get(value, False)
            elif key in ("from", "to", "subject"):
                header = " ".join(str(v) for v in message.get_all(key, []))
                if key == "to":
                    header = " ".join(recipients_of(message))
                ok = value in header.lower()
            elif key == "rfc822msgid":
                ok = (
                    value.strip("<>")
                    == str(message.get("Message-ID", "")).strip().strip("<>").lower()
                )
            else:
                ok = term.lower() in stored.raw.decode("utf-8", "replace").lower()
            if not ok:
                return False
        return True

    async def _list(self, request: Request, box: Mailbox) -> dict[str, Any]:
        params = request.query_params
        try:
            terms = shlex.split(params.get("q", ""))
        except ValueError as error:
            raise GmailAnswerError(errors.invalid_argument("Invalid query")) from error
        label_ids = params.getlist("labelIds")
        hidden = set() if params.get("includeSpamTrash") == "true" else {"SPAM", "TRASH"}
        with self.lock:
            found = [
                {"id": m.id, "threadId": m.thread_id}
                for m in reversed(box.messages.values())
                if all(label in m.label_ids for label in label_ids)
                and not (hidden & set(m.label_ids) - set(label_ids))
                and self._matches(box, m, terms)
            ]
        page, token = _page(request, found)
        body: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if page:
            body["messages"] = page
        if token:
            body["nextPageToken"] = token
        return body

    def _stored(self, request: Request, box: Mailbox) -> StoredMessage:
        stored = box.messages.get(request.path_params["message_id"])
        if stored is None:
            raise GmailAnswerError(errors.NOT_FOUND)
        return stored

    async def _get(self, request: Request, box: Mailbox) -> dict[str, Any]:
        form = request.query_params.get("format", "full")
        if form not in ("full", "metadata", "minimal", "raw"):
            raise GmailAnswerError(errors.invalid_argument(f"Invalid value for format: {form}"))
        with self.lock:
            stored = self._stored(request, box)
            body = stored.minimal() | {
                "snippet": _snippet(stored.message),
                "sizeEstimate": len(stored.raw),
                "historyId": str(stored.history_id),
                "internalDate": str(stored.internal_date),
            }
        if form == "raw":
            body["raw"] = b64url(stored.raw)
        elif form == "metadata":
            body["payload"] = _payload(
                stored.message, "", request.query_params.getlist("metadataHeaders")
            )
        elif form == "full":
            body["payload"] = _payload(stored.message, "", None)
        return body

    async def _modify(self, request: Request, box: Mailbox) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as error:
            raise GmailAnswerError(errors.invalid_argument("Invalid JSON payload")) from error
        add = list(body.get("addLabelIds") or [])
        remove = list(body.get("removeLabelIds") or [])
        with self.lock:
            stored = self._stored(request, box)
            for label in add + remove:
                if not isinstance(label, str) or not box.label_exists(label):
                    raise GmailAnswerError(errors.invalid_argument(f"Invalid label: {label}"))
            box.relabel(stored, add, remove)
            return stored.minimal()

    async def _history(self, request: Request, box: Mailbox) -> dict[str, Any]:
        params = request.query_params
        try:
            start = int(params["startHistoryId"])
        except (KeyError, ValueError) as error:
            message = "Invalid or missing startHistoryId"
            raise GmailAnswerError(errors.invalid_argument(message)) from error
        kinds = set(params.getlist("historyTypes")) or {
            "messageAdded",
            "messageDeleted",
            "labelAdded",
            "labelRemoved",
        }
        label = params.get("labelId")
        with self.lock:
            if start < box.history_floor:
                raise GmailAnswerError(errors.NOT_FOUND)
            records = []
            for record in box.history:
                stored = box.messages.get(record.message_id)
                if record.id <= start or record.kind not in kinds or stored is None:
                    continue
                if label is not None and label not in stored.label_ids:
                    continue
                ref = {"id": stored.id, "threadId": stored.thread_id}
                item: dict[str, Any] = {"id": str(record.id), "messages": [ref]}
                if record.kind == "messageAdded":
                    item["messagesAdded"] = [{"message": stored.minimal()}]
                else:
                    change = {"message": stored.minimal(), "labelIds": record.label_ids}
                    item[f"{'labelsAdded' if record.kind == 'labelAdded' else 'labelsRemoved'}"] = [
                        change
                    ]
                records.append(item)
            current = str(box.history_id)
        page, token = _page(request, records)
        body: dict[str, Any] = {"historyId": current}
        if page:
            body["history"] = page
        if token:
            body["nextPageToken"] = token
        return body

    async def _labels(self, request: Request, box: Mailbox) -> dict[str, Any]:
        with self.lock:
            system = [{"id": i, "name": i, "type": "system"} for i in SYSTEM_LABELS]
            user = [_user_label(i, n) for i, n in box.user_labels.items()]
        return {"labels": system + user}

    async def _create_label(self, request: Request, box: Mailbox) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as error:
            raise GmailAnswerError(errors.invalid_argument("Invalid JSON payload")) from error
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise GmailAnswerError(errors.invalid_argument("Invalid label name"))
        with self.lock:
            taken = {n.lower() for n in box.user_labels.values()} | {
                s.lower() for s in SYSTEM_LABELS
            }
            if name.lower() in taken:
                raise GmailAnswerError(
                    errors.GmailError(
                        409, "ALREADY_EXISTS", "duplicate", "Label name exists or conflicts"
                    )
                )
            label_id = f"Label_{len(box.user_labels) + 1}"
            box.user_labels[label_id] = name
        return _user_label(label_id, name)


def _user_label(label_id: str, name: str) -> dict[str, str]:
    return {
        "id": label_id,
        "name": name,
        "type": "user",
        "messageListVisibility": "show",
        "labelListVisibility": "labelShow",
    }
