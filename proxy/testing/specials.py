"""The fake Amperity's special paths (`<base>/_fake/<kind>/<arg>`), as a table: kind -> answer.
What each does is listed in `proxy.testing.fake`'s docstring."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.testing.patterns import GZIP_JSON, pattern

if TYPE_CHECKING:
    from proxy.testing import FakeAmperity


async def _bytes(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/bytes`"""
    return await _stream(fake, request, int(arg))


async def _gzip(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/gzip`"""
    payload = gzip.compress(GZIP_JSON, mtime=0)
    return web.Response(
        body=payload,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def _redirect(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/redirect`"""
    return web.Response(status=302, headers={"Location": request.query["to"]})


async def _cookies(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/cookies`"""
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    return response


async def _status(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/status`"""
    if "message" in request.query:  # Amperity's envelope with that message
        body = {"status": int(arg), "message": request.query["message"]}
        return web.json_response(body, status=int(arg))
    return web.Response(status=int(arg))


async def _hold(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/hold`"""
    fake.held.set()
    await fake.release.wait()
    path = request.raw_path.split("?", 1)[0]
    fake.holds[path] += 1
    first = fake.holds[path] == 1
    status = int(request.query.get("status", 200)) if first else 200
    return web.json_response({"held": True}, status=status)


async def _cut_special(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/cut`"""
    return await _cut(fake, request, int(arg))


async def _stall(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/stall`: N bytes of a 2N-byte body, then silence until `release`"""
    stalled = web.StreamResponse()
    stalled.content_length = 2 * int(arg)
    await stalled.prepare(request)
    await stalled.write(b"s" * int(arg))
    await fake.release.wait()
    return stalled


async def _reset(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/reset`: headers, then a TCP reset"""
    reset = web.StreamResponse()
    reset.content_length = 1000
    await reset.prepare(request)
    await reset.drain()
    assert request.transport is not None
    request.transport.abort()
    return reset


async def _flaky(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/flaky`: the first N answers carry `status` (and `after` as Retry-After)"""
    path = request.raw_path.split("?", 1)[0]
    fake.flaky[path] += 1
    if fake.flaky[path] <= int(arg):
        headers = {"Retry-After": request.query["after"]} if "after" in request.query else {}
        status = int(request.query.get("status", "429"))
        return web.json_response({"status": status}, status=status, headers=headers)
    return web.json_response({"ok": True})


async def _deprecated(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/deprecated`"""
    return web.json_response(
        {"old": True},
        headers={"Deprecation": "@1767225600", "Sunset": "Wed, 01 Jul 2026 00:00:00 GMT"},
    )


async def _hop(fake: FakeAmperity, request: web.Request, arg: str) -> web.StreamResponse:
    """`_fake/hop`"""
    return web.Response(
        text="hop",
        headers={
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Credentials": "true",
            "Connection": "X-Hop-Secret",
            "X-Hop-Secret": "1",
            "Keep-Alive": "timeout=5",
            "X-End": "1",
        },
    )


async def _stream(fake: FakeAmperity, request: web.Request, n: int) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = n
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    try:
        if request.method != "HEAD":
            for block in pattern(n):
                await response.write(block)
                fake.streamed += len(block)
        await response.write_eof()
    except ConnectionError:  # the client (the proxy) hung up: nothing to report
        pass
    return response


async def _cut(fake: FakeAmperity, request: web.Request, n: int) -> web.StreamResponse:
    response = web.StreamResponse()
    if "chunked" not in request.query:
        response.content_length = 2 * n
    await response.prepare(request)
    for block in pattern(n):
        await response.write(block)
    assert request.transport is not None
    request.transport.close()
    return response


Special = Callable[["FakeAmperity", web.Request, str], Awaitable[web.StreamResponse]]
SPECIAL_PATHS: dict[str, Special] = {
    "bytes": _bytes,
    "gzip": _gzip,
    "redirect": _redirect,
    "cookies": _cookies,
    "status": _status,
    "hold": _hold,
    "cut": _cut_special,
    "stall": _stall,
    "reset": _reset,
    "flaky": _flaky,
    "deprecated": _deprecated,
    "hop": _hop,
}
