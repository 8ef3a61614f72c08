"""`make bench-tls-upload REVS="A B"`: upload throughput through the TLS listener (`listen.tls`)
at several revisions, side by side, rounds alternating: curl PUTs 512 MiB over HTTPS to the
proxy, which streams it to a TLS sink upstream on loopback. The listener reads 16 KiB at a time
while idle and more while a body streams; this shows what that costs an upload.

    python bench/tls_upload.py [--rounds N] REV [REV ...]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import export  # beside this file

from proxy.testing import make_tls, make_token

SIZE_MIB = 512
SERVER_PYTHON = str(Path(os.environ.get("BENCH_PYTHON", sys.executable)).absolute())


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that reads each request's body (Content-Length or chunked) and says 200."""
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            if b"transfer-encoding: chunked" in head:
                while size := int((await reader.readline()).split(b";")[0], 16):
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                while length:
                    length -= len(await reader.read(min(length, 1 << 20)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _proxy(
    work: Path, name: str, source: Path, upstream: int
) -> tuple[asyncio.subprocess.Process, int]:
    import yaml

    listen = {"cert_file": str(work / "tls.crt"), "key_file": str(work / "tls.key")}
    route = {"prefix": "/acme", "tenant": "acme", "base_url": f"https://localhost:{upstream}/api"}
    config = {
        "listen": {"port": 0, "tls": listen},
        "admin": {"port": 0},
        "routes": [{**route, "ca_file": str(work / "ca.pem"), "token": {"env": "BENCH_TOKEN"}}],
    }
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "BENCH_TOKEN": make_token("acme", ttl=7200), "PYTHONPATH": str(source)}
    proc = await asyncio.create_subprocess_exec(
        SERVER_PYTHON, "-m", "proxy", "run", "--config", str(work / f"{name}.yaml"),
        "--log-format", "json", env=env, cwd=work, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    while b'"listen"' not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
        assert line, "the proxy exited"
    port = int(line.split(b'"listen": ["')[1].split(b'"')[0].rsplit(b":", 1)[1])
    return proc, port


def _upload(work: Path, port: int) -> float:
    start = time.monotonic()
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(work / "ca.pem"),
         "-T", str(work / "blob"), "-X", "PUT", f"https://localhost:{port}/acme/upload"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.stdout == "200", result
    return SIZE_MIB / (time.monotonic() - start)


async def main(argv: list[str]) -> None:
    rounds = 3
    if argv[:1] == ["--rounds"]:
        rounds, argv = int(argv[1]), argv[2:]
    if not argv:
        sys.exit('usage: make bench-tls-upload REVS="REV [REV ...]"')
    tls = make_tls("localhost")
    sink = await asyncio.start_server(_sink, "127.0.0.1", 0, ssl=tls.server)
    upstream = int(sink.sockets[0].getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ca.pem").write_bytes(tls.ca_pem)
        leaf = tls.ca.issue_cert("localhost")
        (work / "tls.key").write_bytes(leaf.private_key_pem.bytes())
        (work / "tls.crt").write_bytes(leaf.cert_chain_pems[0].bytes())
        with (work / "blob").open("wb") as blob:
            blob.truncate(SIZE_MIB * 1024 * 1024)
        contenders: list[tuple[str, str, asyncio.subprocess.Process, int, list[float]]] = []
        for i, revision in enumerate(argv):
            short, subject = export(revision, work / f"rev{i}")
            proc, port = await _proxy(work, f"rev{i}", work / f"rev{i}", upstream)
            contenders.append((short, subject, proc, port, []))
        for _ in range(rounds + 1):  # the first round warms up and is not counted
            for _short, _subject, _proc, port, rates in contenders:
                rates.append(await asyncio.to_thread(_upload, work, port))
        for _short, _subject, proc, _port, _rates in contenders:
            proc.terminate()
            await proc.wait()
    sink.close()
    print(f"{SIZE_MIB} MiB PUTs through the TLS listener, {rounds} rounds after a warm-up\n")
    print("| revision | MiB/s, median [range] |\n|---|---|")
    for short, subject, _proc, _port, rates in contenders:
        counted = rates[1:]
        print(
            f"| {short} {subject[:60]} | {statistics.median(counted):.0f} "
            f"[{min(counted):.0f}-{max(counted):.0f}] |"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
