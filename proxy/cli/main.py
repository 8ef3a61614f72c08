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
from collections.abc import Sequence

from proxy import __version__
from proxy.cli.diagnose import doctor, parse_duration, token_info
from proxy.cli.run import serve
from proxy.cli.workers import supervise
from proxy.config import LOG_LEVELS, Config, ConfigError, StartupError, load_config
from proxy.config.listen import listen_problems, parse_listen
from proxy.observe.logs import flush_logs, setup_logging
from proxy.tokens.health import EXPIRING

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


def _run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--listen", type=_listen_arg, metavar="HOST:PORT", help="proxy listener")
    run.add_argument("--admin-listen", type=_listen_arg, metavar="HOST:PORT", help="admin listener")
    run.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes sharing the port"
    )
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    run.add_argument(
        "--log-format", choices=("json", "text"), help="default: json unless stderr is a terminal"
    )
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,  # the same levels as the config file's log.level
        help="default: INFO",
    )


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load(path: str | None) -> Config:
    if not path:
        raise ConfigError(
            ["no config file: pass --config PATH or set AMPERITY_PROXY_CONFIG"], "amperity-proxy"
        )
    return load_config(path)


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
    problems = listen_problems(config.listen)
    if problems:
        raise ConfigError(problems, "--listen")
    return config


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = _configure(args)
    setup_logging(args.log_format or config.log.format, args.log_level or config.log.level)
    if args.workers < 1:
        raise ConfigError([f"--workers must be at least 1, got {args.workers}"], "amperity-proxy")
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
    print(f"{args.config}: ok ({len(config.routes)} route(s))")
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
