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

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "proxy"


def graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))
    return grimp.build_graph(PACKAGE, cache_dir=None)


def module_files() -> list[Path]:
    return sorted(p for p in (ROOT / PACKAGE).rglob("*.py"))


def layers(g: grimp.ImportGraph) -> int:
    """The longest chain of imports between modules (packages' `__init__` re-exports and the
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

    return max(walk(m, frozenset()) for m in sorted(modules))


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


async def _trace_one_get() -> list[str]:
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
    package = str(ROOT / PACKAGE)

    def profile(frame: object, event: str, arg: object) -> None:
        filename = frame.f_code.co_filename  # type: ignore[attr-defined]
        if (
            filename.startswith(package)
            and "fake_amperity" not in filename
            and "/testing/" not in filename
        ):
            seen.add(str(Path(filename).relative_to(ROOT)))

    sys.setprofile(profile)
    try:
        await (await client.session.get(url)).read()
    finally:
        sys.setprofile(None)
    await client.close()
    await server.cleanup()
    await app.cleanup()
    await runner.cleanup()
    return sorted(seen)


def request_modules() -> list[str]:
    """The package's modules whose code runs while one GET goes through the proxy (traced in
    process against the bundled fake; the fake and the client are not counted)."""
    return asyncio.run(_trace_one_get())


def main() -> None:
    g = graph()
    modules = [m for m in g.modules]
    print(f"modules: {len(modules)}")
    print(f"import arrows (between the package's modules): {arrows(g)}")
    print(f"import layers (longest chain): {layers(g)}")
    print("longest functions:")
    for lines, name in functions():
        print(f"  {lines:4d}  {name}")
    traced = request_modules()
    print(f"modules one GET runs code in: {len(traced)} ({', '.join(traced)})")


if __name__ == "__main__":
    main()
