"""Command line (typer). The only module that prints or exits."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from migrate import __version__
from migrate.errors import MigrateError, UsageError
from migrate.report import Report, human_bytes

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


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


# --- lab (migrate/lab.py) -----------------------------------------------------------------

lab_app = typer.Typer(
    help="Two sandbox hosts on this machine (netns + dockerd + sshd each). See docs/lab.md.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(lab_app, name="lab")

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

    from migrate.lab import Lab, resolve_config

    return Lab(replace(resolve_config(name, subnet, state_dir, run_dir), live_restore=live_restore))


def _print_lab_status(st: Any) -> None:
    t = Table(title=f"lab {escape(st.name)} ({st.subnet})")
    for col in ("host", "netns", "address", "daemon", "pid", "", "detail"):
        t.add_column(col)
    for h in st.hosts:
        for d in (h.dockerd, h.sshd):
            mark = "[green]\u2713[/]" if d.healthy else "[bold red]\u2717[/]"
            netns = h.netns if h.netns_present else f"{h.netns} (absent)"
            pid = "-" if d.pid is None else str(d.pid)
            t.add_row(h.host, netns, h.addr, d.kind, pid, mark, escape(d.detail))
        ok = h.mntns_present and h.local_bound
        mark = "[green]\u2713[/]" if ok else "[bold red]\u2717[/]"
        detail = (
            "its own /srv/migrate-lab-local"
            if ok
            else "local dir not bound"
            if h.mntns_present
            else "absent"
        )
        t.add_row(h.host, netns, h.addr, "mount ns", "-", mark, detail)
    out.print(t)


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
    _print_lab_status(st)
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
    from migrate.errors import LabError

    try:
        st = _lab(name, None, state_dir, run_dir).down(purge=purge)
    except MigrateError as e:
        fail(e)
        return
    if not st.down:
        _print_lab_status(st)
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
        _print_lab_status(st)
    if not st.healthy:
        raise typer.Exit(1)


@lab_app.command("env")
def lab_env(
    name: str = _LAB_NAME,
    state_dir: Path | None = _LAB_STATE,
    run_dir: Path | None = _LAB_RUN,
) -> None:
    """Print shell exports for the lab: eval "$(migrate lab env)"."""
    from migrate.lab import shell_exports

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
    from migrate.lab_config import ansible_inventory

    try:
        cfg = _lab(name, None, state_dir, run_dir).config
    except MigrateError as e:
        fail(e)
        return
    sys.stdout.write(ansible_inventory(cfg))


# --- check (migrate/check.py) -------------------------------------------------------------

_CHECK_MARKS = {"ok": "[green]\u2713[/]", "fail": "[bold red]\u2717[/]", "warn": "[yellow]![/]"}


_SSH_IDENTITY = typer.Option(None, "--identity", "-i", help="SSH private key.")
_SSH_KNOWN_HOSTS = typer.Option(
    None, "--known-hosts", help="known_hosts file to verify the destination's host key."
)
_SSH_ACCEPT_NEW = typer.Option(
    False, "--accept-new-host-key", help="Trust and record an unknown host key (first use)."
)
_AGENT_COMMAND = typer.Option(
    "migrate agent", "--agent-command", help="How to start the agent on the destination."
)
_DEST_DOCKER_HOST = typer.Option(
    None, "--dest-docker-host", help="DOCKER_HOST for the agent on the destination."
)


@app.command()
def check(
    to: str | None = typer.Option(
        None,
        "--to",
        help="Also check the destination ssh://[USER@]HOST[:PORT] (or local://), "
        "through its agent: CRIU, Docker, disk, and whether this host's CPU features are there.",
    ),
    identity: Path | None = _SSH_IDENTITY,
    known_hosts: Path | None = _SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = _SSH_ACCEPT_NEW,
    agent_command: str = _AGENT_COMMAND,
    dest_docker_host: str | None = _DEST_DOCKER_HOST,
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON report on stdout."),
) -> None:
    """Is this host (and the destination) ready to migrate containers: CRIU, Docker, runc,
    kernel, CPU, disk.

    Every problem comes with the fix to apply. Exit codes: 0 ready (warnings allowed);
    3 a required check failed (here or on the destination) or the destination is unreachable;
    2 bad usage.
    """
    from migrate.check import check_destination, run_checks
    from migrate.errors import EXIT_REFUSED
    from migrate.protocol import Connection

    dest = None
    try:
        factory = None
        if to is not None:  # a bad --to is refused before anything runs
            factory = _channel_factory(
                to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
            )
        report = run_checks()
        if factory is not None:
            conn = Connection(factory(), timeout=120.0)
            try:
                dest = check_destination(conn)
                conn.call("bye")
            finally:
                conn.close()
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
        _print_checks(report, f"migrate check: {report.host}")
        if dest is not None:
            _print_checks(dest, f"destination {to}: {dest.host}")
    if not ready:
        raise typer.Exit(EXIT_REFUSED)


def _print_checks(report: Any, title: str) -> None:
    from migrate.check import summarize

    t = Table(title=escape(title))
    t.add_column("check", style="bold")
    t.add_column("", justify="center")
    t.add_column("value", overflow="fold")
    t.add_column("fix", overflow="fold")
    for r in report.results:
        value = escape(r.value)
        if r.problem:
            # CRIU's output can run long; the JSON report carries all of it.
            lines = r.problem.splitlines()
            problem = "\n".join(lines[-4:]) if len(lines) > 4 else r.problem
            colour = "red" if r.status == "fail" else "yellow"
            value += f"\n[{colour}]{escape(problem)}[/]"
        t.add_row(r.name, _CHECK_MARKS[r.status], value, escape(r.fix))
    out.print(t)
    colour = "green" if report.ready else "bold red"
    out.print(f"[{colour}]{escape(summarize(report.results))}[/]", highlight=False)


# --- run / agent / demo (migrate/migration.py, migrate/agent.py) --------------------------


class _RichProgress:
    """Phases as they finish, and a live line for the transfer in flight (stderr only)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._status: Any = None
        self._t0 = time.monotonic()

    def phase(self, name: str, description: str) -> None:
        self._t0 = time.monotonic()
        if self.enabled:
            self._status = self.console.status(f"{description} ...")
            self._status.start()

    def phase_done(self, name: str, seconds: float) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self.enabled:
            self.console.print(f"  [green]\u2713[/] {name:<11} {seconds:7.3f} s", highlight=False)

    def transfer(self, stream: str, raw: int, wire: int, total: int | None) -> None:
        if self._status is not None:
            self._status.update(
                transfer_line(stream, raw, wire, total, time.monotonic() - self._t0)
            )


def transfer_line(stream: str, raw: int, wire: int, total: int | None, elapsed: float) -> str:
    """`rootfs: 12.0 MiB of 40.0 MiB (3.1 MiB on the wire), 96.0 MiB/s`"""
    of = f" of {human_bytes(total)}" if total else ""
    rate = f", {human_bytes(raw / elapsed)}/s" if elapsed > 0.05 else ""
    return f"{stream}: {human_bytes(raw)}{of} ({human_bytes(wire)} on the wire){rate}"


def _print_report(rep: Report) -> None:
    t = Table(title=f"{rep.container} \u2192 {rep.destination} ({rep.status})", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("destination name", f"{rep.dest_name} ({rep.dest_container_id[:12]})")
    t.add_row("strategy", rep.strategy + (f" ({rep.strategy_note})" if rep.strategy_note else ""))
    if rep.stream_channel:
        t.add_row(
            "streams via",
            rep.stream_channel
            + (f" ({rep.stream_channel_note})" if rep.stream_channel_note else ""),
        )
    t.add_row("downtime", "-" if rep.downtime_s is None else f"{rep.downtime_s:.3f} s")
    if rep.postcopy:
        pc = rep.postcopy
        pages = ""
        if "pages_total" in pc:
            pages = (
                f": {pc['pages_total']} pages, {pc.get('pages_on_demand', 0)} fetched on "
                f"demand, {pc.get('pages_background', 0)} pushed in the background"
            )
        t.add_row("post-copy", f"{float(pc.get('postcopy_s', 0)):.3f} s after resuming{pages}")
    t.add_row("total", f"{rep.total_s:.3f} s")
    if rep.staging:
        t.add_row("checkpoint staged", ", ".join(f"{k}: {v}" for k, v in rep.staging.items()))
    b = rep.bytes
    t.add_row(
        "bytes",
        f"{human_bytes(b.raw)} moved, {human_bytes(b.wire)} on the wire "
        f"(image {human_bytes(b.image)}, rootfs {human_bytes(b.rootfs)}, "
        f"checkpoint {human_bytes(b.checkpoint)})",
    )
    if b.rootfs_precopy:
        t.add_row(
            "read-write layer",
            f"{human_bytes(b.rootfs_precopy)} pre-copied while running, "
            f"{human_bytes(b.rootfs)} sent during the pause "
            f"({human_bytes(b.rootfs_kept)} of unchanged files not sent again)",
        )
    t.add_row("phases", ", ".join(f"{k} {v:.3f}s" for k, v in rep.phases.items()))
    t.add_row("source copy", rep.source_action)
    out.print(t)


def _channel_factory(
    to: str,
    identity: Path | None,
    known_hosts: Path | None,
    accept_new_host_key: bool,
    agent_command: str,
    dest_docker_host: str | None,
) -> Callable[[], Any]:
    """How to reach the agent: over SSH, or `local://` (a subprocess on pipes, same host)."""
    extra = f" --docker-host {shlex.quote(dest_docker_host)}" if dest_docker_host else ""
    if to.startswith("local:"):
        from migrate.transport.local import LocalChannel

        argv = shlex.split(agent_command) if agent_command != DEFAULT_AGENT else None
        if argv is None:
            argv = [sys.executable, "-m", "migrate", "agent"]
        if dest_docker_host:
            argv += ["--docker-host", dest_docker_host]
        return lambda: LocalChannel.start(argv)
    from migrate.transport.ssh import SshOptions, connect, parse_destination

    dest = parse_destination(to)
    opts = SshOptions(
        identity=identity, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key
    )

    def factory() -> Any:
        return connect(dest, opts).start_agent(agent_command + extra)

    return factory


DEFAULT_AGENT = "migrate agent"
_BULK = typer.Option(
    "auto",
    "--bulk",
    help="How streams travel over SSH: auto (default: a second connection through the "
    "system's OpenSSH client, several times faster than paramiko; paramiko when that does "
    "not come up) | openssh (required: fail if it does not come up) | paramiko (on the "
    "control connection).",
)


def _check_bulk(bulk: str) -> None:
    if bulk not in ("auto", "openssh", "paramiko"):
        fail(
            UsageError(
                f"--bulk {bulk!r} is not one of auto, openssh, paramiko",
                hint="auto (default), openssh (required) or paramiko (never)",
            )
        )


@app.command()
def run(
    container: str = typer.Argument(..., help="Name or id of the running container to move."),
    to: str = typer.Option(
        ..., "--to", help="Destination: ssh://[USER@]HOST[:PORT] (or local:// for this host)."
    ),
    identity: Path | None = _SSH_IDENTITY,
    known_hosts: Path | None = _SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = _SSH_ACCEPT_NEW,
    agent_command: str = _AGENT_COMMAND,
    name: str | None = typer.Option(None, "--name", help="Container name on the destination."),
    keep_source: bool = typer.Option(
        False, "--keep-source", help="Keep the source container (stopped) instead of removing it."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run the prechecks only."),
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON report on stdout."),
    strategy: str = typer.Option(
        "cold",
        "--strategy",
        help="cold (default: stop-and-copy, can always roll back) | lazy (post-copy: the "
        "container resumes on the destination before its memory has moved; shorter downtime, "
        "but a link lost before the last page has no rollback) | auto (lazy where both hosts "
        "can do it, else cold; choosing it accepts lazy's risk).",
    ),
    dest_docker_host: str | None = _DEST_DOCKER_HOST,
    bind_mounts: str = typer.Option(
        "refuse",
        "--bind-mounts",
        help="refuse (default) | same-path (the path exists on the destination already, e.g. "
        "shared storage) | copy (move the content to the same path on the destination).",
    ),
    bulk: str = _BULK,
    precopy: bool = typer.Option(
        True,
        "--precopy/--no-precopy",
        help="Copy the read-write layer while the container still runs and send only what "
        "changed during the pause (default), or copy all of it during the pause.",
    ),
    staging: str = typer.Option(
        "auto",
        "--staging",
        help="Where the checkpoint images wait on both hosts: auto (default: in memory, i.e. "
        "tmpfs under /dev/shm, when they fit with room to spare, else on disk) | memory "
        "(refuse when they do not fit) | disk.",
    ),
    compression: str = typer.Option(
        "adaptive",
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
    (nothing touched); 4 outcome in doubt (see `migrate recover`).
    """
    from migrate.engines.docker import DockerEngine
    from migrate.migration import Migration, RunOptions, faults_from_env

    if strategy not in ("cold", "lazy", "auto"):
        fail(
            UsageError(
                f"--strategy {strategy!r} is not one of cold, lazy, auto",
                hint="see `migrate run --help`",
            )
        )
    _check_bulk(bulk)
    if bind_mounts not in ("refuse", "same-path", "copy"):
        fail(
            UsageError(
                f"--bind-mounts {bind_mounts!r} is not one of refuse, same-path, copy",
                hint="see docs/mounts-and-networks.md",
            )
        )
    if staging not in ("auto", "memory", "disk"):
        fail(
            UsageError(
                f"--staging {staging!r} is not one of auto, memory, disk",
                hint="see `migrate run --help`",
            )
        )
    if compression not in ("adaptive", "fixed"):
        fail(
            UsageError(
                f"--compression {compression!r} is not one of adaptive, fixed",
                hint="see `migrate run --help`",
            )
        )
    try:
        factory = _channel_factory(
            to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
        )
        engine = DockerEngine()
        progress = _RichProgress(err, enabled=err.is_terminal and not as_json)
        m = Migration(
            RunOptions(
                container=container,
                destination=to,
                name=name,
                keep_source=keep_source,
                dry_run=dry_run,
                strategy=strategy,
                bind_mounts=bind_mounts,
                precopy=precopy,
                staging=staging,
                compression=compression,
                bulk=bulk,
                faults=faults_from_env(),
            ),
            engine,
            factory,
            progress,
        )
        rep = m.run()
    except MigrateError as e:
        if as_json:
            out.print_json(data={"status": "failed", "error": e.to_wire()})
        fail(e)
        return
    if as_json:
        out.print_json(data=rep.to_json())
    elif dry_run:
        out.print(f"[green]ready[/]: {container} can migrate to {to} (nothing was touched)")
    else:
        _print_report(rep)


@app.command()
def recover(
    container: str | None = typer.Argument(
        None,
        help="Container (name or id) whose migration to settle; default: every unsettled "
        "migration to --to.",
    ),
    to: str = typer.Option(
        ..., "--to", help="The destination of that migration: ssh://[USER@]HOST[:PORT] or local://."
    ),
    identity: Path | None = _SSH_IDENTITY,
    known_hosts: Path | None = _SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = _SSH_ACCEPT_NEW,
    agent_command: str = _AGENT_COMMAND,
    dest_docker_host: str | None = _DEST_DOCKER_HOST,
    as_json: bool = typer.Option(False, "--json", help="Print only the JSON result on stdout."),
) -> None:
    """Settle migrations left in doubt (or whose `migrate run` was killed), from both journals.

    If the destination's journal holds `committed`, the commit is finished (the source copy is
    removed, or stopped if it ran with --keep-source); otherwise the destination's copy is
    deleted and the source copy resumes. Exit codes: 0 settled (or nothing to settle);
    3 a migration of that container is still running; 4 still in doubt (destination
    unreachable, or its agent still serves the migration): nothing was changed for it.
    """
    from migrate.engines.docker import DockerEngine
    from migrate.recover import pending_for
    from migrate.recover import recover as do_recover

    try:
        factory = _channel_factory(
            to, identity, known_hosts, accept_new_host_key, agent_command, dest_docker_host
        )
        engine = DockerEngine()
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


@app.command()
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
    identity: Path | None = _SSH_IDENTITY,
    known_hosts: Path | None = _SSH_KNOWN_HOSTS,
    accept_new_host_key: bool = _SSH_ACCEPT_NEW,
    agent_command: str = _AGENT_COMMAND,
    dest_docker_host: str | None = _DEST_DOCKER_HOST,
    keep_source: bool = typer.Option(
        False, "--keep-source", help="Keep each source container (stopped) instead of removing it."
    ),
    bulk: str = _BULK,
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
    from migrate.engines.docker import DockerEngine
    from migrate.errors import EXIT_FAILED, EXIT_IN_DOUBT
    from migrate.evacuate import Outcome, evacuate, parse_labels, parse_targets

    def channels(target: str) -> Callable[[], Any]:
        return _channel_factory(
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

    _check_bulk(bulk)
    try:
        targets = parse_targets(to)
        labels = parse_labels(label)
        for t in targets:
            channels(t)  # a malformed target is refused before anything moves
        res = evacuate(
            targets,
            channels,
            DockerEngine,
            labels=labels,
            parallel=parallel,
            keep_source=keep_source,
            bulk=bulk,
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


@app.command(hidden=False)
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
    from migrate.agent import run_agent

    raise typer.Exit(run_agent(docker_host, staging_dir))


@app.command()
def demo(name: str = _LAB_NAME) -> None:
    """Bring up the sandbox lab and live-migrate a counting container from host a to host b.

    The container counts in memory and serves the count over HTTP (busybox httpd). After the
    move it keeps counting on b from where it was: its memory came along. Runs again cleanly.
    """
    from migrate.demo import DEMO_NAME, run_demo

    lab = _lab(name, None, None, None)
    try:
        st = lab.up()
        _print_lab_status(st)
        out.print(f"migrating [bold]{DEMO_NAME}[/] (a counter in memory) from host a to host b ...")
        res = run_demo(lab)
    except MigrateError as e:
        fail(e)
        return
    from migrate.report import Bytes, Report

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
    _print_report(rep)
    out.print(
        f"count on a before the move: {res.count_before}; on b right after: {res.count_after};"
        f" one second later: {res.count_later} [green]\u2713 it kept counting[/]",
        highlight=False,
    )


# Commands kept in their own modules register themselves on `app` when imported.
from migrate import cli_bundle  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
