"""Serving a service's ASGI app under uvicorn, the same way in every service."""

import signal
from typing import Any

import uvicorn

from mailfleet_common.settings import HttpSettings


def serve(app: Any, http: HttpSettings, /, **options: Any) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and exit with status 0.

    uvicorn drains on SIGTERM and then raises the signal again with the handler it found
    installed at start; with the default one the process would die by the signal (exit -15)
    after a clean shutdown. A no-op handler makes a graceful stop look like one.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(app, host=http.host, port=http.port, log_config=None, access_log=False, **options)
