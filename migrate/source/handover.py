"""The hand-over and its way back. After `restored`: `commit` (the point of no return, once
the agent journals `committed`), the wait for the last pages of a post-copy, `bye`, and the
source copy retired. Before it: the rollback (the agent deletes what it made, over a new
session if the old one died, and the source is resumed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from migrate.checkpoint import criu, postcopy
from migrate.core.errors import (
    Busy,
    ConnectionLost,
    InDoubt,
    MigrateError,
    MigrationFailed,
    PrecheckFailed,
    ProtocolError,
    Timeout,
)
from migrate.engines.base import ContainerSpec
from migrate.source.limits import (
    ABORT_RETRY_S,
    BYE_TIMEOUT_S,
    CALL_TIMEOUT_S,
    DUMP_WAIT_S,
    PAGE_SERVER_EXIT_S,
    POSTCOPY_TIMEOUT_S,
)
from migrate.transport import Channel
from migrate.wire.connection import Connection
from migrate.wire.session import open_session

if TYPE_CHECKING:
    from migrate.source.migration import Migration

log = logging.getLogger(__name__)


def commit(m: Migration, spec: ContainerSpec) -> None:
    assert m.conn is not None
    m.fault("source:before_commit")
    with m.timer.phase("commit", "hand-over"):
        # The last place an interrupt rolls back; after it, the migration completes.
        m.interrupts.pass_point_of_no_return()
        m.journal.append("committing")
        m.commit_sent = True
        try:
            m.conn.call("commit", migration_id=m.id)
        except (ConnectionLost, Timeout, ProtocolError) as e:
            m.journal.append("in_doubt", reason=e.message)
            raise InDoubt(
                f"the destination restored {spec.name} but the answer to `commit` was lost "
                f"({e.message}); the source copy is kept paused",
                hint=f"run `migrate recover {spec.name} --to {m.opts.destination}` "
                "to settle it from both journals",
                details={"migration_id": m.id},
            ) from None
        except MigrateError:
            # The agent answered: it refused to commit (its copy is not running, say) and
            # journalled nothing, so this is still before the point of no return.
            m.commit_sent = False
            raise
        m.journal.append("committed")
        m.fault("source:after_commit")


def wait_postcopy(m: Migration, spec: ContainerSpec) -> None:
    """Committed, running on the destination; wait until every page has moved. A failure
    here has no rollback (docs/architecture.md, "Post-copy"): report it, exit 4."""
    assert m.conn is not None and m.page_server is not None
    m.journal.append("postcopy")
    if m.opts.faults.on("source:wait:postcopy") and m.tunnel is not None:
        m.tunnel.hold()  # the test breaks the link while post-copy is surely unfinished
    m.fault("source:postcopy")
    ps = m.page_server
    with m.timer.phase("postcopy", "moving the rest of the memory"):
        t0 = time.monotonic()
        try:
            res = m.conn.call(
                "postcopy_wait",
                migration_id=m.id,
                timeout_s=POSTCOPY_TIMEOUT_S,
                timeout=POSTCOPY_TIMEOUT_S + CALL_TIMEOUT_S,
            )
        except MigrateError as e:
            raise _postcopy_failed(m, spec, ps, e) from None
        rc = ps.wait(PAGE_SERVER_EXIT_S)
        if rc != 0:
            log.warning(
                "the source's page server ended with %s after the last page: %s",
                rc,
                ps.failure_text()[-500:],
            )
        ps.kill()
    m.postcopy = {"postcopy_s": float(res.get("postcopy_s") or time.monotonic() - t0)}
    for k in ("pages_total", "pages_on_demand", "pages_background", "bytes"):
        if isinstance(res.get(k), int):
            m.postcopy[k] = res[k]
    m.journal.append("postcopy_done", **m.postcopy)


def _postcopy_failed(
    m: Migration, spec: ContainerSpec, ps: postcopy.PageServer, e: MigrateError
) -> MigrateError:
    """The source copy kept frozen and the failure journalled; the error to raise."""
    # Reset the page server's connection first: CRIU then fails the dump and
    # leaves the tasks frozen. Killing CRIU instead would thaw them.
    if m.tunnel is not None:
        m.tunnel.close()
        m.tunnel = None
    rc = ps.wait(PAGE_SERVER_EXIT_S)
    ps.kill()
    try:
        m.engine.ensure_frozen(spec.id)
    except MigrateError as e2:
        log.error("could not keep the source copy frozen: %s", e2.message)
    m.journal.append("postcopy_failed", reason=e.message, page_server_rc=rc)
    m.paused = False  # never unpaused by us: the operator decides
    return postcopy.interrupted(
        e.message,
        spec.name,
        {
            "cause": e.code,
            "migration_id": m.id,
            "page_server": ps.failure_text()[-2000:],
        },
    )


def bye(m: Migration) -> None:
    assert m.conn is not None
    try:
        # Committed: the answer only lets the agent end cleanly. Bounded, so a link that
        # dies now delays retiring the stale source copy by seconds, not by the
        # dead-peer timeout.
        m.conn.call("bye", timeout=BYE_TIMEOUT_S)
    except MigrateError:
        pass


def finish_source(m: Migration, spec: ContainerSpec) -> str:
    with m.timer.phase("cleanup", "retiring the source copy"):
        st = m.engine.state(spec.id)
        if st.running or st.paused:  # after post-copy CRIU has killed the tasks already
            m.engine.kill(spec.id)
        if m.opts.keep_source:
            action = "stopped"
        else:
            m.engine.remove(spec.id, force=True)
            action = "removed"
        m.paused = False
        m.journal.append("done", source_action=action)
        return action


# --- rollback -------------------------------------------------------------------------


def rollback(m: Migration, cause: MigrateError) -> MigrateError:
    m.interrupts.disarm()  # a rollback cut in half would leave the source paused
    if m.commit_sent:
        return cause
    problems: list[str] = []
    if m.dest_created:
        try:
            _abort_remote(m)
        except MigrateError as e:
            problems.append(
                f"cleaning up the destination failed: {e.message} (the agent removes its "
                "copy when it notices the lost connection; `migrate recover` settles it)"
            )
    if m.page_server is not None:
        # Before the unpause: the dump's CRIU still holds the frozen tasks.
        m.page_server.kill()
    # Interrupted during the dump (SIGINT kills our runc child, not its CRIU): the dump
    # ends by putting the freezer back as it found it, frozen, so the container is
    # resumed only once nothing works on our staging directory any more.
    dumping = criu.wait_until_unused(m.staging, DUMP_WAIT_S) if m.paused else []
    if dumping:
        problems.append(
            f"a CRIU dump (pids {', '.join(map(str, dumping))}) still writes into "
            f"{m.staging}: the source stays paused until `migrate recover` (which "
            "waits for it)"
        )
    elif m.paused:
        try:
            m.engine.unpause(m.opts.container)
            m.paused = False
        except MigrateError as e:
            problems.append(f"unpausing the source failed: {e.message}")
    touched = m.dest_created or m.t_pause is not None
    if touched or m.journal.records():
        # `rollback_incomplete` leaves the migration for `migrate recover` to settle.
        event = "rolled_back" if not problems else "rollback_incomplete"
        m.journal.append(event, cause=cause.code, problems=problems)
    if not touched:
        return cause
    msg = f"{cause.message}\nRolled back: {m.opts.container} runs on the source again"
    msg += "; nothing was left on the destination." if not problems else ". " + "; ".join(problems)
    err = MigrationFailed(msg, hint=cause.hint, details={"cause": cause.code, **cause.details})
    return err


def _abort_remote(m: Migration) -> None:
    """Tell the agent to delete what it made; over a new session if the old one died, and
    again for a while if the link is down (a link that comes back within
    ABORT_RETRY_S is cleaned up now rather than by `migrate recover`)."""
    if m.conn is not None:
        try:
            m.conn.call("abort", migration_id=m.id, timeout=60)
            return
        except (ConnectionLost, Timeout):
            log.warning("agent connection lost; cleaning up over a new session")
        except MigrateError:
            pass
        try:
            m.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead channel may fail any way
            pass
    deadline = time.monotonic() + ABORT_RETRY_S
    while True:
        try:
            abort_over_new_session(m.connect, m.id)
            return
        except MigrateError as e:
            if time.monotonic() > deadline or not isinstance(
                e, (ConnectionLost, Timeout, PrecheckFailed, Busy)
            ):
                raise
            log.warning("cleanup on the destination failed (%s); retrying", e.message)
            time.sleep(2.0)


# --- helpers --------------------------------------------------------------------------


def abort_over_new_session(connect: Callable[[], Channel], migration_id: str) -> None:
    """Ask a fresh agent to roll back ``migration_id`` from its journal."""
    conn = Connection(connect(), timeout=CALL_TIMEOUT_S)
    try:
        open_session(conn)
        conn.call("abort", migration_id=migration_id, timeout=60)
        conn.call("bye")
    finally:
        conn.close()
