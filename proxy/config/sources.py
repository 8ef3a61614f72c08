"""Token source settings: the `TokenSource` dataclass and the parser for `token:` / `tokens:`.

A source is exactly one of `{env: NAME}`, `{file: PATH}`, `{value: TOKEN}`,
`{exec: {command: [...], timeout: 10, refresh_before: null, env: {...}, pass_env: [...]}}` or
`{client_credentials: {client_id: ..., client_secret: {env|file: ...}, token_url: ...}}`.
Pure: nothing is read or run here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from proxy.config.readers import (
    ENV_NAME_RE,
    Errors,
    join,
    mapping,
    positive,
    string,
    string_list,
    type_name,
)
from proxy.redaction import looks_like_jwt

TokenKind = Literal["env", "file", "value", "exec", "client_credentials"]
ALL_KINDS: tuple[str, ...] = ("env", "file", "value", "exec", "client_credentials")
SECRET_KINDS: tuple[str, ...] = ("env", "file")
DEFAULT_EXEC_TIMEOUT = 10.0


@dataclass(frozen=True)
class TokenSource:
    """Where a token comes from. Secrets (an inline value) never show in `repr`."""

    kind: TokenKind
    location: str = ""  # the variable name (env) or the path (file)
    value: str = field(default="", repr=False)  # SECURITY: inline token, kind == "value" only
    command: tuple[str, ...] = ()  # exec
    timeout: float = DEFAULT_EXEC_TIMEOUT  # exec
    refresh_before: float | None = None  # exec: seconds before exp; None = 10% of lifetime, >= 60
    # exec: the helper's environment beyond the base (PATH, HOME, LANG, LC_*, TZ). SECURITY: the
    # values may be secrets (a Vault token): never in repr, logs or errors.
    exec_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    pass_env: tuple[str, ...] = ()  # exec: names copied from the proxy's environment when set
    client_id: str = ""  # client_credentials
    client_secret: TokenSource | None = None  # client_credentials: env or file
    token_url: str | None = None  # client_credentials; None = <base_url>/v0/oauth2/token

    def describe(self) -> str:
        """Human description for logs, errors and metric labels; never includes a secret."""
        if self.kind == "env":
            return f"environment variable {self.location}"
        if self.kind == "file":
            return f"file {self.location}"
        if self.kind == "exec":
            return f"exec {self.command[0]}"
        if self.kind == "client_credentials":
            return f"client_credentials {self.client_id}"
        return "inline value"


def _exec_env(raw: object, path: str, errs: Errors) -> tuple[tuple[str, str], ...]:
    """`exec.env`: NAME -> value (a value may come from `${VAR}`); values are never echoed."""
    if not isinstance(raw, dict):
        errs.add(path, f"expected a mapping of NAME: value, got {type_name(raw)}")
        return ()
    pairs = []
    for name, value in raw.items():
        item = join(path, str(name))
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            errs.add(item, "not a valid environment variable name")
        elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
            errs.add(item, f"expected a string value, got {type_name(value)}")
        else:
            pairs.append((name, str(value)))
    return tuple(pairs)


def _pass_env(raw: object, path: str, errs: Errors) -> tuple[str, ...]:
    """`exec.pass_env`: names of the proxy's own variables the helper may see."""
    names = []
    for item_path, name in string_list(raw, path, errs):
        if not ENV_NAME_RE.fullmatch(name):
            errs.add(item_path, f"not a valid environment variable name: {errs.show(name)}")
        else:
            names.append(name)
    return tuple(names)


def _exec(raw: object, path: str, errs: Errors) -> TokenSource | None:
    m = mapping(raw, path, errs, ("command", "timeout", "refresh_before", "env", "pass_env"))
    if m is None:
        return None
    command = m.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(c, str) and c for c in command)
    ):
        got = type_name(command) if not isinstance(command, list) else "a list with non-strings"
        errs.add(
            join(path, "command"), f"expected a non-empty list of strings (no shell), got {got}"
        )
        return None
    timeout = DEFAULT_EXEC_TIMEOUT
    if "timeout" in m:
        timeout = positive(m["timeout"], join(path, "timeout"), errs) or timeout
    refresh_before = None
    if m.get("refresh_before") is not None:
        refresh_before = positive(m["refresh_before"], join(path, "refresh_before"), errs)
    exec_env = _exec_env(m["env"], join(path, "env"), errs) if m.get("env") is not None else ()
    pass_env = (
        _pass_env(m["pass_env"], join(path, "pass_env"), errs)
        if m.get("pass_env") is not None
        else ()
    )
    return TokenSource(
        "exec",
        command=tuple(command),
        timeout=timeout,
        refresh_before=refresh_before,
        exec_env=exec_env,
        pass_env=pass_env,
    )


def _client_credentials(raw: object, path: str, errs: Errors) -> TokenSource | None:
    m = mapping(raw, path, errs, ("client_id", "client_secret", "token_url"))
    if m is None:
        return None
    for key in ("client_id", "client_secret"):
        if key not in m:
            errs.add(join(path, key), "is required")
    client_id = string(m["client_id"], join(path, "client_id"), errs) if "client_id" in m else None
    secret = None
    if "client_secret" in m:
        secret = parse_source(m["client_secret"], join(path, "client_secret"), errs, SECRET_KINDS)
    token_url = None
    if m.get("token_url") is not None:
        token_url = string(m["token_url"], join(path, "token_url"), errs)
        if token_url is not None and not token_url.startswith("https://"):
            if token_url.startswith("http://"):
                errs.warnings.append(f"{join(path, 'token_url')}: plain http; local testing only")
            else:
                errs.add(
                    join(path, "token_url"), f"expected an https:// URL, got {errs.show(token_url)}"
                )
                return None
    if not client_id or secret is None:
        return None
    return TokenSource(
        "client_credentials", client_id=client_id, client_secret=secret, token_url=token_url
    )


# Echoed only when it reads like a variable name (AMPERITY_TOKEN), never like an opaque token.
_CONVENTIONAL_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,39}")


def _string_source_fix(raw: str, kinds: tuple[str, ...], errs: Errors) -> str:
    """What to write instead of a bare string where a source mapping belongs. SECURITY: the
    string is never echoed (it may be the token itself): it is judged by its shape only."""
    text = raw.strip()
    if _CONVENTIONAL_NAME_RE.fullmatch(text) and ("_" in text or len(text) <= 16):
        errs.reveal(text)  # a name, not a token: safe to say
        return (
            "expected a mapping, got a string: to read the token from the environment variable "
            f"{text}, write {{env: {text}}}"
        )
    if text.startswith(("/", "~", "./", "../")) and "file" in kinds and len(text) <= 256:
        return "expected a mapping, got a string that looks like a path: write {file: <that path>}"
    if looks_like_jwt(text) or len(text) > 64:
        return (
            "expected a mapping, got a string that looks like a token (not shown): never paste "
            "a token into the config; export it and write {env: AMPERITY_TOKEN}"
        )
    return "expected a mapping, got a string: write {env: VARIABLE} or {file: PATH}"


def parse_source(
    raw: object, path: str, errs: Errors, kinds: tuple[str, ...] = ALL_KINDS
) -> TokenSource | None:
    """One token source; reports `path: expected exactly one of ...` and friends."""
    if isinstance(raw, str):
        errs.add(path, _string_source_fix(raw, kinds, errs))
        return None
    m = mapping(raw, path, errs, kinds)
    if m is None:
        return None
    present = [k for k in kinds if k in m]
    if len(present) != 1:
        errs.add(path, f"expected exactly one of {', '.join(kinds)}")
        return None
    kind = present[0]
    if kind == "exec":
        return _exec(m["exec"], join(path, "exec"), errs)
    if kind == "client_credentials":
        return _client_credentials(m[kind], join(path, kind), errs)
    value = string(m[kind], join(path, kind), errs)
    if value is None:
        return None
    if kind == "env":
        if not ENV_NAME_RE.fullmatch(value):
            errs.add(
                join(path, "env"), f"not a valid environment variable name: {errs.show(value)}"
            )
            return None
        return TokenSource("env", location=value)
    if kind == "file":
        # `~/amperity-token` as in a shell (the README uses it); the process's own home.
        return TokenSource("file", location=os.path.expanduser(value))
    errs.warnings.append(f"{path}: inline token value in the config file; prefer env or file")
    return TokenSource("value", value=value)


def parse_sources(m: dict[str, object], path: str, errs: Errors) -> tuple[TokenSource, ...] | None:
    """A route's `token:` (one source) or `tokens:` (a non-empty list), exactly one of them."""
    if "token" not in m and "tokens" not in m:
        errs.add(join(path, "token"), "is required (or tokens: a list of sources)")
        return None
    if "token" in m and "tokens" in m:
        errs.add(join(path, "token"), "expected exactly one of token, tokens")
        return None
    if "token" in m:
        source = parse_source(m["token"], join(path, "token"), errs)
        return (source,) if source is not None else None
    raw = m["tokens"]
    if not isinstance(raw, list) or not raw:
        errs.add(
            join(path, "tokens"), f"expected a non-empty list of sources, got {type_name(raw)}"
        )
        return None
    sources = [parse_source(item, f"{path}.tokens[{i}]", errs) for i, item in enumerate(raw)]
    if any(s is None for s in sources):
        return None
    return tuple(s for s in sources if s is not None)
