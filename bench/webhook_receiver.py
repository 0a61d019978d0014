"""The benchmark's webhook receiver: verifies each request's signature and counts it.

    python -m bench.webhook_receiver --port PORT --secret whsec_...

GET /count answers {"received": n, "bad": n} (bad: signature did not verify).
"""

import argparse
import json
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

Scope = dict[str, Any]


def make_app(secret: str) -> Any:
    signer = Webhook(secret)
    counts = {"received": 0, "bad": 0}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            answer = json.dumps(counts).encode()
        else:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            try:
                signer.verify(body, headers, json_parse=False)
                counts["received"] += 1
            except WebhookVerificationError:
                counts["bad"] += 1
            answer = b"ok"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.secret),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
