"""The configuration: read once, validated whole, frozen. The one import surface for the rest
of the package: `from proxy.config import Config, Route, load_config, parse_config`.

- `model`: Config, Route and their parts (frozen dataclasses, each default declared once)
- `parse`: YAML and `${VAR}` in, the model out; every mistake reported together with its fix
- `readers`: the readers of untrusted input every section uses (`Errors`, `${VAR}`, types)
- sections: `listen` (listeners, who may connect), `limits`, `traffic` (pacing, retries),
  `sources` (token sources), `patterns` (RE2 path patterns)
"""

from proxy.config.files import load_config, load_yaml, yaml_problem
from proxy.config.model import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    LOG_LEVELS,
    MAX_CONFIG_BYTES,
    BaseURL,
    Config,
    ConfigError,
    ConfigLoader,
    LogSettings,
    Route,
    RouteDefaults,
    StartupError,
    Timeouts,
    keep_running,
    restart_needed,
)
from proxy.config.parse import HTTP_METHODS, parse_config
from proxy.config.shared import SharedRedis

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "HTTP_METHODS",
    "LOG_LEVELS",
    "MAX_CONFIG_BYTES",
    "BaseURL",
    "Config",
    "ConfigError",
    "ConfigLoader",
    "LogSettings",
    "Route",
    "RouteDefaults",
    "SharedRedis",
    "StartupError",
    "Timeouts",
    "keep_running",
    "load_config",
    "load_yaml",
    "parse_config",
    "restart_needed",
    "yaml_problem",
]
