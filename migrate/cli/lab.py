"""`migrate lab up|down|status|env|inventory` and `migrate demo` (the sandbox hosts, docs/lab.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from migrate.cli.app import app, fail, out
from migrate.cli.render import print_lab_status, print_report
from migrate.core.errors import MigrateError
from migrate.core.report import Report

lab_app = typer.Typer(
    help="Two sandbox hosts on this machine (netns + dockerd + sshd each). See docs/lab.md.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(lab_app, name="lab", rich_help_panel="Sandbox")

_LAB_NAME = typer.Option("mlab", "--name", help="Lab name; namespaces are NAME-a and NAME-b.")
_LAB_SUBNET = typer.Option(
    None,
    "--subnet",
    help="Private IPv4 subnet (default: the one saved by the last `up`, else 10.213.7.0/24);"
    " host a gets the first address, b the second, the root namespace the last.",
)
_LAB_STATE = typer.Option(
    None, "--state-dir", help="Data roots, keys, logs (default: /var/lib/migrate-lab/NAME)."
)
_LAB_RUN = typer.Option(
    None, "--run-dir", help="Sockets, pidfiles, exec roots (default: /run/migrate-lab/NAME)."
)

_LAB_LIVE_RESTORE = typer.Option(
    False,
    "--live-restore",
    help="Run both dockerds with --live-restore (containers outlive a daemon restart)."
    " Not saved: an `up` without it replaces the daemons with ones without it.",
)


def _lab(
    name: str,
    subnet: str | None,
    state_dir: Path | None,
    run_dir: Path | None,
    live_restore: bool = False,
) -> Any:
    from dataclasses import replace

    from migrate.lab.config import resolve_config
    from migrate.lab.hosts import Lab

    return Lab(replace(resolve_config(name, subnet, state_dir, run_dir), live_restore=live_restore))


@lab_app.command("up")
def lab_up(
    name: str = _LAB_NAME,
    subnet: str | None = _LAB_SUBNET,
    state_dir: Path | None = _LAB_STATE,
    run_dir: Path | None = _LAB_RUN,
    live_restore: bool = _LAB_LIVE_RESTORE,
) -> None:
    """Bring the lab up (idempotent: reuses what is healthy, replaces what is stale)."""
    try:
        st = _lab(name, subnet, state_dir, run_dir, live_restore).up()
    except MigrateError as e:
        fail(e)
        return
    print_lab_status(st)
    out.print(f'use it: eval "$(migrate lab env --name {name})"', highlight=False)


@lab_app.command("down")
def lab_down(
    name: str = _LAB_NAME,
    state_dir: Path | None = _LAB_STATE,
    run_dir: Path | None = _LAB_RUN,
    purge: bool = typer.Option(
        False, "--purge", help="Also delete the state dir (images, containers, keys, logs)."
    ),
) -> None:
    """Stop the lab's daemons (by pidfile), unmount their leftovers, remove the namespaces."""
    from migrate.core.errors import LabError

    try:
        st = _lab(name, None, state_dir, run_dir).down(purge=purge)
    except MigrateError as e:
        fail(e)
        return
    if not st.down:
        print_lab_status(st)
        fail(LabError(f"lab {name} is not completely down"))
    out.print(f"lab {name} is down" + (" (state purged)" if purge else ""), highlight=False)


@lab_app.command("status")
def lab_status(
    name: str = _LAB_NAME,
    state_dir: Path | None = _LAB_STATE,
    run_dir: Path | None = _LAB_RUN,
    as_json: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Is each host's dockerd and sshd healthy? Exit 0 if all are, 1 if not."""
    import dataclasses

    try:
        st = _lab(name, None, state_dir, run_dir).status()
    except MigrateError as e:
        fail(e)
        return
    if as_json:
        out.print_json(data={**dataclasses.asdict(st), "healthy": st.healthy})
    else:
        print_lab_status(st)
    if not st.healthy:
        raise typer.Exit(1)


@lab_app.command("env")
def lab_env(
    name: str = _LAB_NAME,
    state_dir: Path | None = _LAB_STATE,
    run_dir: Path | None = _LAB_RUN,
) -> None:
    """Print shell exports for the lab: eval "$(migrate lab env)"."""
    from migrate.lab.config import shell_exports

    try:
        env = _lab(name, None, state_dir, run_dir).env()
    except MigrateError as e:
        fail(e)
        return
    sys.stdout.write(shell_exports(env))


@lab_app.command("inventory")
def lab_inventory(
    name: str = _LAB_NAME,
    state_dir: Path | None = _LAB_STATE,
    run_dir: Path | None = _LAB_RUN,
) -> None:
    """Print an Ansible inventory (YAML) for the lab's hosts, for the playbooks in playbooks/."""
    from migrate.lab.config import ansible_inventory

    try:
        cfg = _lab(name, None, state_dir, run_dir).config
    except MigrateError as e:
        fail(e)
        return
    sys.stdout.write(ansible_inventory(cfg))


@app.command(rich_help_panel="Sandbox")
def demo(name: str = _LAB_NAME) -> None:
    """Bring up the sandbox lab and live-migrate a counting container from host a to host b.

    The container counts in memory and serves the count over HTTP (busybox httpd). After the
    move it keeps counting on b from where it was: its memory came along. Runs again cleanly.
    """
    from migrate.lab.demo import DEMO_NAME, run_demo

    lab = _lab(name, None, None, None)
    try:
        st = lab.up()
        print_lab_status(st)
        out.print(f"migrating [bold]{DEMO_NAME}[/] (a counter in memory) from host a to host b ...")
        res = run_demo(lab)
    except MigrateError as e:
        fail(e)
        return
    from migrate.core.report import Bytes

    r = res.report
    rep = Report(
        status=r["status"],
        container=r["container"],
        source=r["source"],
        destination=r["destination"],
        dest_name=r["dest_name"],
        dest_container_id=r["dest_container_id"],
        strategy=r["strategy"],
        downtime_s=r["downtime_s"],
        total_s=r["total_s"],
        phases=r["phases"],
        bytes=Bytes(**r["bytes"]),
        source_action=r["source_action"],
        staging=dict(r.get("staging") or {}),
    )
    print_report(rep)
    out.print(
        f"count on a before the move: {res.count_before}; on b right after: {res.count_after};"
        f" one second later: {res.count_later} [green]\u2713 it kept counting[/]",
        highlight=False,
    )
