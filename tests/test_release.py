"""A package someone can release (issue 19): the built wheel installs into a clean virtual
environment with the runtime lock plus `[testing]` (no dev extras) and works there; the version
is written once; the license is where a user looks; the runtime image carries no pip."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from proxy import __version__
from tests.support.process import clean_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from this tree, in a fresh venv: runtime lock, wheel, `[testing]`."""
    work = tmp_path_factory.mktemp("release")
    source = work / "source"  # a copy: a stale build/ in the checkout can't leak into the wheel
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "proxy", source / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(work), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    [wheel] = work.glob("amperity_auth_proxy-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install"]
    quiet = {"check": True, "capture_output": True, "timeout": 600}
    lock = str(ROOT / "requirements.lock")
    subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", lock], **quiet)  # type: ignore[call-overload]
    subprocess.run([*pip, f"{wheel}[testing]"], **quiet)  # type: ignore[call-overload]
    return env_dir / "bin"


def _run(bin_dir: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",  # nothing of the checkout on the path
        env=clean_env(env),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_wheel_runs_in_a_clean_environment(installed: Path) -> None:
    assert _run(installed, "amperity-proxy", "--version").strip() == f"amperity-proxy {__version__}"
    env = {"AMPERITY_TENANT": "acme", "AMPERITY_TOKEN": "x"}
    checked = _run(
        installed,
        "amperity-proxy",
        "check-config",
        "--config",
        str(ROOT / "config.example.yaml"),
        env=env,
    )
    assert "ok (1 route(s))" in checked
    demo = _run(installed, "python", "-m", "proxy.cli.demo")  # the fake needs [testing]
    assert "Authorization: Bearer" in demo and "200" in demo
    where = _run(installed, "python", "-c", "import proxy; print(proxy.__file__)")
    assert "site-packages" in where  # the wheel, not this checkout
    modules = _run(
        installed,
        "python",
        "-c",
        "import proxy, pkgutil; print(sorted(m.name for m in pkgutil.walk_packages(proxy.__path__, 'proxy.')))",
    )
    source = sorted(
        "proxy." + ".".join(p.relative_to(ROOT / "proxy").with_suffix("").parts)
        for p in (ROOT / "proxy").rglob("*.py")
        if p.name != "__init__.py"
    )
    assert set(source) <= set(ast.literal_eval(modules))  # every module made it in
    dev_tools = _run(installed, "python", "-m", "pip", "list", "--format=freeze")
    assert not re.search(r"^(pytest|mypy|ruff)==", dev_tools, re.M)  # no dev extras


def test_the_version_is_written_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dynamic"] == ["version"] and "version" not in project
    dockerfile = (ROOT / "Dockerfile").read_text()
    # the image label takes the version from the build (make docker-build passes it)
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    assert f"ARG VERSION={__version__}" in dockerfile
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_license_is_declared_everywhere() -> None:
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (ROOT / "Dockerfile").read_text()


def test_the_runtime_image_has_no_pip() -> None:
    """Without a container engine the image can't be built here; its recipe is checked: the
    venv is made without pip and filled from outside, and the runtime stage removes the base
    image's own pip and setuptools."""
    text = (ROOT / "Dockerfile").read_text()
    build, runtime = text.split("# --- runtime stage", 1)
    assert "python -m venv --without-pip /venv" in build
    assert "pip --python /venv/bin/python install" in build
    assert re.search(r"RUN python -m pip uninstall --yes pip setuptools", runtime)


def test_the_sbom_lists_what_the_image_installs(tmp_path: Path) -> None:
    """`make sbom`'s command: a CycloneDX document naming every package of the runtime lock."""
    out = tmp_path / "sbom.json"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "cyclonedx-py"),
            "requirements",
            "--pyproject",
            str(ROOT / "pyproject.toml"),
            "--mc-type",
            "application",
            "--output-reproducible",
            "--of",
            "JSON",
            "-o",
            str(out),
            str(ROOT / "requirements.lock"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sbom = json.loads(out.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "amperity-auth-proxy"
    locked = set(re.findall(r"^([a-z0-9._-]+)==", (ROOT / "requirements.lock").read_text(), re.M))
    assert {c["name"].lower() for c in sbom["components"]} == locked
    assert "cyclonedx-py requirements" in (ROOT / "Makefile").read_text()  # the same command
