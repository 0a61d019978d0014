"""The classifier against a public corpus of real bounces and a reference library's verdicts.

    uv run python -m bench.bounce_corpus SET_OF_EMAILS RB_SISIMAI [--maildir bsd] [--list]

SET_OF_EMAILS is a checkout of github.com/sisimai/set-of-emails (some 600 real bounces from
about 70 MTAs and providers), RB_SISIMAI one of github.com/sisimai/rb-sisimai, whose
test/public/*.rb give the expected verdict of each message: per failed recipient its RFC 3463
code, reason and whether it is a hard bounce. Neither is part of this repository; fetch them
to measure. It prints one JSON line:

- recognition: the messages classified as expected (a bounce with at least one hard or soft
  verdict; a complaint for a feedback report, or an unsubscribe for an opt-out; an auto-reply
  for a vacation message; a bounce for a delivery report), over those with expectations;
- agreement_all: failed recipients whose hard/soft verdict agrees with the reference's (the
  n-th recipient we give against the reference's n-th), over all of them;
  agreement_given: the same over those we gave a verdict for;
- hard_against_policy: recipients we call hard whose reference reason is not about the
  address (not userunknown, hostunknown, hasmoved or notaccept), with the reasons counted.

--list prints, before that line, every message not recognised and every such hard verdict.
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from mailfleet_bouncer.classify import Classified, classify

_ENTRY = re.compile(r"'(\d+)'\s*=>\s*\[(.*?)\]\s*\]", re.S)
_ITEM = re.compile(r"\[\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*(true|false)")
_ADDRESS_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})
_NOT_FAILURES = frozenset({"feedback", "vacation", "delivered"})


class Expected(NamedTuple):
    """One recipient of the reference's expectations."""

    status: str
    reason: str
    hard: bool


def expectations(rb_sisimai: Path) -> dict[str, list[Expected]]:
    """File name -> the expected recipients, from test/public/{lhost,rhost,arf,rfc*}-*.rb."""
    found: dict[str, list[Expected]] = {}
    for path in sorted((rb_sisimai / "test" / "public").glob("*.rb")):
        if not path.stem.startswith(("lhost-", "rhost-", "arf", "rfc3464", "rfc3834")):
            continue
        for entry in _ENTRY.finditer(path.read_text("utf-8")):
            items = [
                Expected(status, reason, hard == "true")
                for status, _, reason, hard in _ITEM.findall(entry.group(2) + "]")
            ]
            found[f"{path.stem}-{entry.group(1)}.eml"] = items
    return found


def recognised(result: Classified, reasons: set[str]) -> bool:
    """Whether the classification is what the reference expects of the message."""
    if reasons <= {"feedback"}:
        return result.parser in ("arf", "apple") or result.kind in ("complaint", "unsubscribe")
    if reasons <= {"vacation"}:
        return result.kind == "auto-reply"
    if reasons <= {"delivered"}:
        return result.kind == "bounce"
    return result.kind == "bounce" and any(r.bounce for r in result.recipients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set_of_emails", type=Path)
    parser.add_argument("rb_sisimai", type=Path)
    parser.add_argument("--maildir", default="bsd", help="bsd (LF), dos (CRLF) or mac (CR)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()

    expected = expectations(args.rb_sisimai)
    folder = args.set_of_emails / "maildir" / args.maildir
    counts: Counter[str] = Counter()
    against: Counter[str] = Counter()
    for path in sorted(p for p in folder.glob("*.eml") if p.name in expected):
        items = expected[path.name]
        result = classify(path.read_bytes())
        counts["emails"] += 1
        if recognised(result, {item.reason for item in items}):
            counts["recognised"] += 1
        elif args.list:
            print("not recognised", path.name, result.kind, (result.problem or "")[:100])
        failed = [item for item in items if item.reason not in _NOT_FAILURES]
        ours = [r for r in result.recipients if r.bounce] if result.kind == "bounce" else []
        for item, mine in zip(failed, ours + [None] * len(failed), strict=False):
            counts["failed"] += 1
            if mine is None:
                continue
            counts["given"] += 1
            counts["agree"] += (mine.bounce == "hard") == item.hard
            if mine.bounce == "hard" and item.reason not in _ADDRESS_REASONS:
                against[item.reason] += 1
                if args.list:
                    print("hard", path.name, item.reason, mine.status, mine.diagnostic)
    print(
        json.dumps(
            {
                "emails": counts["emails"],
                "recognition": round(counts["recognised"] / max(1, counts["emails"]), 4),
                "failed_recipients": counts["failed"],
                "agreement_all": round(counts["agree"] / max(1, counts["failed"]), 4),
                "agreement_given": round(counts["agree"] / max(1, counts["given"]), 4),
                "hard_against_policy": sum(against.values()),
                "by_reason": dict(against.most_common()),
            }
        )
    )


if __name__ == "__main__":
    main()
