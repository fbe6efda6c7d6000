"""The typer application, its consoles and the one way an error leaves the CLI."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from migrate.core.errors import MigrateError

app = typer.Typer(
    name="migrate",
    help="Live-migrate running Docker containers between Linux hosts with CRIU, over SSH.",
    no_args_is_help=True,
    add_completion=False,
    # Docstrings are wrapped at 100 columns in the source: let the terminal wrap paragraphs.
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(e: MigrateError) -> None:
    """Print an error with its hint and exit with its code."""
    # soft_wrap: a message is one line in a log or a pipe, whatever the console width.
    err.print(
        f"[bold red]error[/] [dim]({e.code})[/]: {escape(e.message)}",
        highlight=False,
        soft_wrap=True,
    )
    if e.hint:
        err.print(f"[bold]fix[/]: {escape(e.hint)}", highlight=False, soft_wrap=True)
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
