"""Screening of the recipients of one enqueue request: address syntax, names, variables."""

import functools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from mailfleet_api.schemas import MAX_NAME_CHARS, RecipientIn

MAX_ADDRESS_CHARS = 320  # far above any valid address; only bounds the work on garbage
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# email_validator checks the domain of every address from scratch (IDNA/UTS-46 per character),
# which is about 60% of its cost; a mailing list has few distinct domains. The check depends
# only on the domain and the options, so memoizing it validates exactly as before, faster.
# Failures are not cached (lru_cache does not cache exceptions).
_validator_namespace = vars(sys.modules[validate_email.__module__])
if not hasattr(_validator_namespace["validate_email_domain_name"], "cache_info"):
    _validator_namespace["validate_email_domain_name"] = functools.lru_cache(maxsize=16_384)(
        _validator_namespace["validate_email_domain_name"]
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A recipient that passed screening, in the form it is stored."""

    index: int
    email: str
    name: str | None
    variables_json: str


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    email: str
    reason: str


class RecipientScreen:
    """Screens the recipients of one request, chunk by chunk, remembering what it has seen.

    Chunks can be screened in a worker thread while the previous chunk is being stored.
    """

    def __init__(self, max_variables_bytes: int) -> None:
        self.max_variables_bytes = max_variables_bytes
        self._seen: set[str] = set()
        self._dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def screen(
        self, recipients: Sequence[RecipientIn], first_index: int = 0
    ) -> tuple[list[Candidate], list[Rejection]]:
        """Split recipients into storable candidates and rejections, dropping repeats."""
        candidates: list[Candidate] = []
        rejections: list[Rejection] = []
        for index, recipient in enumerate(recipients, first_index):
            outcome = self._screen_one(index, recipient)
            if isinstance(outcome, Rejection):
                rejections.append(outcome)
            else:
                candidates.append(outcome)
        return candidates, rejections

    def _screen_one(self, index: int, recipient: RecipientIn) -> Candidate | Rejection:
        raw = recipient.email
        if len(raw) > MAX_ADDRESS_CHARS:
            return Rejection(index, raw[:MAX_ADDRESS_CHARS], "invalid address: too long")
        try:
            email = validate_email(raw, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            return Rejection(index, raw, f"invalid address: {exc}")
        name = recipient.name
        if name is not None:
            if _CONTROL.search(name):
                return Rejection(
                    index, email, "name must not contain control characters (CR, LF, ...)"
                )
            if len(name) > MAX_NAME_CHARS:
                return Rejection(index, email, f"name longer than {MAX_NAME_CHARS} characters")
        variables_json = "{}" if not recipient.variables else self._dumps(recipient.variables)
        if "\\u0000" in variables_json:
            # PostgreSQL's jsonb cannot hold NUL characters.
            return Rejection(index, email, "variables must not contain NUL")
        if len(variables_json.encode()) > self.max_variables_bytes:
            return Rejection(
                index, email, f"variables larger than {self.max_variables_bytes} bytes"
            )
        key = email.lower()
        if key in self._seen:
            return Rejection(index, email, "duplicate in request")
        self._seen.add(key)
        return Candidate(index, email, name, variables_json)
