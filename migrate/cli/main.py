"""The `migrate` entry point: every command group registers itself on the app when imported."""

from __future__ import annotations

from migrate.cli import (
    bundle,  # noqa: F401, I001
    lab,  # noqa: F401, I001
    run,  # noqa: F401, I001  (registration by import, in --help order)
)
from migrate.cli.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
