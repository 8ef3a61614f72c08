"""Config bombs: a tiny YAML file whose aliases expand to millions of values, or a huge file,
is refused at once with a clear message instead of taking minutes and a gigabyte."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config
from tests.hostile.conftest import LEDGER
from tests.support.process import run_cli

ROOT = Path(__file__).resolve().parents[2]

# 7 levels of 9 aliases: 9**7 (4.8 million) strings once every alias is expanded.
BOMB = "\n".join(
    [
        'a: &a ["${HOME}", "x", "x", "x", "x", "x", "x", "x", "x"]',
        *(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
            for i in range(6)
        ),
        "routes: [{prefix: /a, tenant: a, token: {env: T}, paths: *g}]",
    ]
)


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    # the fix answers in well under a second; the bug takes minutes
    return run_cli("check-config", "--config", str(path), timeout=30)


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(BOMB) < 600
    (tmp_path / "bomb.yaml").write_text(BOMB)
    result = _check_config(tmp_path / "bomb.yaml")
    LEDGER.tried("config bombs")
    assert result.returncode == 2  # the config error exit code
    assert "expands to more than 100000 values" in result.stdout + result.stderr
    assert "aliases" in result.stdout + result.stderr


def test_a_config_file_over_1_mib_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("routes: []\n" + "# padding\n" * 110_000)
    assert big.stat().st_size > 1024 * 1024
    with pytest.raises(ConfigError) as info:
        load_config(big)
    LEDGER.tried("config bombs")
    assert info.value.errors == [
        "the config file is larger than 1 MiB (1048576 bytes); a proxy config is a few KiB: "
        "check that --config names the right file"
    ]


def test_a_large_but_honest_config_still_loads() -> None:
    route = {"prefix": "/a", "tenant": "a", "token": {"env": "T"}}
    routes = [
        {**route, "prefix": f"/r{i}", "paths": [f"/p{j}" for j in range(20)]} for i in range(500)
    ]
    config = parse_config({"routes": routes}, env={})
    assert len(config.routes) == 500
