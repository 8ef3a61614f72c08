"""Figures on the package's shape, for the README's "Design" and closing notes: module count,
import arrows between the package's modules, import layers (the longest chain of imports),
the longest functions, and how many modules one proxied request runs code in.

    python tools/architecture.py            # from the repository root, in .venv
"""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path
from typing import Any

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "proxy"


def graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))
    return grimp.build_graph(PACKAGE, cache_dir=None)


def module_files() -> list[Path]:
    return sorted(p for p in (ROOT / PACKAGE).rglob("*.py"))


def layers(g: grimp.ImportGraph) -> int:
    return max(ranks(g).values())


def ranks(g: grimp.ImportGraph) -> dict[str, int]:
    """Each module's layer: 1 + the longest chain of imports between modules (packages' `__init__` re-exports and the
    deferred imports that break cycles at run time are not counted twice: an arrow back to a
    module already on the chain is ignored)."""
    packages = {m for m in g.modules if any(o.startswith(m + ".") for o in g.modules)}
    modules = set(g.modules) - packages
    depth: dict[str, int] = {}

    def walk(module: str, path: frozenset[str]) -> int:
        if module in depth:
            return depth[module]
        below = [
            m
            for m in g.find_modules_directly_imported_by(module)
            if m in modules and m not in path and m != module
        ]
        depth[module] = 1 + max((walk(m, path | {module}) for m in below), default=0)
        return depth[module]

    for m in sorted(modules):
        walk(m, frozenset())
    return depth


def arrows(g: grimp.ImportGraph) -> int:
    return sum(len(g.find_modules_directly_imported_by(m)) for m in g.modules)


def functions(limit: int = 5) -> list[tuple[int, str]]:
    """The longest functions (lines, `module:name`), nested ones included."""
    found = []
    for path in module_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                name = f"{path.relative_to(ROOT)}:{node.name}"
                found.append((node.end_lineno - node.lineno + 1, name))
    return sorted(found, reverse=True)[:limit]


async def _trace_one_get() -> tuple[list[str], list[tuple[str, str]]]:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from proxy.app import create_app
    from proxy.config import parse_config
    from proxy.fake_amperity import FakeAmperity, FakeResolver, make_tls, make_token, start_fake

    tls = make_tls("acme.amperity.com")
    runner, port = await start_fake(FakeAmperity(), tls.server)
    route = {
        "prefix": "/acme",
        "tenant": "acme",
        "base_url": f"https://acme.amperity.com:{port}/api",
        "token": {"env": "T"},
    }
    app = create_app(
        parse_config({"routes": [route]}, env={}),
        upstream_ssl=tls.client,
        resolver=FakeResolver({"acme.amperity.com": "127.0.0.1"}),
        env={"T": make_token("acme", ttl=30 * 86400)},
    )
    await app.startup()
    client = TestClient(TestServer(web.Application()))  # a client only
    await client.start_server()
    server = web.ServerRunner(app.server())
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    proxy_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{proxy_port}/acme/segments"
    await (await client.session.get(url)).read()  # warm: connections, caches
    seen: set[str] = set()
    calls: list[tuple[str, str]] = []
    package = str(ROOT / PACKAGE)

    def ours(filename: str) -> bool:
        return (
            filename.startswith(package)
            and "fake_amperity" not in filename
            and "/testing/" not in filename
        )

    def profile(frame: Any, event: str, arg: object) -> None:
        filename = frame.f_code.co_filename
        if ours(filename):
            seen.add(str(Path(filename).relative_to(ROOT)))
            caller = frame.f_back
            if event == "call" and caller is not None and ours(caller.f_code.co_filename):
                calls.append((caller.f_code.co_filename, filename))

    sys.setprofile(profile)
    try:
        await (await client.session.get(url)).read()
    finally:
        sys.setprofile(None)
    await client.close()
    await server.cleanup()
    await app.cleanup()
    await runner.cleanup()
    return sorted(seen), calls


def module_name(filename: str) -> str:
    dotted = ".".join(Path(filename).relative_to(ROOT).with_suffix("").parts)
    return dotted.removesuffix(".__init__")


def request_path() -> tuple[list[str], list[tuple[str, str]]]:
    """The package's modules whose code runs while one GET goes through the proxy (traced in
    process against the bundled fake; the fake and the client are not counted), and each call
    between two of them as (caller module, callee module)."""
    seen, calls = asyncio.run(_trace_one_get())
    return seen, [(module_name(a), module_name(b)) for a, b in calls if a != b]


def upward(g: grimp.ImportGraph, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The calls into a module of a higher layer than the caller's (a callback, a closure or a
    deferred import reaching back up), as distinct (caller, callee) pairs."""
    rank = ranks(g)
    return sorted({(a, b) for a, b in calls if rank.get(b, 0) > rank.get(a, 0)})


def main() -> None:
    g = graph()
    modules = [m for m in g.modules]
    print(f"modules: {len(modules)}")
    print(f"import arrows (between the package's modules): {arrows(g)}")
    print(f"import layers (longest chain): {layers(g)}")
    print("longest functions:")
    for lines, name in functions():
        print(f"  {lines:4d}  {name}")
    traced, calls = request_path()
    print(f"modules one GET runs code in: {len(traced)} ({', '.join(traced)})")
    between = [c for c in calls if c[0] != c[1]]
    up = upward(g, between)
    print(f"calls between modules during that GET: {len(between)}")
    print(f"calls back up the layers (distinct caller -> callee): {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")


if __name__ == "__main__":
    main()
