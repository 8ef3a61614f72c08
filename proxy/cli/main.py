"""The `amperity-proxy` command: argument parsing, logging set-up, subcommands.

The only place that prints a config or start-up error and exits non-zero (2 for a bad config
or bad arguments, 1 for a start-up failure such as a missing token or a busy port).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from proxy import __version__
from proxy.cli.diagnose import doctor, parse_duration, token_info
from proxy.cli.run import serve
from proxy.cli.workers import supervise
from proxy.config import (
    LOG_LEVELS,
    Config,
    ConfigError,
    StartupError,
    load_config,
    parse_config,
)
from proxy.config.environment import SOURCE as ENV_SOURCE
from proxy.config.environment import config_from_env, route_variables, variable_for
from proxy.config.listen import listen_problems, parse_listen
from proxy.gate import client_tokens
from proxy.observe.logs import flush_logs, setup_logging
from proxy.tokens.health import EXPIRING

DEFAULT_CONFIG = "/etc/amperity-proxy/config.yaml"  # used when nothing else names a config
EXIT_STARTUP = 1
EXIT_CONFIG = 2


def _listen_arg(text: str) -> object:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amperity-proxy",
        description="Local reverse proxy that adds Amperity API credentials to HTTP requests.",
    )
    parser.add_argument("--version", action="version", version=f"amperity-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parsed = sub.add_parser(name, help=help)
        parsed.add_argument(
            "--config",
            default=os.environ.get("AMPERITY_PROXY_CONFIG"),
            help="config file (default: $AMPERITY_PROXY_CONFIG)",
        )
        return parsed

    _run_arguments(command("run", "run the proxy"))
    check = command("check-config", "validate a config file and list every problem")
    check.add_argument(
        "--tokens",
        action="store_true",
        help="also load every route's tokens as `run` would (readable, parseable, not expired)",
    )
    info = command("token-info", "show every route's tokens; exit 1 if any is expired or expiring")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument(
        "--warn",
        type=_duration_arg,
        default=float(EXPIRING),
        metavar="DURATION",
        help="exit 1 when a token expires within this (default 7d; e.g. 12h, 30m)",
    )
    doctor = command("doctor", "check tokens, DNS and TLS for every route")
    doctor.add_argument(
        "--probe", action="store_true", help="also send GET <base>/segments?limit=1 per route"
    )
    return parser


def _workers_arg(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return seconds


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower() if choices[0].islower() else text.strip().upper()
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return convert


# `run`'s flags and their variables: flags > environment > config file.
RUN_FLAGS: tuple[tuple[str, str, Callable[[str], object], str], ...] = (
    ("--listen", "AMPERITY_PROXY_LISTEN", _listen_arg, "proxy listener, HOST:PORT"),
    ("--admin-listen", "AMPERITY_PROXY_ADMIN_LISTEN", _listen_arg, "admin listener, HOST:PORT"),
    ("--workers", "AMPERITY_PROXY_WORKERS", _workers_arg, "worker processes sharing the port"),
    ("--log-format", "AMPERITY_PROXY_LOG_FORMAT", _choice("json", "text"), "json or text"),
    ("--log-level", "AMPERITY_PROXY_LOG_LEVEL", _choice(*LOG_LEVELS), "/".join(LOG_LEVELS)),
    (
        "--shutdown-delay",
        "AMPERITY_PROXY_SHUTDOWN_DELAY",
        _seconds_arg,
        "seconds to keep serving after SIGTERM before draining (config: shutdown_delay)",
    ),
)


def _run_arguments(run: argparse.ArgumentParser) -> None:
    for flag, variable, convert, help in RUN_FLAGS:
        run.add_argument(flag, type=convert, help=f"{help} (env {variable})")
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor


def _from_environment(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Fill each `run` flag not given from its variable (flags > environment > file)."""
    for flag, variable, convert, _ in RUN_FLAGS:
        dest = flag.removeprefix("--").replace("-", "_")
        text = env.get(variable, "").strip()
        if getattr(args, dest) is None and text:
            try:
                setattr(args, dest, convert(text))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ConfigError([f"{variable}: {exc}"], "environment") from None
    if args.workers is None:
        args.workers = 1


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """The config file, or the one route the AMPERITY_PROXY_* variables describe."""
    env = os.environ if env is None else env
    raw, problems = config_from_env(env)
    variables = route_variables(env)
    if path and variables:
        raise ConfigError(
            [
                f"a config file ({path}) and {', '.join(variables)} are both set: unset the "
                "variables to use the file, or drop --config / AMPERITY_PROXY_CONFIG to run "
                "from the variables"
            ],
            "amperity-proxy",
        )
    if not path and not variables and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG  # where the image's ConfigMap is mounted
    if path:
        return load_config(path)
    if problems:
        raise ConfigError(problems, ENV_SOURCE)
    if raw is None:
        raise ConfigError(
            [
                "no config: pass --config PATH, set AMPERITY_PROXY_CONFIG, mount one at "
                f"{DEFAULT_CONFIG}, or run without a file with AMPERITY_PROXY_TENANT and "
                "AMPERITY_PROXY_TOKEN_FILE (README: 'Run without a config file')"
            ],
            "amperity-proxy",
        )
    try:
        return parse_config(raw, ENV_SOURCE, env)
    except ConfigError as exc:
        raise ConfigError([variable_for(e) for e in exc.errors], ENV_SOURCE) from None


def _configure(args: argparse.Namespace) -> Config:
    """The config file with the command line's overrides; also what a reload re-reads."""
    config = _load(args.config)
    if args.listen:  # the flag changes the address only; the access settings stay
        listen = dataclasses.replace(config.listen, host=args.listen.host, port=args.listen.port)
        config = dataclasses.replace(config, listen=listen)
    if args.admin_listen:
        admin = dataclasses.replace(
            config.admin, host=args.admin_listen.host, port=args.admin_listen.port
        )
        config = dataclasses.replace(config, admin=admin)
    if getattr(args, "shutdown_delay", None) is not None:
        config = dataclasses.replace(config, shutdown_delay=args.shutdown_delay)
    problems = listen_problems(config.listen)
    if problems:
        raise ConfigError(problems, "--listen")
    return config


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _from_environment(args, os.environ)
    config = _configure(args)
    setup_logging(args.log_format or config.log.format, args.log_level or config.log.level)
    if args.workers > 1 and args.worker is None:
        return supervise(argv, args.workers)
    try:
        return asyncio.run(
            serve(
                config,
                config_loader=lambda: _configure(args),
                worker=args.worker,
                workers=args.workers,
            )
        )
    except StartupError as exc:
        _fatal(exc)
        return EXIT_STARTUP


def _fatal(exc: StartupError) -> None:
    """The reason a start failed, as the last lines printed: buffered log lines (a token
    loaded a moment before) go out first."""
    flush_logs()
    for line in exc.lines:
        print(f"amperity-proxy: {line}", file=sys.stderr, flush=True)


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config or ENV_SOURCE}: ok ({len(config.routes)} route(s))")
    for route in config.routes:
        print(
            f"  {route.prefix} -> {route.base_url} tenant={route.tenant} "
            f"tokens={', '.join(t.describe() for t in route.tokens)}"
        )
    if not args.tokens:
        return 0
    # Tokens are opt-in: a config is often checked where its tokens don't exist (a CI job).
    setup_logging("text", "WARNING")  # a token that looks like a broken JWT, say
    print()
    try:
        client_tokens(config.listen, os.environ)  # readable, and one token per client
        return asyncio.run(token_info(config, 0.0, False, sys.stdout))
    except StartupError as exc:
        _fatal(exc)
        return EXIT_STARTUP


def _diagnose(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging("text", "ERROR")  # diagnostics print their own report
    try:
        if args.command == "token-info":
            return asyncio.run(token_info(config, args.warn, args.json, sys.stdout))
        return asyncio.run(doctor(config, args.probe, sys.stdout))
    except StartupError as exc:
        _fatal(exc)
        return EXIT_STARTUP


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check(args)
        if args.command in ("token-info", "doctor"):
            return _diagnose(args)
        return _run(args, argv)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
