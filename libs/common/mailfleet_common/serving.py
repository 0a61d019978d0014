"""Serving a service's ASGI app under uvicorn, the same way in every service."""

import gc
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
    tune_gc()
    uvicorn.run(app, host=http.host, port=http.port, log_config=None, access_log=False, **options)


# Allocations between two collections of the youngest generation (CPython's default: 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cycles less often, and never walk what was loaded at start.

    With CPython's defaults, a replica serving thousands of accounts (each with its consumer,
    SMTP session and buffers, a few million objects in all) spent most of its CPU in the
    cycle collector: a young collection every 700 allocations, and full ones that walk every
    live object. Freezing moves the objects alive at start (modules, settings, the app) out of
    every collection; the larger young generation makes collections about 70 times rarer,
    each over at most a few tens of thousands of young objects.
    """
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)
