"""`migrate export` and `migrate import` (portable bundles, docs/bundle.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from migrate.cli import app, fail, out
from migrate.errors import MigrateError
from migrate.report import human_bytes


@app.command("export")
def export_cmd(
    container: str = typer.Argument(..., help="Running container to export."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle file to write (.tar.zst)."),
    leave_running: bool = typer.Option(
        False, "--leave-running", help="Keep the container running (it is paused only briefly)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Checkpoint a running container into one verified, portable bundle file."""
    from migrate.engines.docker import DockerEngine
    from migrate.portable import export

    try:
        res = export(DockerEngine(), container, output, leave_running=leave_running)
    except MigrateError as e:
        fail(e)
        return
    doc = {
        "status": "exported", "container": container, "bundle": str(res.path),
        "bundle_bytes": res.bundle_bytes, "content_bytes": res.manifest.total_size,
        "members": len(res.manifest.members), "pause_s": round(res.pause_s, 3),
        "checkpoint_time": res.checkpoint_time, "source": res.source_action,
    }  # fmt: skip
    if as_json:
        out.print_json(json.dumps(doc))
        return
    out.print(
        f"[green]exported[/] {container} to {res.path} ({human_bytes(res.bundle_bytes)}, "
        f"{len(res.manifest.members)} files); paused {res.pause_s:.2f} s; the container is "
        f"{res.source_action}",
        highlight=False,
    )


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="Bundle written by `migrate export`."),
    name: str | None = typer.Option(None, "--name", help="Name of the new container."),
    no_start: bool = typer.Option(
        False, "--no-start", help="Create it and place the checkpoint, but do not start it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Verify a bundle completely, then recreate the container and restore it from it."""
    from migrate.engines.docker import DockerEngine
    from migrate.portable import import_bundle

    try:
        res = import_bundle(DockerEngine(), file, name=name, start=not no_start)
    except MigrateError as e:
        fail(e)
        return
    if as_json:
        out.print_json(json.dumps({
            "status": "restored" if res.started else "created", "name": res.name,
            "container_id": res.container_id, "restore_s": round(res.restore_s, 3),
        }))  # fmt: skip
        return
    state = f"restored in {res.restore_s:.2f} s" if res.started else "created (not started)"
    out.print(f"[green]imported[/] {res.name} ({res.container_id[:12]}): {state}", highlight=False)


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A bundle file, or a directory of CRIU images."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Show what a bundle holds: versions, sizes, process tree, memory, files, sockets, mounts."""
    from migrate.inspect import inspect

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
