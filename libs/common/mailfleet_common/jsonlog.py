"""JSON-lines logging for every service (python-json-logger does the formatting)."""

import logging
import sys
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter


class _TracedJsonFormatter(JsonFormatter):
    """Adds ``trace_id`` and ``span_id`` while a span is active, to find a line's trace."""

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            log_record["trace_id"] = f"{span_context.trace_id:032x}"
            log_record["span_id"] = f"{span_context.span_id:016x}"


def configure_logging(level: str = "INFO", service: str = "mailfleet") -> None:
    """Send every log record to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _TracedJsonFormatter(
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
