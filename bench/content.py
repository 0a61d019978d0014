"""The benchmark's campaign: ~4 KB of personalized HTML with two links, and its recipients."""

from email.utils import make_msgid

_PARAGRAPH = (
    '<p style="margin:0 0 12px 0;font-family:Arial,sans-serif;font-size:14px;color:#333">'
    "Our spring collection is here, {{ name }}. We picked a few things we think you will like "
    "based on what you looked at in {{ city }}: lightweight jackets, linen shirts and the "
    "canvas sneakers that sold out last year are all back in stock this week.</p>\n"
)

HTML = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Spring</title></head><body>'
    '<table width="100%" cellpadding="0" cellspacing="0"><tr><td>'
    '<h1 style="font-family:Arial,sans-serif">Hello {{ name }}!</h1>\n'
    + _PARAGRAPH
    * 9
    + '<p><a href="https://shop.example.com/spring?ref={{ code }}">See the collection</a></p>'
    '<p><a href="https://shop.example.com/account/{{ code }}/preferences">Your '
    "preferences</a></p>"
    "</td></tr></table></body></html>\n"
)

TEXT = (
    "Hello {{ name }}!\n\nOur spring collection is here. See it at "
    "https://shop.example.com/spring?ref={{ code }}\n"
)

SUBJECT = "{{ name }}, the spring collection is here"


def recipients(count: int) -> list[dict[str, object]]:
    return [
        {
            "email": f"customer{i}@bench.example.com",
            "name": f"Customer {i}",
            "variables": {"city": "Lisbon" if i % 2 else "Porto", "code": f"c{i:06d}"},
        }
        for i in range(count)
    ]


def prebuilt_messages(count: int) -> list[tuple[str, str, bytes]]:
    """Ready-to-send (sender, recipient, bytes) equivalent to the campaign's, built up front."""
    body = HTML.replace("{{ city }}", "Lisbon")
    out = []
    for r in recipients(count):
        name = str(r["name"])
        variables = r["variables"]
        assert isinstance(variables, dict)
        html = body.replace("{{ name }}", name).replace("{{ code }}", variables["code"])
        text = TEXT.replace("{{ name }}", name).replace("{{ code }}", variables["code"])
        msg = (
            "From: Bench <bench@sender.example.com>\r\n"
            f"To: {name} <{r['email']}>\r\n"
            f"Subject: {SUBJECT.replace('{{ name }}', name)}\r\n"
            f"Message-ID: {make_msgid(domain='sender.example.com')}\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{text}\r\n"
            "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f"{html}\r\n--b1--\r\n"
        )
        out.append(
            (
                "bench@sender.example.com",
                str(r["email"]),
                msg.replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode(),
            )
        )
    return out
