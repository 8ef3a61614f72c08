"""Config files as YAML writes them: the keys the README documents load as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load_config
from proxy.config.files import LOADERS

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


TRICKY = """\
on: on
off: [yes, no, y, n, true, false, True, FALSE]
empty: ~
octal: 0o10
old_octal: 010
sixty: 1:30
big: 1_000
float: .5e3
date: 2026-01-01
anchor: &shared {k: [1, 2], "q": 'single'}
alias: *shared
merged: {<<: *shared, k: 3}
folded: >
  two
  lines
literal: |
  kept
    indented
"quoted ${VAR}": "tab\\tescape \\u00e9"
"""


@pytest.mark.parametrize(
    "document",
    [TRICKY, (Path(__file__).parent.parent / "config.example.yaml").read_text(), ROUTE],
    ids=["tricky", "config.example.yaml", "flow"],
)
def test_libyaml_and_the_pure_python_parser_read_a_document_alike(document: str) -> None:
    """The config is read with libyaml's parser (fast) and, for errors, PyYAML's own: both must
    build the same document, YAML 1.2 booleans included."""
    assert len(LOADERS) == 2, "PyYAML without libyaml: install PyYAML's binary wheel"
    pure, fast = (yaml.load(document, Loader=loader) for loader in LOADERS)  # noqa: S506
    assert pure == fast
    assert pure is not None
