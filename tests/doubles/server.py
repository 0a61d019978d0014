"""An ASGI app served by uvicorn on a free loopback port, in a thread of the test process."""

import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp


class ServedApp:
    """Serve `app` on 127.0.0.1 until `stop()`; `url` is its base URL without a trailing slash."""

    def __init__(self, app: ASGIApp) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> None:
        """Start serving and return once the socket accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test double did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving; requests in flight are given a few seconds to finish."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
