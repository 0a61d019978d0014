"""A webhook receiver run as its own process by the tests: records every request it gets.

    python -m tests.webhooks.receiver PORT RECORD_FILE

Each POST is appended to RECORD_FILE as one JSON line (headers, body, the status answered)
before it is answered. How it answers is set at run time by POST /_mode with a JSON body:
{"mode": "ok" | "fail" | "hang", "delay_s": 0.0}: `fail` answers 500 with a 10 kB body,
`hang` waits far longer than any test timeout, `delay_s` delays every answer.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_state: dict[str, Any] = {"mode": "ok", "delay_s": 0.0}
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    record_path = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200, b"ok")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/_mode":
            _state.update(json.loads(body))
            self._answer(200, b"ok")
            return
        mode, delay_s = _state["mode"], float(_state["delay_s"])
        status = {"ok": 200, "fail": 500, "hang": 0}[mode]
        line = json.dumps(
            {
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": body.decode(),
                "status": status,
                "at": time.time(),
            }
        )
        with _lock, open(self.record_path, "a") as record:
            record.write(line + "\n")
        if mode == "hang":
            time.sleep(60)
            return
        time.sleep(delay_s)
        self._answer(status, b"x" * 10_000 if status == 500 else b"thanks")


def main() -> None:
    port, Handler.record_path = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
