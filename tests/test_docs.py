"""The README and docs are true to the repository: links resolve, named files exist, and the
legacy-tool snippet works when pasted, against the bundled fake Amperity."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.testing import FakeAmperity, FakeTLS, make_token, start_fake
from tests.conftest import require
from tests.support.net import port_free

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "bench").glob("*.md")),
]
_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
_CODE_RE = re.compile(r"`([^`\s]+)`")
_FILE_SUFFIX_RE = re.compile(r"\.(md|py|ya?ml|toml|lock|json|png)$")


def _tracked() -> list[str]:
    git = shutil.which("git") or "git"
    listed = subprocess.run(
        [git, "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:  # not a git checkout (an sdist): what is on disk
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return listed.stdout.split()


def dangling(doc: Path, files: list[str]) -> list[str]:
    """Relative links that resolve to nothing, and repository files named in code formatting
    (`proxy/refusals.py`, `ARCHITECTURE.md`) that don't exist."""
    top = {f.split("/")[0] for f in files}
    names = {Path(f).name for f in files}
    text = doc.read_text()
    problems = []
    for match in _LINK_RE.finditer(text):
        target = match.group(1)
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            problems.append(f"link ({target})")
    for match in _CODE_RE.finditer(text):
        named = re.split(r"::|:\d", match.group(1).rstrip(",."))[0]
        if not re.fullmatch(r"[\w.\-/]+", named):
            continue
        if "/" in named and named.split("/")[0] in top:  # a path in this repository
            if not (ROOT / named).exists():
                problems.append(f"file `{named}`")
        elif "/" not in named and _FILE_SUFFIX_RE.search(named) and named not in names:
            problems.append(f"file `{named}`")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_named_file_exists(doc: Path) -> None:
    assert dangling(doc, _tracked()) == []


def test_the_check_catches_a_missing_file_and_a_broken_link(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(
        "See `ARCHITECTURE.md`, `proxy/nowhere.py` and [the guide](docs/missing.md); "
        "`proxy/refusals.py` and [metrics](metrics.md) are fine.\n"
    )
    (tmp_path / "metrics.md").write_text("x")
    assert dangling(doc, _tracked()) == [
        "link (docs/missing.md)",
        "file `ARCHITECTURE.md`",
        "file `proxy/nowhere.py`",
    ]


def snippet(heading: str) -> str:
    """The first ```sh block after `heading` in the README, as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


async def _gone(group: int, deadline: float = 30) -> None:
    """Wait until every process of `group` has exited (the proxy drains, then exits), so the
    ports are free for the next test."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    os.killpg(group, signal.SIGKILL)


async def test_the_legacy_tool_snippet_works_as_written(tls: FakeTLS, tmp_path: Path) -> None:
    """`make run &`, `make ready`, `curl` pasted into a shell: curl gets the upstream's answer,
    and the fake received the request with the token. Before `make ready` existed, curl ran
    before the proxy listened and printed nothing."""
    require(shutil.which("curl"), "curl", "apt-get install curl")
    require(shutil.which("make"), "make", "apt-get install make")
    for port in (8080, 9090):  # config.example.yaml's listeners, as the README says
        assert port_free(port), f"port {port} is taken: the README's snippet needs it free"
    fake = FakeAmperity()
    runner, port = await start_fake(fake, tls.server)
    token = make_token("acme", ttl=86400)
    (tmp_path / "amperity-token").write_text(token)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    (tmp_path / "stamp").touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMPERITY_", "MAKE"))}
    env.update(
        HOME=str(tmp_path),  # ~/amperity-token
        AMPERITY_BASE_URL=f"https://localhost:{port}/api",
        AMPERITY_CA_FILE=str(tmp_path / "ca.pem"),
        # `make run` uses this test's environment instead of installing .venv-run
        RUNVENV=sys.prefix,
        RUNSTAMP=str(tmp_path / "stamp"),
        PYTHON=sys.executable,
    )
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        shell = await asyncio.create_subprocess_exec(
            "bash", "-e", "-c", snippet("## Pointing a legacy tool at it"),
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            code = await asyncio.wait_for(shell.wait(), 120)
        finally:
            os.killpg(shell.pid, signal.SIGTERM)  # the `make run &` left behind
            await _gone(shell.pid)
            await runner.cleanup()
    printed = out.read_text()
    assert code == 0, printed
    [received] = [r for r in fake.requests if r.raw_path == "/api/segments?limit=2"]
    assert received.status == 200
    headers = dict(received.headers)
    assert headers["Authorization"] == f"Bearer {token}"
    assert headers["Amperity-Tenant"] == "acme"
    assert '"path": "/api/segments?limit=2"' in printed  # curl printed the fake's reflection
