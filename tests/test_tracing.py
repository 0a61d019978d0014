"""Tracing settings, tracing off, and trace ids in the JSON log lines."""

import json
import subprocess
import sys

from mailfleet_common.tracing import TracingSettings, traces_endpoint


def _run(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env
    )


def test_tracing_is_off_without_an_endpoint() -> None:
    assert traces_endpoint(TracingSettings(), {}) is None


def test_the_endpoint_setting_is_a_base_url_like_the_otlp_variable() -> None:
    base = TracingSettings(otlp_endpoint="http://collector:4318/")
    full = TracingSettings(otlp_endpoint="http://collector:4318/v1/traces")
    assert traces_endpoint(base, {}) == "http://collector:4318/v1/traces"
    assert traces_endpoint(full, {}) == "http://collector:4318/v1/traces"


def test_the_standard_otel_variables_are_honoured() -> None:
    off = TracingSettings()
    assert traces_endpoint(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == (
        "http://c:4318/v1/traces"
    )
    signal = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}
    assert traces_endpoint(off, signal) == "http://c:4318/custom"
    on = TracingSettings(otlp_endpoint="http://collector:4318")
    assert traces_endpoint(on, {"OTEL_SDK_DISABLED": "true"}) is None


def test_tracing_off_loads_no_sdk_and_hands_out_no_context() -> None:
    script = (
        "import sys; from mailfleet_common import tracing; "
        "on = tracing.configure_tracing(tracing.TracingSettings(), 'x', {}); "
        "print(on, tracing.current_traceparent(), 'opentelemetry.sdk' in sys.modules)"
    )
    assert _run(script).stdout.split() == ["False", "None", "False"]


def test_log_lines_carry_the_trace_and_span_of_the_active_span() -> None:
    script = """
import logging
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from mailfleet_common.jsonlog import configure_logging

configure_logging("INFO", service="mailfleet-test")
log = logging.getLogger("test")
log.info("before")
tracer = TracerProvider().get_tracer("test")
with tracer.start_as_current_span("work") as span:
    log.info("inside")
    context = span.get_span_context()
    print(f"{context.trace_id:032x} {context.span_id:016x}")
log.info("after")
"""
    done = _run(script)
    trace_id, span_id = done.stdout.split()
    lines = {line["message"]: line for line in map(json.loads, done.stderr.splitlines())}
    assert (lines["inside"]["trace_id"], lines["inside"]["span_id"]) == (trace_id, span_id)
    assert lines["inside"]["service"] == "mailfleet-test"
    assert "trace_id" not in lines["before"]
    assert "trace_id" not in lines["after"]
