"""The command line and the process: `amperity-proxy` (`cli.main`), serving (`cli.run`), workers,
diagnostics, the demo. Nothing imports this package; `readiness` must stay importable with the
standard library alone, so this file imports nothing."""
