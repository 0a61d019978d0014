"""An OTLP/HTTP trace receiver for tests: decodes what services export, keeps the spans.

```python
with OtlpReceiver() as receiver:  # listens on 127.0.0.1:<free port>
    env = {"MAILFLEET_TRACING__OTLP_ENDPOINT": receiver.endpoint}
    ...  # start processes with env
    spans = await receiver.wait_for_trace(trace_id, {("mailfleet-api", "SERVER", "POST /x")})
```

It answers ``POST /v1/traces`` (protobuf ``ExportTraceServiceRequest``, gzip or not) as a
collector would, in a thread of the test process.
"""

import asyncio
import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER or INTERNAL
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    found = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        kind=SpanProto.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in span.links),
                    )
                )
    return found


class OtlpReceiver:
    """Collects every span posted to it; `spans` is a snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver._spans.extend(_spans(request))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL, as MAILFLEET_TRACING__OTLP_ENDPOINT takes it."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    async def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], within_s: float = 20.0
    ) -> list[ReceivedSpan]:
        """Every span received, once `found` holds for them; AssertionError after `within_s`."""
        deadline = time.monotonic() + within_s
        while not found(spans := self.spans):
            if time.monotonic() > deadline:
                summary = "\n".join(f"  {s.service} {s.kind} {s.name}" for s in spans)
                raise AssertionError(f"spans not received within {within_s}s; got:\n{summary}")
            await asyncio.sleep(0.1)
        return spans

    async def wait_for_trace(
        self, trace_id: str, wanted: set[tuple[str, str, str]], within_s: float = 20.0
    ) -> list[ReceivedSpan]:
        """The spans of a trace, once it holds each (service, kind, name) wanted."""

        def holds(spans: list[ReceivedSpan]) -> bool:
            return wanted <= {(s.service, s.kind, s.name) for s in spans if s.trace_id == trace_id}

        return [s for s in await self.wait_for(holds, within_s) if s.trace_id == trace_id]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
