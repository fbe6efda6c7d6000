"""`migrate export`, `import`, `inspect` and `drill` (portable bundles, docs/bundle.md)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.markdown import Markdown
from rich.markup import escape

from migrate.cli.app import app, err, fail, out
from migrate.cli.options import (
    AGENT_COMMAND,
    BULK,
    DEST_DOCKER_HOST,
    SSH_ACCEPT_NEW,
    SSH_IDENTITY,
    SSH_KNOWN_HOSTS,
    Bulk,
    channel_factory,
)
from migrate.cli.render import RichProgress
from migrate.core.errors import MigrateError
from migrate.core.report import human_bytes
from migrate.fs.files import atomic_write


@app.command("export", rich_help_panel="Bundles and drills")
def export_cmd(
    container: str = typer.Argument(..., help="Running container to export."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle file to write (.tar.zst)."),
    leave_running: bool = typer.Option(
        False, "--leave-running", help="Keep the container running (it is paused only briefly)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Checkpoint a running container into one verified, portable bundle file."""
    from migrate.engines.select import open_engine
    from migrate.source.portable import export

    try:
        res = export(open_engine(), container, output, leave_running=leave_running)
    except MigrateError as e:
        fail(e)
        return
    doc = {
        "status": "exported",
        "container": container,
        "bundle": str(res.path),
        "bundle_bytes": res.bundle_bytes,
        "content_bytes": res.manifest.total_size,
        "members": len(res.manifest.members),
        "pause_s": round(res.pause_s, 3),
        "checkpoint_time": res.checkpoint_time,
        "source": res.source_action,
    }
    if as_json:
        out.print_json(json.dumps(doc))
        return
    out.print(
        f"[green]exported[/] {container} to {res.path} ({human_bytes(res.bundle_bytes)}, "
        f"{len(res.manifest.members)} files); paused {res.pause_s:.2f} s; the container is "
        f"{res.source_action}",
        highlight=False,
    )


@app.command("import", rich_help_panel="Bundles and drills")
def import_cmd(
    file: Path = typer.Argument(..., help="Bundle written by `migrate export`."),
    name: str | None = typer.Option(None, "--name", help="Name of the new container."),
    no_start: bool = typer.Option(
        False, "--no-start", help="Create it and place the checkpoint, but do not start it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Verify a bundle completely, then recreate the container and restore it from it."""
    from migrate.agent.importer import import_bundle
    from migrate.engines.select import open_engine

    try:
        res = import_bundle(open_engine(), file, name=name, start=not no_start)
    except MigrateError as e:
        fail(e)
        return
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "status": "restored" if res.started else "created",
                    "name": res.name,
                    "container_id": res.container_id,
                    "restore_s": round(res.restore_s, 3),
                    "restore_mode": res.restore_mode or None,
                    "checkpoint": res.checkpoint or None,
                }
            )
        )
        return
    state = (
        f"restored in {res.restore_s:.2f} s"
        if res.started
        else "created (not started); "
        f"restore it with `docker start --checkpoint {res.checkpoint} {res.name}`"
    )
    out.print(f"[green]imported[/] {res.name} ({res.container_id[:12]}): {state}", highlight=False)


@app.command("inspect", rich_help_panel="Bundles and drills")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A bundle file, or a directory of CRIU images."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Show what a bundle holds: versions, sizes, process tree, memory, files, sockets, mounts."""
    from migrate.checkpoint.inspect import inspect

    try:
        ins = inspect(path)
    except MigrateError as e:
        fail(e)
        return
    if as_json:
        out.print_json(json.dumps(ins.to_json()))
        return
    for key in ("container", "source_host", "created", "engine", "criu_version", "image"):
        if key in ins.meta:
            out.print(f"[bold]{key}[/]: {ins.meta[key]}", highlight=False)
    out.print(
        "[bold]sizes[/]: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in ins.sizes.items()),
        highlight=False,
    )
    out.print("[bold]processes[/] (pid ppid pages command):", highlight=False)
    for p in ins.processes:
        out.print(f"  {p.pid:>6} {p.ppid:>6} {p.pages:>8}  {p.cmdline or p.comm}", highlight=False)
    for title, items in (("files", ins.files), ("sockets", ins.sockets), ("mounts", ins.mounts)):
        out.print(f"[bold]{title}[/] ({len(items)}):", highlight=False)
        for item in items:
            out.print(f"  {item}", highlight=False)


# long: typer declares each option in the signature; the body builds DrillOptions and writes the reports
@app.command("drill", rich_help_panel="Bundles and drills")
def drill_cmd(
    container: str = typer.Argument(..., help="Running container to drill (it keeps running)."),
    to: str = typer.Option(
        ..., "--to", help="Standby host: ssh://[USER@]HOST[:PORT] (or local:// for this host)."
    ),
    verify_cmd: str | None = typer.Option(
        None,
        "--verify-cmd",
        help="Command run inside the drill copy, split into words like a shell would but never "
        "run through one (use `sh -c '...'` for pipes); must exit 0.",
    ),
    settle: float = typer.Option(
        5.0,
        "--settle",
        min=0.0,
        max=3600.0,
        help="Seconds the drill copy must keep running before it is verified.",
    ),
    verify_timeout: float = typer.Option(
        60.0, "--verify-timeout", min=0.1, max=3600.0, help="Seconds --verify-cmd may take."
    ),
    keep: bool = typer.Option(
        False, "--keep", help="Leave the drill copy running on the standby (network none)."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write the JSON report here and the Markdown one next to it (.md)."
    ),
    identity: Path | None = SSH_IDENTITY,
    known_hosts: Path | None = SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = SSH_ACCEPT_NEW,
    agent_command: str = AGENT_COMMAND,
    dest_docker_host: str | None = DEST_DOCKER_HOST,
    bulk: Bulk = BULK,
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON report on stdout."),
) -> None:
    """Disaster-recovery drill: prove the container restores on a standby host.

    The container keeps running here (paused only for its checkpoint). A bundle of it is
    restored on the standby under a drill name, with no network, no published ports and no
    restart policy; it must still run after --settle seconds and --verify-cmd must exit 0
    inside it; then the copy is removed (unless --keep). Exit codes: 0 passed; 1 the drill
    failed (the report says why); 2 bad usage; 3 refused by a precheck (nothing was touched).
    """
    from migrate.core.errors import EXIT_FAILED, EXIT_REFUSED, UsageError
    from migrate.engines.select import open_engine
    from migrate.source.drill import Drill, DrillOptions

    try:
        argv = tuple(shlex.split(verify_cmd)) if verify_cmd is not None else ()
    except ValueError as e:
        fail(UsageError(f"--verify-cmd: {e}", hint="check the quotes"))
        return
    if verify_cmd is not None and not argv:
        fail(UsageError("--verify-cmd is empty", hint="give a command, e.g. --verify-cmd 'true'"))
    md_path = None
    if report is not None:
        if report.suffix == ".md":
            fail(
                UsageError(
                    "--report names the JSON file; the Markdown one is written next to it",
                    hint="use --report FILE.json",
                )
            )
        md_path = report.with_suffix(".md")
    try:
        factory = channel_factory(
            to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
        )
        engine = open_engine()
    except MigrateError as e:
        if as_json:
            status = "refused" if e.exit_code == EXIT_REFUSED else "failed"
            out.print_json(
                data={"status": status, "passed": False, "reason": e.message, "error": e.to_wire()}
            )
        fail(e)
        return
    progress = RichProgress(err, enabled=err.is_terminal and not as_json)
    opts = DrillOptions(
        container=container,
        destination=to,
        verify_argv=argv,
        settle_s=settle,
        verify_timeout_s=verify_timeout,
        keep=keep,
        bulk=bulk.value,
    )
    rep = Drill(opts, engine, factory, progress).run()
    doc = rep.to_json()
    if report is not None and md_path is not None:
        try:
            atomic_write(report, json.dumps(doc, indent=2) + "\n", durable=False)
            atomic_write(md_path, rep.to_markdown(), durable=False)
        except OSError as e:
            err.print(f"[bold red]error[/]: cannot write the report: {escape(str(e))}")
            raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        out.print_json(json.dumps(doc))
    else:
        out.print(Markdown(rep.to_markdown()))
    if rep.status == "refused":
        if rep.error:
            err.print(
                f"[bold red]refused[/] ({escape(str(rep.error.get('code')))}): "
                f"{escape(str(rep.reason))}",
                highlight=False,
                soft_wrap=True,
            )
            if rep.error.get("hint"):
                err.print(f"[bold]fix[/]: {escape(str(rep.error['hint']))}", soft_wrap=True)
        raise typer.Exit(EXIT_REFUSED)
    if not rep.passed:
        err.print(
            f"[bold red]drill failed[/]: {escape(str(rep.reason))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_FAILED)
