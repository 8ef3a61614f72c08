"""`python -m proxy` is the same as the `amperity-proxy` console script."""

from proxy.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
