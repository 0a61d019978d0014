"""JSON-lines logging for every service (python-json-logger does the formatting)."""

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str = "INFO", service: str = "mailfleet") -> None:
    """Send every log record to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # flufl.bounce logs every detector it runs at INFO: up to 17 lines per bounce.
    for noisy in ("aiormq", "aio_pika", "flufl.bounce", "aioimaplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
