"""Reading a config file: size cap, UTF-8, YAML (its errors translated, with position and fix),
then `parse_config`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.config.model import MAX_CONFIG_BYTES, Config, ConfigError
from proxy.config.parse import parse_config

_BOOL = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true and false. YAML 1.1 also reads
    on/off/yes/no/y/n as booleans, so the README's `retry: {on: [429, 503]}` arrived as the key
    True; with this loader `on` is the string it looks like, and `yes` is refused where a
    boolean is expected instead of silently meaning true."""


_FAST = getattr(yaml, "__with_libyaml__", False)
LOADERS: list[type[Any]] = [_Loader]  # pure-Python first; libyaml's, when present, last
if _FAST:

    class _FastLoader(yaml.CSafeLoader):
        """The same on libyaml's parser (in PyYAML's wheels): it reads a 1,000-route file
        about six times faster than the pure-Python one. Resolvers and constructors stay
        PyYAML's, so both read a document alike. Errors come from the pure-Python parser: its
        messages are the ones `yaml_problem` translates, so a file libyaml refuses is read
        again by it."""

    LOADERS.append(_FastLoader)

for _loader in LOADERS:
    _loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _loader.add_implicit_resolver(
        _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )


def load_yaml(text: str) -> Any:
    """A config document, as the proxy reads it (YAML 1.2 booleans)."""
    if _FAST:
        try:
            return yaml.load(text, Loader=_FastLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError:
            pass  # the pure-Python parser says what is wrong, in the words we translate
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and parse a YAML config file; file and YAML errors become a ConfigError too."""
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror or exc}"], source) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"the config file is larger than 1 MiB ({MAX_CONFIG_BYTES} bytes); a proxy "
                "config is a few KiB: check that --config names the right file"
            ],
            source,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["config file is not valid UTF-8"], source) from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, text)], source) from None
    return parse_config(raw, source, env)


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """PyYAML's error as `line L, column C: what is wrong (how to fix it)`. SECURITY: the
    offending line is never quoted (it may hold a token); only its position."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = str(getattr(exc, "problem", None) or "invalid YAML")
    line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
    if "'\\t'" in problem or ("\t" in line[: mark.column + 1] if mark else False):
        return f"{where}a tab; YAML forbids tabs for indentation: indent with spaces"
    if "${" in line and ("flow" in str(getattr(exc, "context", "")) or "'}'" in problem):
        return (
            f"{where}{problem}; inside a flow mapping {{...}} a value holding ${{...}} must be "
            'quoted: write {key: "${VAR}"}'
        )
    if "mapping values are not allowed" in problem:
        return f"{where}{problem} (a ': ' inside a value: quote the value)"
    if "found undefined alias" in problem or "found unhashable key" in problem:
        return f"{where}{problem}"
    return f"{where}{problem} (check the indentation and quoting around this position)"
