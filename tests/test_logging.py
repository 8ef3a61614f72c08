"""Logs: one access line per request, a useful 401 warning, and never a token anywhere."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.observe.logs import JsonFormatter, TextFormatter, flush_logs, setup_logging
from proxy.testing import make_tls, make_token
from proxy.tokens import fingerprint
from tests.conftest import ACME_TOKEN, ProxyFactory, Upstream, acme_route, get, raw_request


class Capture:
    def __init__(self) -> None:
        self.json = io.StringIO()
        self.text = io.StringIO()

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.json.getvalue().splitlines()]

    def everything(self) -> str:
        return self.json.getvalue() + self.text.getvalue()


@pytest.fixture
def logs() -> Iterator[Capture]:
    capture = Capture()
    handlers = []
    for stream, formatter in ((capture.json, JsonFormatter()), (capture.text, TextFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handlers.append(handler)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    yield capture
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(old_level)


async def test_one_access_line_per_request_with_the_documented_fields(
    make_proxy: ProxyFactory, upstream: Upstream, logs: Capture
) -> None:
    proxy = await make_proxy()
    await proxy.client.post(
        "/acme/segments?limit=2&secret=x", data=b"12345", headers={"X-Request-ID": "r-1"}
    )
    await proxy.client.get("/nope")
    access = [line for line in logs.lines() if line["logger"] == "amperity_proxy.access"]
    assert len(access) == 2
    first, second = access
    assert {
        k: first[k]
        for k in (
            "request_id",
            "method",
            "route",
            "tenant",
            "path",
            "status",
            "upstream_status",
            "bytes_in",
        )
    } == {
        "request_id": "r-1",
        "method": "POST",
        "route": "acme",
        "tenant": "acme",
        "path": "/acme/segments",
        "status": 200,
        "upstream_status": 200,
        "bytes_in": 5,
    }
    assert first["client"] == "127.0.0.1"
    assert isinstance(first["bytes_out"], int) and first["bytes_out"] > 0
    assert isinstance(first["duration_ms"], float)
    assert str(first["time"]).endswith("Z")
    assert "secret" not in json.dumps(first)  # the query string is never logged
    assert (second["status"], second["route"], second["upstream_status"]) == (404, None, None)


async def test_upstream_401_is_explained_in_a_warning(
    make_proxy: ProxyFactory, upstream: Upstream, logs: Capture
) -> None:
    wrong_tenant = make_token("someone-else")
    proxy = await make_proxy(env={"ACME_TOKEN": wrong_tenant})
    assert (await proxy.client.get("/acme/x")).status == 401
    [warning] = [line for line in logs.lines() if "answered 401" in str(line["message"])]
    assert warning["level"] == "warning"
    assert (warning["route"], warning["tenant"]) == ("acme", "acme")
    assert warning["fingerprint"] == fingerprint(wrong_tenant)
    assert warning["cause"] == "tenant_mismatch"
    assert warning["upstream_message"] == "Amperity-Tenant does not match the token's tenant"
    assert 'Amperity said: "Amperity-Tenant does not match' in str(warning["message"])
    assert "check the route's tenant" in str(warning["message"])
    assert "rotated or revoked" not in str(warning["message"])  # a cause it can't know
    assert "expires in" in str(warning["message"])
    assert isinstance(warning["token_expires_at"], float)


async def test_no_token_in_logs_bodies_or_metrics(
    make_proxy: ProxyFactory, upstream: Upstream, logs: Capture, tmp_path: Path
) -> None:
    file_token = make_token("acme", subject="file")
    token_file = tmp_path / "token"
    token_file.write_text(file_token)
    routes = [
        acme_route(upstream),
        acme_route(upstream, prefix="/f", token={"file": str(token_file)}),
        acme_route(upstream, prefix="/bad", tenant="bad"),  # upstream 401
        acme_route(upstream, prefix="/down", base_url="https://acme.amperity.com:1/api"),
        acme_route(upstream, prefix="/dns", base_url="https://unknown.invalid/api"),
    ]
    proxy = await make_proxy(routes)
    bodies = []
    # (`_fake/status/200`, not a reflecting path: the fake's echo would contain the token.)
    ok = "/_fake/status/200"
    for path in (
        f"/acme{ok}",
        f"/f{ok}",
        "/bad/x",
        "/down/x",
        "/dns/x",
        "/nope",
        "/acme/_fake/cut/1000",
    ):
        response = await raw_request(proxy.port, get(path))
        bodies.append(response.body)
    token_file.unlink()
    await proxy.store.reload_files()
    token_file.write_text(make_token("acme", subject="rotated"))
    await proxy.store.reload_files()
    metrics = await proxy.metrics_text()
    readyz = await (await proxy.admin.get("/readyz")).text()
    haystack = (
        logs.everything() + metrics + readyz + repr(proxy.config) + repr(proxy.store.snapshot())
    )
    haystack += b"".join(bodies).decode("latin-1")
    for token in (ACME_TOKEN, file_token):
        assert token not in haystack
        assert token.split(".")[2] not in haystack  # not even the signature part
    assert "unknown.invalid" in logs.everything()  # the errors were logged, just without tokens


async def test_tls_failure_log_has_no_token(
    make_proxy: ProxyFactory, upstream: Upstream, logs: Capture
) -> None:
    proxy = await make_proxy(upstream_ssl=make_tls("unrelated.example").client)
    assert (await proxy.client.get("/acme/x")).status == 502
    assert "upstream tls error" in logs.everything()
    assert ACME_TOKEN not in logs.everything()


def test_setup_logging_chooses_the_format() -> None:
    stream = io.StringIO()
    setup_logging("auto", "info", stream)  # not a terminal: JSON
    logging.getLogger("amperity_proxy.test").info("hello", extra={"fields": {"k": 1}})
    assert stream.getvalue() == ""  # info lines are batched ...
    flush_logs()  # ... and written within 0.2 s by the server, or on flush
    line = json.loads(stream.getvalue())
    assert (line["message"], line["k"], line["level"]) == ("hello", 1, "info")
    text_stream = io.StringIO()
    setup_logging("text", "warning", text_stream)
    logging.getLogger("amperity_proxy.test").info("hidden")
    logging.getLogger("amperity_proxy.test").warning("shown", extra={"fields": {"k": 2}})
    assert text_stream.getvalue().rstrip().endswith("WARNING test shown k=2")
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_formatters_redact_queries_and_jwts_whatever_a_library_says(
    formatter: logging.Formatter,
) -> None:
    """The net under "never log a query or a token": third-party text (an exception that
    quotes a URL, a field a library filled) is redacted by the formatter itself."""
    url = "https://acme.amperity.com/api/x?api_key=Q-SECRET&b=2"
    try:
        raise ValueError(f"bad answer from {url} with {ACME_TOKEN}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.client", logging.DEBUG, __file__, 1, "GET %s", (url,), exc_info
    )
    record.fields = {"url": url, "nested": [{"token": ACME_TOKEN}], "n": 3}
    line = formatter.format(record)
    assert "Q-SECRET" not in line and "api_key" not in line
    assert ACME_TOKEN not in line and ACME_TOKEN.split(".")[1] not in line
    assert "https://acme.amperity.com/api/x?<redacted>" in line
    assert "<redacted JWT>" in line


def test_the_direct_access_line_is_what_the_json_formatter_writes() -> None:
    """The access log skips LogRecord when the process logs JSON (the hottest log path); its
    line must be the formatter's, field for field, and scrub what a client sent."""
    from proxy.observe import logs as logs_module

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    token = make_token("acme")
    fields = {"request_id": "rid-1", "path": f"/acme/{token}", "status": 200, "retried": False}
    try:
        logs_module.setup_logging("json", "INFO", stream)
        assert logs_module.direct_json(
            "amperity_proxy.access", f"GET /acme/{token} 200", fields, ("path",)
        )
        logging.getLogger("amperity_proxy.access").info(
            "GET /acme/%s 200", token, extra={"fields": fields}
        )
        logs_module.flush_logs()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logs_module._DIRECT.clear()
    direct, formatted = (json.loads(line) for line in stream.getvalue().splitlines())
    direct.pop("time"), formatted.pop("time")
    assert direct == formatted
    assert token not in stream.getvalue() and direct["path"] == "/acme/<redacted JWT>"
