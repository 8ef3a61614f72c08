"""OpenTelemetry tracing, optional: the `[otel]` extra, on only when `OTEL_TRACES_EXPORTER` is
set and not `none`.

The SDK would switch itself on with its own default exporter (otlp) when nothing is set; here
tracing is opt-in, so a proxy that never asked for traces exports nothing, imports nothing
(`opentelemetry` is imported only by `from_env` once tracing is asked for) and pays nothing
per request. When on, it is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `..._TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
and its argument, the exporter's headers and timeout): exporters `otlp` (OTLP over HTTP,
protobuf) and `console`.

Spans: one server span per request (its parent is the client's W3C `traceparent`, when it sent
one) and one client span per upstream attempt, so a 401 replay or a 429/503 retry is a second
client span, with `http.request.resend_count` and `amperity.retry_reason`. The upstream gets
the client span as its parent in `traceparent`/`tracestate`. Attributes follow the HTTP
semantic conventions plus the route and tenant: never a token, never a query string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from proxy.config import StartupError
from proxy.observe import logs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

INSTALL = "pip install 'amperity-auth-proxy[otel]' (the image has it)"
PROPAGATED = ("traceparent", "tracestate")  # the W3C trace-context headers


def wanted(env: Mapping[str, str]) -> bool:
    """Tracing is asked for: OTEL_TRACES_EXPORTER is set and not `none`."""
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return bool(exporter) and exporter != "none"


def from_env(env: Mapping[str, str]) -> Tracing | None:
    """Tracing as the environment asks for it; None when it doesn't."""
    if not wanted(env):
        return None
    names = [n.strip().lower() for n in env["OTEL_TRACES_EXPORTER"].split(",") if n.strip()]
    unknown = sorted(set(names) - {"otlp", "console", "none"})
    if unknown:
        raise StartupError(
            [f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not supported; use otlp or console"]
        )
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise StartupError(
            [f"OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: {INSTALL}"]
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": _service(env)}))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return Tracing(provider)


def _service(env: Mapping[str, str]) -> str:
    # OTEL_SERVICE_NAME wins inside Resource.create; this is only the default.
    return env.get("OTEL_SERVICE_NAME") or "amperity-auth-proxy"


class Tracing:
    """Spans for the request path (see the module docstring). Built with a TracerProvider, so
    tests can give it one with an in-memory exporter."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("amperity-auth-proxy")
        self._context = context
        self._trace = trace
        self._kinds = SpanKind
        self._error = StatusCode.ERROR
        self._propagator = TraceContextTextMapPropagator()
        logs.TRACE_IDS[:] = [self.current_ids]

    @contextlib.contextmanager
    def server(
        self, headers: Mapping[str, str], method: str, path: str, attributes: dict[str, Any]
    ) -> Iterator[Span]:
        """The request's server span, current (log lines and client spans see it) while the
        block runs. `path`: without the query."""
        parent = self._propagator.extract(carrier=headers)
        span = self._tracer.start_span(
            f"{method} {attributes.get('http.route', '')}".strip(),
            context=parent,
            kind=self._kinds.SERVER,
            attributes={"http.request.method": method, "url.path": path, **attributes},
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        try:
            yield span
        finally:
            self._context.detach(token)
            span.end()

    def client(
        self, method: str, url: str, host: str, port: int, resend: int, reason: str | None
    ) -> tuple[Span, list[tuple[str, str]]]:
        """A client span for one upstream attempt (a child of the current server span) and
        the trace-context headers that make it the upstream's parent. `url`: no query."""
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.full": url,
            "server.address": host,
            "server.port": port,
        }
        if resend:
            attributes["http.request.resend_count"] = resend
            attributes["amperity.retry_reason"] = reason or "retry"
        span = self._tracer.start_span(method, kind=self._kinds.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return span, list(carrier.items())

    def finish(self, span: Span, status: int | None, error: str | None = None) -> None:
        """End a span with the HTTP status it got (or the error class that stopped it)."""
        self.annotate(span, status, error)
        span.end()

    def annotate(self, span: Span, status: int | None, error: str | None = None) -> None:
        """The HTTP status a span's exchange got, or the error class that stopped it."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error)
        if error is not None or (status is not None and status >= 500):
            span.set_status(self._error)

    def current_ids(self) -> dict[str, str] | None:
        """trace_id and span_id of the current span, for log lines; None outside a trace."""
        span = self._trace.get_current_span()
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}

    def shutdown(self) -> None:
        """Export what is pending, then stop (the drain's end)."""
        logs.TRACE_IDS[:] = []
        self.provider.shutdown()
