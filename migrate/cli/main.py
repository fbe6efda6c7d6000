"""The `migrate` entry point: each command module registers its commands on the app when it is
imported, and typer lists the help panels in that order (hence the import order below)."""

# ruff: noqa: I001  (the order of the imports below is the order of `migrate --help`)
from __future__ import annotations

from migrate.cli import run  # noqa: F401  Move containers: check, run, recover, evacuate
from migrate.cli import bundle  # noqa: F401  Bundles and drills
from migrate.cli import lab  # noqa: F401  Sandbox: lab, demo
from migrate.cli import internals  # noqa: F401  Internals: agent, version
from migrate.cli.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
