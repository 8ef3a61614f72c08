"""The package's shape, checked rather than hoped for: module and function sizes, the import
contract (import-linter, also run by `make test`), and a README map that names every module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "proxy"
MAX_MODULE_LINES = 400  # ARCHITECTURE.md: "150-400 lines is normal (h11, httpx), 600 a ceiling"
MAX_FUNCTION_LINES = 50
# Any module or function allowed past the limits, with the reason. Keep this the only place.
EXCEPTIONS: dict[str, str] = {}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        name(p): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES and name(p) not in EXCEPTIONS
    }
    assert long == {}, f"split these modules (or list them in EXCEPTIONS, with why): {long}"


def test_no_function_is_longer_than_the_limit() -> None:
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                where = f"{name(path)}:{node.name}"
                if lines > MAX_FUNCTION_LINES and where not in EXCEPTIONS:
                    long[where] = lines
    assert long == {}, f"split these functions (or list them in EXCEPTIONS, with why): {long}"


def test_every_exception_is_still_needed() -> None:
    present = {name(p) for p in modules()}
    for where in EXCEPTIONS:
        assert where.partition(":")[0] in present, f"{where} is gone: remove its exception"


def test_the_readme_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    design = readme[readme.index("## Design") :]
    missing = [
        name(p)
        for p in modules()
        if p.name not in ("__init__.py", "__main__.py")
        and f"`{p.relative_to(PACKAGE).as_posix()}`" not in design
    ]
    assert missing == [], f"add these to the README's Design map: {missing}"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(tool), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contract_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "imports", "arrow"),
    [
        # the upstream path never calls back up into the request pipeline
        (
            "upstream/plan.py",
            "proxy.request.pipeline",
            "proxy.upstream is not allowed to import proxy.request",
        ),
        # request and admin are siblings
        (
            "admin/page.py",
            "proxy.request.admission",
            "proxy.admin is not allowed to import proxy.request",
        ),
        # nothing imports the command line
        ("app/runtime.py", "proxy.cli.main", "proxy.app is not allowed to import proxy.cli"),
        # the fake upstream is for the demo and tests only
        (
            "upstream/relay.py",
            "proxy.testing",
            "proxy.upstream is not allowed to import proxy.testing",
        ),
    ],
)
def test_a_broken_arrow_fails_with_a_message_that_names_it(
    tmp_path: Path, module: str, imports: str, arrow: str
) -> None:
    shutil.copytree(PACKAGE, tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "proxy" / module
    target.write_text(target.read_text() + f"\nimport {imports}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert arrow in result.stdout, result.stdout
