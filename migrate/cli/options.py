"""Options shared by the commands that reach a destination, and how the agent is reached."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

SSH_IDENTITY = typer.Option(None, "--identity", "-i", help="SSH private key.")
SSH_KNOWN_HOSTS = typer.Option(
    None, "--known-hosts", help="known_hosts file to verify the destination's host key."
)
SSH_ACCEPT_NEW = typer.Option(
    False, "--accept-new-host-key", help="Trust and record an unknown host key (first use)."
)
AGENT_COMMAND = typer.Option(
    "migrate agent", "--agent-command", help="How to start the agent on the destination."
)
DEST_DOCKER_HOST = typer.Option(
    None, "--dest-docker-host", help="DOCKER_HOST for the agent on the destination."
)


def channel_factory(
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
    from migrate.transport.destination import SshOptions, parse_destination
    from migrate.transport.ssh import connect

    dest = parse_destination(to)
    opts = SshOptions(
        identity=identity, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key
    )

    def factory() -> Any:
        return connect(dest, opts).start_agent(agent_command + extra)

    return factory


DEFAULT_AGENT = "migrate agent"


# Choice options: typer checks the value and lists the choices in --help and in its usage
# error (exit 2, like every usage error here).
class Bulk(StrEnum):
    auto = "auto"
    openssh = "openssh"
    paramiko = "paramiko"


class Strategy(StrEnum):
    cold = "cold"
    lazy = "lazy"
    auto = "auto"


class BindMounts(StrEnum):
    refuse = "refuse"
    same_path = "same-path"
    copy = "copy"


class Staging(StrEnum):
    auto = "auto"
    memory = "memory"
    disk = "disk"


class Compression(StrEnum):
    adaptive = "adaptive"
    fixed = "fixed"


BULK = typer.Option(
    Bulk.auto,
    "--bulk",
    help="How streams travel over SSH: auto (default: a second connection through the "
    "system's OpenSSH client, several times faster than paramiko; paramiko when that does "
    "not come up) | openssh (required: fail if it does not come up) | paramiko (on the "
    "control connection).",
)
