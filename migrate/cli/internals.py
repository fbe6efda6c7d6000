"""`migrate agent` (started by `migrate run` on the destination, never by hand) and `version`."""

from __future__ import annotations

from pathlib import Path

import typer

from migrate import __version__
from migrate.cli.app import app, out


@app.command(rich_help_panel="Internals")
def agent(
    docker_host: str | None = typer.Option(
        None, "--docker-host", help="Docker daemon to use (default: DOCKER_HOST / the socket)."
    ),
    staging_dir: Path | None = typer.Option(
        None,
        "--staging-dir",
        help="Where received checkpoint images are staged (default: inside the new "
        "container's directory on Docker's data root). Another file system costs a copy.",
    ),
    sink: str | None = typer.Option(
        None,
        "--sink",
        hidden=True,
        help="Internal: hand this process's stdin (the source's OpenSSH bulk connection) to "
        "the running agent listening on this socket.",
    ),
) -> None:
    """The destination agent: speaks the protocol on stdin/stdout (started by `migrate run`)."""
    if sink is not None:
        from migrate.transport.bulk_sink import run_sink

        raise typer.Exit(run_sink(sink))
    from migrate.agent.server import run_agent
    from migrate.engines.select import open_engine

    raise typer.Exit(run_agent(lambda: open_engine(docker_host), staging_dir))


@app.command(rich_help_panel="Internals")
def version() -> None:
    """Print the version."""
    out.print(__version__)
