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


def screen_recipients(
    recipients: Sequence[RecipientIn], max_variables_bytes: int
) -> tuple[list[Candidate], list[Rejection]]:
    """Split recipients into storable candidates and rejections, dropping repeats."""
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    seen: set[str] = set()
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for index, recipient in enumerate(recipients):
        raw = recipient.email
        if len(raw) > MAX_ADDRESS_CHARS:
            reason = "invalid address: too long"
            rejections.append(Rejection(index, raw[:MAX_ADDRESS_CHARS], reason))
            continue
        try:
            email = validate_email(raw, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            rejections.append(Rejection(index, raw, f"invalid address: {exc}"))
            continue
        name = recipient.name
        if name is not None:
            if _CONTROL.search(name):
                reason = "name must not contain control characters (CR, LF, ...)"
                rejections.append(Rejection(index, email, reason))
                continue
            if len(name) > MAX_NAME_CHARS:
                rejections.append(
                    Rejection(index, email, f"name longer than {MAX_NAME_CHARS} characters")
                )
                continue
        variables_json = "{}" if recipient.variables is None else dumps(recipient.variables)
        if "\\u0000" in variables_json:
            # PostgreSQL's jsonb cannot hold NUL characters.
            rejections.append(Rejection(index, email, "variables must not contain NUL"))
            continue
        if len(variables_json.encode()) > max_variables_bytes:
            rejections.append(
                Rejection(index, email, f"variables larger than {max_variables_bytes} bytes")
            )
            continue
        key = email.lower()
        if key in seen:
            rejections.append(Rejection(index, email, "duplicate in request"))
            continue
        seen.add(key)
        candidates.append(Candidate(index, email, name, variables_json))
    return candidates, rejections
