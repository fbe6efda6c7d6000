"""Which strategy a run uses: cold, or lazy (post-copy) where both hosts can serve it
(docs/architecture.md, "Post-copy")."""

from __future__ import annotations

import logging

from migrate.checkpoint import criu
from migrate.core.errors import Unsupported
from migrate.source.criu_checks import check_pipe_max_size, pipe_max_size
from migrate.wire.connection import Connection
from migrate.wire.results import PrecheckResult

log = logging.getLogger(__name__)


def source_postcopy_blocker(caps: criu.CriuCapabilities, conn: Connection) -> str:
    """Why this host cannot serve a post-copy ("" when it can)."""
    if not caps.lazy_pages:
        return (
            "`criu check --feature uffd-noncoop` fails on the source (no "
            "non-cooperative userfaultfd)"
        )
    pipe = check_pipe_max_size(
        pipe_max_size(),
        0xFFFFFFFFFF if criu.has_cap_sys_resource() else 0,
    )
    if not pipe.ok:
        return f"{pipe.problem} (fix: {pipe.fix})"
    if conn.ch.tunnels() is None:
        return "this transport cannot carry the page-server link"
    return ""


def choose_strategy(asked: str, source_why: str | None, res: PrecheckResult) -> tuple[str, str]:
    """Resolve --strategy ``asked`` to (strategy, note): lazy needs both sides able to do
    post-copy (refused, exit 3, when they cannot); auto takes lazy where it can and cold
    otherwise, the note saying why. ``res``: the agent's precheck answer."""
    if asked == "cold":
        return "cold", ""
    why = source_why or ""
    if not why:
        lazy = res.lazy
        if lazy is None:
            why = "the destination did not say whether it can restore lazily"
        elif not lazy.ok:
            why = lazy.why or "the destination cannot restore lazily"
    if not why:
        return "lazy", ""
    if asked == "auto":
        log.info("--strategy auto: cold (%s)", why)
        return "cold", f"lazy impossible: {why}"
    raise Unsupported(
        f"--strategy lazy is impossible: {why}",
        hint="fix that (`migrate check --to DEST` lists it), or use --strategy cold, which "
        "always works and can always roll back",
        details={"strategy": "lazy"},
    )
