"""OpenTelemetry tracing, off unless an OTLP endpoint is configured, and W3C trace context.

Every service calls `configure_tracing` once at start. Until it has (or when no endpoint is
set) no tracer provider exists: `enabled()` is False, `current_traceparent()` is None and the
code paths that carry a message's trace context skip all of it. When on, spans go in batches
to an OTLP/HTTP (protobuf) collector.

Trace context crosses RabbitMQ in message headers (``traceparent``, W3C Trace Context).
FastStream's telemetry middleware does this for its own publishers and subscribers; the
aio-pika and aiormq paths use `inject` and `extract` here. A command or event that carries
many messages or hits at once also carries each one's ``traceparent`` in its body, since
each belongs to a trace of its own.
"""

import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, Field

_PROPAGATOR = TraceContextTextMapPropagator()
_enabled = False


class TracingSettings(BaseModel):
    """Where spans go, and how many traces are kept.

    - otlp_endpoint (MAILFLEET_TRACING__OTLP_ENDPOINT): the collector's OTLP/HTTP base URL,
      e.g. ``http://otel-collector:4318`` (``/v1/traces`` is added unless the URL ends with
      it). Empty: tracing is off, unless OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
      OTEL_EXPORTER_OTLP_ENDPOINT is set. OTEL_SDK_DISABLED=true turns it off regardless.
    - sample_ratio (MAILFLEET_TRACING__SAMPLE_RATIO): the share of new traces recorded, 0 to 1;
      a trace continued from a caller follows the caller's decision.
    - service_name (MAILFLEET_TRACING__SERVICE_NAME): ``service.name`` of the spans; empty
      means OTEL_SERVICE_NAME, or else the service's own name (``mailfleet-api``, ...).
    """

    otlp_endpoint: str = ""
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    service_name: str = ""


def traces_endpoint(settings: TracingSettings, environ: Mapping[str, str]) -> str | None:
    """The URL spans are posted to, or None when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.otlp_endpoint:
        base = settings.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"
    # The OTLP specification's own variables: the signal's URL is used as it is, the base
    # URL gets the signal's path.
    if signal := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return signal
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return f"{base.rstrip('/')}/v1/traces"
    return None


def configure_tracing(
    settings: TracingSettings, service: str, environ: Mapping[str, str] | None = None
) -> bool:
    """Install a tracer provider exporting to the configured collector; False if tracing is off.

    Called once per process, from the entry point (``environ`` defaults to the process's).
    OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS and OTEL_BSP_* are read by the SDK
    itself.
    """
    global _enabled
    environ = os.environ if environ is None else environ
    endpoint = traces_endpoint(settings, environ)
    if endpoint is None:
        return False
    # Imported only when on: a service with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    name = settings.service_name or environ.get("OTEL_SERVICE_NAME", "").strip() or service
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    """Whether this process records spans (a provider is installed)."""
    return _enabled


def shutdown_tracing() -> None:
    """Export the spans still buffered; a no-op when tracing is off."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if _enabled and shutdown is not None:
        shutdown()


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    """The active span's W3C ``traceparent``, if tracing is on and the span is sampled.

    What is stored with a message, or sent with a hit, to continue its trace later: an
    unsampled trace stores nothing, so later stages do no work for it.
    """
    if not _enabled:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-01"


def span_traceparent(span: trace.Span) -> str:
    """A span's own ``traceparent``: the parent of what it causes downstream."""
    span_context = span.get_span_context()
    flags = "01" if span_context.trace_flags.sampled else "00"
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags}"


def context_from(traceparent: str) -> Context:
    """The context a stored or received ``traceparent`` names, to start children in."""
    return _PROPAGATOR.extract({"traceparent": traceparent})


def inject(headers: MutableMapping[str, Any], span: trace.Span | None = None) -> None:
    """Write the span's (or the active span's) trace context into message headers."""
    ctx = None if span is None else trace.set_span_in_context(span)
    _PROPAGATOR.inject(headers, context=ctx)


def extract(headers: Mapping[str, Any] | None) -> Context | None:
    """The trace context in message headers, or None if they carry none."""
    if not headers or "traceparent" not in headers:
        return None
    value = headers["traceparent"]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return _PROPAGATOR.extract({"traceparent": str(value)})


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# Loose on purpose: Starlette and the tracker's raw app spell the scope types differently.
AsgiApp = Callable[..., Awaitable[None]]


class TracingMiddleware:
    """One SERVER span per HTTP request, continuing the caller's ``traceparent`` if sent.

    Named by route, never by the raw path: tracking and unsubscribe paths hold tokens. The
    route is the one the framework matched (``scope["route"]``), or ``route_of(path)``.
    """

    def __init__(
        self, app: AsgiApp, service: str, route_of: Callable[[str], str] | None = None
    ) -> None:
        self._app = app
        self._tracer = trace.get_tracer(service)
        self._route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        method: str = scope["method"]
        route = self._route_of(scope["path"]) if self._route_of else None
        with self._tracer.start_as_current_span(
            f"{method} {route}" if route else method,
            context=_PROPAGATOR.extract(carrier) if carrier else context.Context(),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:

            async def traced_send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                await send(message)

            await self._app(scope, receive, traced_send)
            matched = scope.get("route")
            if route is None and (template := getattr(matched, "path", None)):
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            elif route:
                span.set_attribute("http.route", route)
