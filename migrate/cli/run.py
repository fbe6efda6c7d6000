"""`migrate check`, `run`, `recover`, `evacuate` and `agent`: the commands that move containers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from migrate.cli.app import app, err, fail, out
from migrate.cli.options import (
    AGENT_COMMAND,
    BULK,
    DEST_DOCKER_HOST,
    SSH_ACCEPT_NEW,
    SSH_IDENTITY,
    SSH_KNOWN_HOSTS,
    BindMounts,
    Bulk,
    Compression,
    Staging,
    Strategy,
    channel_factory,
)
from migrate.cli.render import RichProgress, print_checks, print_report
from migrate.core.errors import MigrateError
from migrate.core.report import human_bytes


# long: typer declares each option in the signature; the body renders both hosts' checks
@app.command(rich_help_panel="Move containers")
def check(
    to: str | None = typer.Option(
        None,
        "--to",
        help="Also check the destination ssh://[USER@]HOST[:PORT] (or local://), "
        "through its agent: CRIU, Docker, disk, and whether this host's CPU features are there.",
    ),
    identity: Path | None = SSH_IDENTITY,
    known_hosts: Path | None = SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = SSH_ACCEPT_NEW,
    agent_command: str = AGENT_COMMAND,
    dest_docker_host: str | None = DEST_DOCKER_HOST,
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON report on stdout."),
) -> None:
    """Is this host (and the destination) ready to migrate containers: CRIU, Docker, runc,
    kernel, CPU, disk.

    Every problem comes with the fix to apply. Exit codes: 0 ready (warnings allowed);
    3 a required check failed (here or on the destination) or the destination is unreachable;
    2 bad usage.
    """
    from migrate.core.errors import EXIT_REFUSED
    from migrate.engines.select import CHECK_TIMEOUT_S, open_engine, open_readiness
    from migrate.source.check import run_checks
    from migrate.source.dest_checks import check_destination
    from migrate.wire.client import AgentClient
    from migrate.wire.connection import Connection
    from migrate.wire.methods import Bye

    dest = None
    try:
        factory = None
        if to is not None:  # a bad --to is refused before anything runs
            factory = channel_factory(
                to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
            )
        report = run_checks(lambda: open_engine(timeout=CHECK_TIMEOUT_S).info(), open_readiness())
        if factory is not None:
            agent = AgentClient(Connection(factory(), timeout=120.0))
            try:
                dest = check_destination(agent, open_readiness())
                agent.call(Bye())
            finally:
                agent.conn.close()
    except MigrateError as e:
        if as_json:
            out.print_json(data={"ready": False, "error": e.to_wire()})
        fail(e)
        return
    ready = report.ready and (dest is None or dest.ready)
    if as_json:
        data = report.to_json()
        if dest is not None:
            data["destination"] = dest.to_json()
            data["ready"] = ready
        out.print_json(data=data)
    else:
        print_checks(report, f"migrate check: {report.host}")
        if dest is not None:
            print_checks(dest, f"destination {to}: {dest.host}")
    if not ready:
        raise typer.Exit(EXIT_REFUSED)


# long: typer declares each option in the signature; the body is the options handed to RunOptions
@app.command(rich_help_panel="Move containers")
def run(
    container: str = typer.Argument(..., help="Name or id of the running container to move."),
    to: str = typer.Option(
        ..., "--to", help="Destination: ssh://[USER@]HOST[:PORT] (or local:// for this host)."
    ),
    identity: Path | None = SSH_IDENTITY,
    known_hosts: Path | None = SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = SSH_ACCEPT_NEW,
    agent_command: str = AGENT_COMMAND,
    name: str | None = typer.Option(None, "--name", help="Container name on the destination."),
    keep_source: bool = typer.Option(
        False, "--keep-source", help="Keep the source container (stopped) instead of removing it."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run the prechecks only."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON report on stdout."),
    strategy: Strategy = typer.Option(
        Strategy.cold,
        "--strategy",
        help="cold (default: stop-and-copy, can always roll back) | lazy (post-copy: the "
        "container resumes on the destination before its memory has moved; shorter downtime, "
        "but a link lost before the last page has no rollback) | auto (lazy where both hosts "
        "can do it, else cold; choosing it accepts lazy's risk).",
    ),
    dest_docker_host: str | None = DEST_DOCKER_HOST,
    bind_mounts: BindMounts = typer.Option(
        BindMounts.refuse,
        "--bind-mounts",
        help="refuse (default) | same-path (the path exists on the destination already, e.g. "
        "shared storage) | copy (move the content to the same path on the destination).",
    ),
    bulk: Bulk = BULK,
    precopy: bool = typer.Option(
        True,
        "--precopy/--no-precopy",
        help="Copy the read-write layer while the container still runs and send only what "
        "changed during the pause (default), or copy all of it during the pause.",
    ),
    staging: Staging = typer.Option(
        Staging.auto,
        "--staging",
        help="Where the checkpoint images wait on both hosts: auto (default: in memory, i.e. "
        "tmpfs under /dev/shm, when they fit with room to spare, else on disk) | memory "
        "(refuse when they do not fit) | disk.",
    ),
    compression: Compression = typer.Option(
        Compression.adaptive,
        "--compression",
        help="adaptive (default: zstd level 1 while the link is the limit, almost none while "
        "the CPUs are) | fixed (always level 1).",
    ),
) -> None:
    """Live-migrate one running container to another host.

    The container is paused, checkpointed with CRIU and streamed with its read-write layer
    (and the image layers the destination lacks) to an agent started over SSH, which restores
    it. Until the destination reports it running, any failure rolls back and the source resumes.

    Exit codes: 0 migrated; 1 failed and rolled back; 2 bad usage; 3 refused by a precheck
    (nothing touched); 4 outcome in doubt (see `migrate recover`); 130 (SIGINT) or 143
    (SIGTERM): migrated, the interrupt came after the point of no return. Ctrl-C or SIGTERM
    before that point rolls back (exit 1).
    """
    from migrate.core.faults import Faults
    from migrate.engines.select import open_engine
    from migrate.source.interrupt import InterruptLatch, exit_status, handling, signal_name
    from migrate.source.migration import Migration, RunOptions

    try:
        factory = channel_factory(
            to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
        )
        engine = open_engine()
        progress = RichProgress(err, enabled=err.is_terminal and not as_json)
        interrupts = InterruptLatch()
        m = Migration(
            RunOptions(
                container=container,
                destination=to,
                name=name,
                keep_source=keep_source,
                dry_run=dry_run,
                strategy=strategy.value,
                bind_mounts=bind_mounts.value,
                precopy=precopy,
                staging=staging.value,
                compression=compression.value,
                bulk=bulk.value,
                faults=Faults.from_env(),
            ),
            engine,
            factory,
            progress,
            interrupts,
        )
        with handling(interrupts):
            rep = m.run()
    except MigrateError as e:
        if as_json:
            out.print_json(data={"status": "failed", "error": e.to_wire()})
        fail(e)
        return
    # An interrupt that did not stop the run (it came too late) is reported, never dropped.
    late = exit_status(interrupts)
    sig = signal_name(interrupts.signum) if interrupts.signum is not None else ""
    migrated = rep.status == "migrated"
    if as_json:
        data = rep.to_json()
        if late is not None and migrated:
            data["interrupted_after_commit"] = sig
        out.print_json(data=data)
    elif dry_run:
        out.print(f"[green]ready[/]: {container} can migrate to {to} (nothing was touched)")
    else:
        print_report(rep)
    if late is not None:
        err.print(
            f"[bold yellow]warning[/]: {sig} came after the point of no return (the destination "
            f"had committed): {escape(container)} was migrated, not rolled back"
            if migrated
            else f"[bold yellow]warning[/]: {sig} came as the dry run ended",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(late)


@app.command(rich_help_panel="Move containers")
def recover(
    container: str | None = typer.Argument(
        None,
        help="Container (name or id) whose migration to settle; default: every unsettled "
        "migration to --to.",
    ),
    to: str = typer.Option(
        ..., "--to", help="The destination of that migration: ssh://[USER@]HOST[:PORT] or local://."
    ),
    identity: Path | None = SSH_IDENTITY,
    known_hosts: Path | None = SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = SSH_ACCEPT_NEW,
    agent_command: str = AGENT_COMMAND,
    dest_docker_host: str | None = DEST_DOCKER_HOST,
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON result on stdout."),
) -> None:
    """Settle migrations left in doubt (or whose `migrate run` was killed), from both journals.

    If the destination's journal holds `committed`, the commit is finished (the source copy is
    removed, or stopped if it ran with --keep-source); otherwise the destination's copy is
    deleted and the source copy resumes. Exit codes: 0 settled (or nothing to settle);
    3 a migration of that container is still running; 4 still in doubt (destination
    unreachable, or its agent still serves the migration): nothing was changed for it.
    """
    from migrate.engines.select import open_engine
    from migrate.source.recover import pending_for
    from migrate.source.recover import recover as do_recover

    try:
        factory = channel_factory(
            to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
        )
        engine = open_engine()
        pending = pending_for(container, to, engine)
        settled = do_recover(pending, engine, factory)
    except MigrateError as e:
        if as_json:
            out.print_json(
                data={"status": "in_doubt" if e.exit_code == 4 else "failed", "error": e.to_wire()}
            )
        fail(e)
        return
    if as_json:
        out.print_json(data={"status": "settled", "settled": [s.to_json() for s in settled]})
        return
    if not settled:
        out.print(
            "nothing to recover: no unsettled migration"
            + (f" of {escape(container)}" if container else f" to {escape(to)}")
        )
    for s in settled:
        what = "finished the commit" if s.outcome == "committed" else "rolled back"
        out.print(
            f"{escape(s.container)} ({s.migration_id[:12]}): {what}"
            f" ({', '.join(s.actions) or 'nothing left to do'})",
            highlight=False,
        )


# long: typer declares each option in the signature; the body builds the plan and renders it
@app.command(rich_help_panel="Move containers")
def evacuate(
    to: str = typer.Option(
        ..., "--to", help="Target hosts, comma-separated: ssh://[USER@]HOST[:PORT] or HOST."
    ),
    label: list[str] = typer.Option(  # noqa: B006 - typer reads the default
        [],
        "--label",
        help="Only containers with this label KEY=VALUE (repeatable: all must match).",
    ),
    parallel: int = typer.Option(1, "--parallel", "-j", help="Migrations in flight at once."),
    identity: Path | None = SSH_IDENTITY,
    known_hosts: Path | None = SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = SSH_ACCEPT_NEW,
    agent_command: str = AGENT_COMMAND,
    dest_docker_host: str | None = DEST_DOCKER_HOST,
    keep_source: bool = typer.Option(
        False, "--keep-source", help="Keep each source container (stopped) instead of removing it."
    ),
    bulk: Bulk = BULK,
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON result on stdout."),
) -> None:
    """Drain this host: live-migrate every running container (or those with --label) to the
    target hosts.

    Biggest containers first, each to the target with the most memory available that accepts
    it (a target refusing in its precheck is skipped for the next). Containers that cannot move
    (bind mounts, exec sessions, a failed restore...) are rolled back, left running here and
    reported with the reason. Exit codes: 0 drained; 1 some containers were left here (each
    still running); 2 bad usage; 3 no target reachable; 4 an outcome is in doubt
    (`migrate recover`).
    """
    from migrate.core.errors import EXIT_FAILED, EXIT_IN_DOUBT
    from migrate.engines.select import open_engine
    from migrate.source.evacuate import Outcome, evacuate, parse_labels, parse_targets

    def channels(target: str) -> Callable[[], Any]:
        return channel_factory(
            target, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
        )

    def done(o: Outcome) -> None:
        if as_json:
            return
        mark = "[green]\u2713[/]" if o.moved else "[red]\u2717[/]"
        extra = ""
        if o.report is not None and o.report.downtime_s is not None:
            extra = f" (downtime {o.report.downtime_s:.3f} s)"
        elif o.error:
            extra = f": {o.error.get('message', '')}"
        err.print(
            f"{mark} {escape(o.container)} \u2192 {escape(o.target or '-')} "
            f"{o.status}{escape(extra)}",
            highlight=False,
            soft_wrap=True,
        )

    try:
        targets = parse_targets(to)
        labels = parse_labels(label)
        for t in targets:
            channels(t)  # a malformed target is refused before anything moves
        res = evacuate(
            targets,
            channels,
            open_engine,
            labels=labels,
            parallel=parallel,
            keep_source=keep_source,
            bulk=bulk.value,
            on_done=done,
        )
    except MigrateError as e:
        if as_json:
            out.print_json(data={"status": "failed", "error": e.to_wire()})
        fail(e)
        return
    if as_json:
        out.print_json(data=res.to_json())
    else:
        table = Table(title=f"evacuate \u2192 {escape(to)}: {res.status}")
        for col in ("container", "status", "target", "memory", "downtime", "reason / fix"):
            table.add_column(col, overflow="fold")
        for o in res.outcomes:
            down = "-"
            if o.report is not None and o.report.downtime_s is not None:
                down = f"{o.report.downtime_s:.3f} s"
            why = ""
            if o.error:
                why = str(o.error.get("message", ""))
                if o.error.get("hint"):
                    why += f"\nfix: {o.error['hint']}"
            table.add_row(
                escape(o.container),
                o.status,
                escape(o.target),
                human_bytes(o.memory),
                down,
                escape(why),
            )
        out.print(table)
        for target, said in res.targets.items():
            if not said.get("reachable"):
                msg = (said.get("error") or {}).get("message", "")
                out.print(f"[yellow]target {escape(target)} unreachable[/]: {escape(str(msg))}")
        moved = sum(o.moved for o in res.outcomes)
        out.print(f"{moved} of {len(res.outcomes)} containers moved in {res.total_s:.1f} s")
    if res.status == "in_doubt":
        raise typer.Exit(EXIT_IN_DOUBT)
    if res.status != "drained":
        raise typer.Exit(EXIT_FAILED)
