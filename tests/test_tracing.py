"""OpenTelemetry tracing (issue 18): spans in the SDK's in-memory exporter, the OTLP/HTTP
exporter against a local receiver that records what it got, trace context upstream, trace ids
in log lines, and nothing imported while tracing is off."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.config import StartupError
from proxy.observe import tracing as tracing_module
from proxy.observe.tracing import Tracing, from_env
from proxy.testing import make_token
from tests.conftest import ACME_TOKEN, ProcessUpstream, ProxyFactory, Upstream, acme_route
from tests.support.process import spawn_proxy
from tests.support.waiting import until

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    yield tracing, exporter
    tracing.shutdown()


def _by_kind(finished: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in finished if s.kind == kind]


async def test_a_request_is_a_server_span_with_a_client_span_the_upstream_sees_as_parent(
    make_proxy: ProxyFactory,
    upstream: Upstream,
    spans: tuple[Tracing, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing, exporter = spans
    caplog.set_level(logging.INFO, logger="amperity_proxy.access")
    proxy = await make_proxy(tracing=tracing)
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    response = await proxy.client.get(
        "/acme/segments?secret=s3cret", headers={"traceparent": traceparent}
    )
    assert response.status == 200
    await until(lambda: len(exporter.get_finished_spans()) == 2, "both spans ended")
    finished = exporter.get_finished_spans()
    [server] = _by_kind(finished, SpanKind.SERVER)
    [client] = _by_kind(finished, SpanKind.CLIENT)
    # the client's trace continues: same trace id, its span is the server span's parent
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CLIENT_PARENT
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    # what the upstream received: the proxy's client span as its parent
    [seen] = upstream.requests
    sent = seen.header("traceparent")
    assert sent == f"00-{CLIENT_TRACE}-{client.context.span_id:016x}-01"
    assert dict(server.attributes or {}) | {} == {
        "http.request.method": "GET",
        "url.path": "/acme/segments",
        "http.route": "/acme/*",
        "amperity.route": "acme",
        "amperity.tenant": "acme",
        "amperity.request_id": response.headers["X-Request-ID"],
        "http.response.status_code": 200,
    }
    assert str(dict(client.attributes or {})["url.full"]).endswith("/api/segments")
    assert dict(client.attributes or {})["http.response.status_code"] == 200
    text = repr([dict(s.attributes or {}) for s in finished]) + repr([s.name for s in finished])
    assert "s3cret" not in text and "secret" not in text and ACME_TOKEN not in text
    # the access line carries the trace
    [access] = [r for r in caplog.records if r.name == "amperity_proxy.access"]
    fields = access.fields  # type: ignore[attr-defined]
    assert fields["trace_id"] == CLIENT_TRACE
    assert fields["span_id"] == f"{server.context.span_id:016x}"


async def test_a_retry_is_a_second_client_span_with_its_reason(
    make_proxy: ProxyFactory, upstream: Upstream, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    route = acme_route(upstream, retry={"on": [429], "attempts": 2, "base": 0.001, "max": 0.001})
    proxy = await make_proxy([route], tracing=tracing)
    assert (await proxy.client.get("/acme/_fake/flaky/1")).status == 200
    await until(lambda: len(exporter.get_finished_spans()) == 3, "three spans ended")
    first, second = _by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert dict(first.attributes or {})["http.response.status_code"] == 429
    assert "http.request.resend_count" not in dict(first.attributes or {})
    attributes = dict(second.attributes or {})
    assert attributes["http.request.resend_count"] == 1
    assert attributes["amperity.retry_reason"] == "status_429"
    assert attributes["http.response.status_code"] == 200
    assert [r.header("traceparent") for r in upstream.requests] == [
        f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-{s.context.trace_flags:02x}"
        for s in (first, second)
    ]


async def test_an_upstream_failure_marks_the_spans(
    make_proxy: ProxyFactory, upstream: Upstream, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    proxy = await make_proxy(tracing=tracing)
    assert (await proxy.client.get("/acme/_fake/status/503")).status == 503
    await until(lambda: len(exporter.get_finished_spans()) == 2, "both spans ended")
    for span in exporter.get_finished_spans():
        assert span.status.status_code.name == "ERROR"


def test_tracing_is_off_unless_asked_and_then_nothing_is_imported() -> None:
    assert from_env({}) is None and from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    code = (
        "import sys, os\n"
        "os.environ.pop('OTEL_TRACES_EXPORTER', None)\n"
        "from proxy.cli.main import main\n"
        "from proxy.app import create_app\n"
        "from proxy.config import parse_config\n"
        "c = parse_config({'routes': [{'prefix': '/a', 'tenant': 'acme', 'token': {'env': 'T'}}]})\n"
        "app = create_app(c, env={'T': 'x'})\n"
        "assert app.tracing is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_asking_for_tracing_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(StartupError) as info:
        from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_module.INSTALL in str(info.value)
    with pytest.raises(StartupError, match="zipkin is not supported"):
        from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_otlp_http_export_to_a_local_receiver(
    tmp_path: Path, process_upstream: ProcessUpstream
) -> None:
    """The proxy as a process, configured only by the standard variables, exports over
    OTLP/HTTP to a receiver on loopback; the receiver decodes what it got."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[Any] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    receiver = web.AppRunner(app)
    await receiver.setup()
    site = web.TCPSite(receiver, "127.0.0.1", 0)
    await site.start()
    port = receiver.addresses[0][1]
    config = {"listen": {"port": 0}, "admin": {"port": 0}, "routes": [process_upstream.route()]}
    env = {
        "ACME_TOKEN": make_token("acme"),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
        "OTEL_SERVICE_NAME": "proxy-under-test",
    }
    process = await spawn_proxy(tmp_path, config, env)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://{process.proxy}/acme/segments?q=hidden"
            async with session.get(url) as response:
                assert response.status == 200
        process.proc.send_signal(signal.SIGTERM)  # the drain's end exports what is pending
        assert await asyncio.wait_for(process.proc.wait(), 30) == 0
    finally:
        await process.stop()
        await receiver.cleanup()
    spans = [
        (span.name, span.kind, resource.resource)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    kinds = sorted(kind for _, kind, _ in spans)
    assert kinds == [2, 3]  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
    services = {
        a.value.string_value
        for _, _, resource in spans
        for a in resource.attributes
        if a.key == "service.name"
    }
    assert services == {"proxy-under-test"}
    assert "hidden" not in repr(received)
