"""Which channel a session's streams take: the OpenSSH bulk connection
(transport/openssh.py) attached to the RPC connection, or the control channel itself.

Lives above both: it asks the agent for the bulk socket (through the typed client), then
starts the transport's BulkLink and hands it to the client's Connection as its ``bulk``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from migrate.core.errors import BulkUnavailable, ConnectionLost, MigrateError, Timeout
from migrate.transport import BulkTarget
from migrate.transport.bulk_sink import parse_token_line
from migrate.transport.openssh import BulkLink
from migrate.wire.client import AgentClient
from migrate.wire.methods import BulkOpen

log = logging.getLogger(__name__)

BULK_MODES = ("auto", "openssh", "paramiko")


def unavailable_hint(mode: str) -> str:
    return (
        "check that `ssh` (OpenSSH) is installed on this host and that the same key logs in "
        "with it non-interactively (`ssh -o BatchMode=yes -i KEY USER@HOST true`); or pass "
        "--bulk paramiko to stream over the control connection (slower)"
        if mode == "openssh"
        else ""
    )


# Test hook (MIGRATE_FAULTS): the bulk connection gets an identity that does not exist, so
# OpenSSH has no key to offer and its authentication fails.
FAULT_NO_KEY = "source:bulk_no_key"
_MISSING_KEY = Path("/nonexistent/migrate-bulk-test-key")


@dataclass(frozen=True)
class StreamChannel:
    """Which channel this session's streams use, and why (for the report)."""

    name: str  # openssh | paramiko | local
    note: str = ""
    pid: int | None = None  # the ssh child's, for openssh


def attach_bulk(
    client: AgentClient,
    mode: str,
    agent_methods: frozenset[str],
    faults: frozenset[str] = frozenset(),
) -> StreamChannel:
    """Open the bulk connection for ``client``'s connection per ``--bulk`` (right after the
    hello, long before any freeze). ``auto``: OpenSSH when it comes up, else paramiko with the reason;
    ``openssh``: BulkUnavailable instead of falling back; ``paramiko``: never tried."""
    if mode not in BULK_MODES:
        raise ValueError(f"unknown bulk mode {mode!r}")
    conn = client.conn
    target_of = conn.ch.bulk()
    if target_of is None:
        if mode == "openssh":
            raise BulkUnavailable(
                f"--bulk openssh needs an ssh:// destination (this one is {conn.ch.peer})",
                hint="use --bulk auto or paramiko with local://",
            )
        return StreamChannel("local")
    if mode == "paramiko":
        return StreamChannel("paramiko", "--bulk paramiko")
    try:
        if "bulk_open" not in agent_methods:
            raise BulkUnavailable(
                "the destination's migrate has no bulk connection (older)",
                hint="install the same migrate version on both hosts",
            )
        target = target_of()
        if FAULT_NO_KEY in faults:
            target = BulkTarget(**{**target.__dict__, "identity": _MISSING_KEY})
        # An answer without two strings is a ProtocolError (the typed client's), which
        # falls back or refuses below like any other problem with the bulk connection.
        res = client.call(BulkOpen()).result
        sock, token = res.socket, res.token
        if (
            not sock.startswith("/")
            or "\0" in sock
            or parse_token_line(token.encode() + b"\n") is None
        ):
            raise BulkUnavailable("the agent's answer to bulk_open is malformed")
        try:
            link = BulkLink.start(target, sock, token)
        except OSError as e:
            raise BulkUnavailable(f"cannot start ssh: {e.strerror or e}") from None
    except (ConnectionLost, Timeout):
        raise  # the control connection itself: the caller's error path
    except MigrateError as e:
        if mode == "openssh":
            raise BulkUnavailable(
                e.message, hint=e.hint or unavailable_hint(mode), details=e.details
            ) from None
        log.info("--bulk auto: streaming over paramiko (%s)", e.message)
        return StreamChannel("paramiko", f"OpenSSH bulk connection unavailable: {e.message}")
    conn.bulk = link
    return StreamChannel("openssh", pid=link.pid)
