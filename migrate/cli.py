"""Command line (typer). The only module that prints or exits."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from migrate import __version__
from migrate.errors import MigrateError

app = typer.Typer(
    name="migrate",
    help="Live-migrate running Docker containers between Linux hosts with CRIU, over SSH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(e: MigrateError) -> None:
    """Print an error with its hint and exit with its code."""
    err.print(f"[bold red]error[/] [dim]({e.code})[/]: {e.message}", highlight=False)
    if e.hint:
        err.print(f"[bold]fix[/]: {e.hint}", highlight=False)
    raise typer.Exit(e.exit_code)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


# --- lab (migrate/lab.py) -----------------------------------------------------------------

# --- check (migrate/check.py) -------------------------------------------------------------

# --- run / agent / demo (migrate/migration.py, migrate/agent.py) --------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
