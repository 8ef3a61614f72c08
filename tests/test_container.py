"""The image, proven without a container engine: hadolint, the Dockerfile's promises, the lock,
and the image's own ENTRYPOINT + CMD run as the image's user from a read-only package copy."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from proxy import __version__
from proxy.testing import make_token

ROOT = Path(__file__).resolve().parent.parent
IMAGE_CONFIG = "/etc/amperity-proxy/config.yaml"
IMAGE_USER = 65532


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    structure: list[dict[str, Any]] = parser.structure
    froms = [n for n, i in enumerate(structure) if i["instruction"] == "FROM"]
    return structure[froms[-1] :]


def imported_from(env: dict[str, str]) -> str:
    """Where the image's interpreter would import `proxy` from."""
    which = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.__file__)"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        **_demote(),
    )
    return str(which.stdout).strip()


def listing(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python(dockerfile: DockerfileParser) -> None:
    froms = instructions(dockerfile, "FROM")
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    [arg] = [a for a in instructions(dockerfile, "ARG") if a.startswith("PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    match = re.fullmatch(r"python:3\.(\d+)\.(\d+)-slim(-\w+)?", image)
    assert match, f"not a pinned slim Python image: {image}"
    assert int(match.group(1)) >= 12


def test_runtime_stage_promises(dockerfile: DockerfileParser) -> None:
    stage = final_stage(dockerfile)
    values = {i["instruction"]: i["value"] for i in stage}
    assert values["USER"] == f"{IMAGE_USER}:{IMAGE_USER}"
    assert json.loads(values["ENTRYPOINT"]) == ["amperity-proxy"]  # exec form
    assert json.loads(values["CMD"]) == ["run"]  # a mounted IMAGE_CONFIG, or the variables
    assert "HEALTHCHECK" not in [i["instruction"] for i in dockerfile.structure]
    # the runtime stage copies the built venv; its one RUN removes the base image's pip
    assert [i["value"] for i in stage if i["instruction"] == "RUN"] == [
        "python -m pip uninstall --yes pip setuptools"
    ]
    assert values["COPY"] == "--from=build /venv /venv"
    env = dict(
        re.findall(r"(\w+)=(\S+)", " ".join(i["value"] for i in stage if i["instruction"] == "ENV"))
    )
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    labels = dockerfile.labels
    for key in ("title", "description", "licenses", "version"):
        assert labels[f"org.opencontainers.image.{key}"]
    assert labels["org.opencontainers.image.version"] == __version__


def test_build_stage_installs_only_from_the_hashed_lock(dockerfile: DockerfileParser) -> None:
    runs = " ".join(instructions(dockerfile, "RUN"))
    assert "--require-hashes --no-deps -r requirements.lock" in runs
    assert "pip --python /venv/bin/python install --no-deps ." in runs  # nothing unpinned
    assert "compileall" in runs  # bytecode at build time; nothing written at run time


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text()
    options = [line for line in text.splitlines() if line.startswith("--")]
    assert options == []  # no machine-local index or find-links lines
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\$", text, flags=re.MULTILINE))
    for name in ("aiohttp", "pyjwt", "pyyaml", "prometheus-client", "yarl", "multidict"):
        assert name in pinned, name
    blocks = re.split(r"\n(?=[a-z0-9-]+==)", text.split("\n", 6)[-1])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    import aiohttp as installed

    assert pinned["aiohttp"] == installed.__version__


@pytest.fixture
def image_root(tmp_path: Path) -> Iterator[Path]:
    """The package installed the way the Dockerfile installs it (`pip install --no-deps .`, so
    packaging mistakes show), made read-only, as the image's /venv would hold it."""
    site = tmp_path / "site"
    build = tmp_path / "src"  # exactly what the Dockerfile COPYs into its build stage
    build.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, build / name)
    shutil.copytree(ROOT / "proxy", build / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(build),
        ],
        check=True,
        capture_output=True,
    )
    for path in [site, *site.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(
            mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
            | stat.S_IRGRP
            | stat.S_IROTH
            | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else 0)
        )
    tmp_path.chmod(0o755)
    yield site
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@functools.cache
def _demote() -> dict[str, Any]:
    """Run as the image's numeric user when the tests run as root (as in CI) and that user can
    execute this interpreter. (A pyenv interpreter under a private /root can't be run by another
    user; then the run keeps the current user, and the read-only package and missing home still
    prove that nothing is written.)"""
    if os.geteuid() != 0:
        return {}
    as_image_user: dict[str, Any] = {"user": IMAGE_USER, "group": IMAGE_USER, "extra_groups": []}
    try:
        subprocess.run(
            [sys.executable, "-c", "pass"], check=True, capture_output=True, **as_image_user
        )
    except (PermissionError, subprocess.CalledProcessError):
        return {}
    return as_image_user


async def test_entrypoint_runs_read_only_as_the_image_user(
    dockerfile: DockerfileParser, image_root: Path, tmp_path: Path
) -> None:
    values = {i["instruction"]: i["value"] for i in final_stage(dockerfile)}
    entrypoint, cmd = json.loads(values["ENTRYPOINT"]), json.loads(values["CMD"])
    etc = Path(tempfile.mkdtemp(dir=tmp_path))
    config = etc / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 0},
                "admin": {"port": 0},
                "routes": [
                    {"prefix": "/acme", "tenant": "acme", "token": {"file": str(etc / "token")}}
                ],
            }
        )
    )
    (etc / "token").write_text(make_token("acme"))
    for path in (etc, config, etc / "token"):
        path.chmod(0o755 if path.is_dir() else 0o444)
    argv = [
        str(Path(sys.executable).parent / entrypoint[0]),
        *cmd,
        "--log-format",
        "json",
    ]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(image_root),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/nonexistent",
        "AMPERITY_PROXY_CONFIG": str(config),  # IMAGE_CONFIG's stand-in (no /etc here)
    }
    assert imported_from(env) == str(image_root / "proxy" / "__init__.py")
    # Every module of the source tree made it into the install (subpackages included).
    source = {p.relative_to(ROOT) for p in (ROOT / "proxy").rglob("*.py")}
    installed = {p.relative_to(image_root) for p in (image_root / "proxy").rglob("*.py")}
    assert source <= installed, f"missing from the install: {sorted(map(str, source - installed))}"
    before = listing(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd="/", stderr=asyncio.subprocess.PIPE, **_demote()
    )
    try:
        assert proc.stderr is not None
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "the entrypoint exited before listening"
            record = json.loads(line)
            if "admin" in record and "listen" in record:
                break
        admin = record["admin"][0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{admin}/readyz") as response:
                assert response.status == 200
                assert (await response.json())["routes"][0]["state"] == "ok"
            async with session.get(f"http://{admin}/metrics") as response:
                assert response.status == 200
                assert "amperity_proxy_token_valid" in await response.text()
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert listing(tmp_path) == before  # nothing was written
