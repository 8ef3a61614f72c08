"""Config files as YAML writes them: the keys the README documents load as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config

ROUTE = "routes: [{prefix: /a, tenant: acme, token: {env: T}}]\n"


def test_retry_on_loads_as_the_readme_writes_it(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML's default) reads a bare `on` as the boolean true, so the README's
    `retry: {on: [429, 503]}` was refused as "defaults.retry.True: unknown key"."""
    path = tmp_path / "c.yaml"
    path.write_text("defaults:\n  retry:\n    on: [429]\n    attempts: 2\n" + ROUTE)
    retry = load_config(path, env={}).routes[0].retry
    assert retry is not None and retry.on == frozenset({429})
    path.write_text("defaults: {retry: {on: [503], attempts: 2}}\n" + ROUTE)
    retry = load_config(path, env={}).routes[0].retry
    assert retry is not None and retry.on == frozenset({503})


def test_true_and_false_are_still_booleans_and_yes_is_not(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("admin: {enable_reload: true}\n" + ROUTE)
    assert load_config(path, env={}).enable_reload is True
    path.write_text("admin: {enable_reload: yes}\n" + ROUTE)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "admin.enable_reload" in str(info.value)
