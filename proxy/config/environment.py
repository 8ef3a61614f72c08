"""A one-route proxy configured by environment variables alone, without a config file: the
smallest sidecar is the image plus a Secret.

    AMPERITY_PROXY_TENANT      the tenant id (required in this mode)
    AMPERITY_PROXY_TOKEN_FILE  a path to the token (a mounted Secret), or
    AMPERITY_PROXY_TOKEN_ENV   the NAME of the variable that holds the token
    AMPERITY_PROXY_BASE_URL    optional (default https://{tenant}.amperity.com/api)
    AMPERITY_PROXY_PREFIX      optional (default /amperity)
    AMPERITY_PROXY_CA_FILE     optional extra CA bundle for the upstream

Every other setting keeps its default; `run`'s flags and their AMPERITY_PROXY_* variables
(listen address, admin address, log format and level, workers) apply as with a file. A config
file and these variables together is an error: one of them would silently lose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# variable -> the route key it sets
ROUTE_VARIABLES = {
    "AMPERITY_PROXY_TENANT": "tenant",
    "AMPERITY_PROXY_TOKEN_FILE": "token",
    "AMPERITY_PROXY_TOKEN_ENV": "token",
    "AMPERITY_PROXY_BASE_URL": "base_url",
    "AMPERITY_PROXY_PREFIX": "prefix",
    "AMPERITY_PROXY_CA_FILE": "ca_file",
}
DEFAULT_PREFIX = "/amperity"
SOURCE = "AMPERITY_PROXY_* variables"


def route_variables(env: Mapping[str, str]) -> list[str]:
    """The route variables that are set (non-empty)."""
    return [name for name in ROUTE_VARIABLES if env.get(name, "").strip()]


def config_from_env(env: Mapping[str, str]) -> tuple[dict[str, Any] | None, list[str]]:
    """(the config document the variables describe, problems); (None, []) when none is set."""
    if not route_variables(env):
        return None, []
    value = {name: env.get(name, "").strip() for name in ROUTE_VARIABLES}
    problems = []
    if not value["AMPERITY_PROXY_TENANT"]:
        problems.append("AMPERITY_PROXY_TENANT: missing: the tenant id the token was made in")
    file, name = value["AMPERITY_PROXY_TOKEN_FILE"], value["AMPERITY_PROXY_TOKEN_ENV"]
    if bool(file) == bool(name):
        problems.append(
            "AMPERITY_PROXY_TOKEN_FILE / AMPERITY_PROXY_TOKEN_ENV: set exactly one: a path to "
            "the token file, or the name of the variable that holds the token"
        )
    if problems:
        return None, problems
    route: dict[str, Any] = {
        "prefix": value["AMPERITY_PROXY_PREFIX"] or DEFAULT_PREFIX,
        "tenant": value["AMPERITY_PROXY_TENANT"],
        "token": {"file": file} if file else {"env": name},
    }
    if value["AMPERITY_PROXY_BASE_URL"]:
        route["base_url"] = value["AMPERITY_PROXY_BASE_URL"]
    if value["AMPERITY_PROXY_CA_FILE"]:
        route["ca_file"] = value["AMPERITY_PROXY_CA_FILE"]
    return {"routes": [route]}, []


def variable_for(problem: str) -> str:
    """A config problem about `routes[0].<key>` told in terms of the variable that set it."""
    path, sep, rest = problem.partition(": ")
    if not sep or not path.startswith("routes[0]."):
        return problem
    key = path.removeprefix("routes[0].").split(".")[0].split("[")[0]
    names = [name for name, k in ROUTE_VARIABLES.items() if k == key]
    return f"{' / '.join(names)}: {rest}" if names else problem
