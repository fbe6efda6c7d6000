"""Post-copy on the destination: the container runs while a lazy-pages daemon fetches its
memory from the source through the relay and the SSH tunnel (checkpoint/postcopy.py); a
supervisor thread follows it to the last page, and stops the copy if it cannot get there."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from migrate.agent.state import LAZY_WORK_ROOT, MigrationState, Part, PostcopyRun
from migrate.checkpoint import criu, lazy_pages, postcopy
from migrate.core.errors import MigrateError, PostcopyFailed, ProtocolError, Unsupported
from migrate.engines.base import LazyRestore
from migrate.wire.methods import PostcopyWait
from migrate.wire.results import PostcopyResult, RestoreResult, RestoreSteps

log = logging.getLogger(__name__)

# Post-copy: the longest a restored container may wait for the rest of its memory.
POSTCOPY_TIMEOUT_S = 1800.0


@dataclass
class Postcopies(Part):
    """Post-copy restores of this session and the threads that follow them."""

    # long: the post-copy restore inside the downtime, with its timing marks, reads best in one place
    def restore(self, m: MigrationState, port: int, t0: float) -> RestoreResult:
        """Start the container while its memory is still on the source: a lazy-pages daemon
        fetches it through the relay and the SSH tunnel (postcopy.py). Answers as soon as the
        container runs; a supervisor thread follows the rest (h_postcopy_wait)."""
        assert m.journal is not None
        if not 0 < port < 65536:
            raise ProtocolError(f"restore: bad page-server port {port}")
        # The precheck probed CRIU's features (~0.2 s of `criu check` runs); inside the
        # downtime only what may have changed since: runc.conf, and that CRIU is still there.
        criu_bin = criu.find_criu()
        why = self.engine.lazy_restore_blocker() or ("" if criu_bin else "CRIU is missing")
        if why or criu_bin is None:
            raise Unsupported(
                f"post-copy restore impossible here: {why}", hint="use --strategy cold"
            )
        full = self.s.staging(m)
        target = self.engine.checkpoint_dir(m.container_id, m.checkpoint)
        # Only the small non-memory images: Docker gets hard links (a copy across file
        # systems), the daemon reads these. Inside the downtime: no byte copied needlessly.
        shutil.copytree(full, target, copy_function=_link_or_copy)
        t_copied = time.monotonic()
        work = LAZY_WORK_ROOT / f"post-{m.id[:12]}"
        shutil.rmtree(work, ignore_errors=True)
        pc: PostcopyRun | None = None
        relay = postcopy.PageRelay(port, on_broken=lambda why: self.stop_copy(m, why))
        daemon: lazy_pages.LazyPagesDaemon | None = None
        try:
            # -v4: the daemon logs each page fault, which is how on-demand pages are counted.
            daemon = lazy_pages.LazyPagesDaemon(
                criu_bin, full, work, verbosity=4, page_server=(postcopy.LOOPBACK, relay.port)
            )
            t_daemon = time.monotonic()
            self.engine.start_from_checkpoint(
                m.container_id, m.checkpoint, lazy=LazyRestore(work_dir=work)
            )
            t_started = time.monotonic()
            t_running = self.s.wait_running(m.container_id)
            pc = PostcopyRun(daemon=daemon, relay=relay, full=full, t_running=t_running)
            m.postcopy = pc
        finally:
            if pc is None:  # not running: nothing resumed, the source's copy is the container
                if daemon is not None:
                    daemon.kill()
                relay.close()
                criu.keep_logs(work, f"{m.id}-dest")
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(full, ignore_errors=True)
        threading.Thread(
            target=self._supervise, args=(m, pc), daemon=True, name=f"postcopy-{m.id[:8]}"
        ).start()
        self.s.wait_fault("restoring", m.name)
        running_s = t_running - t0
        m.state = "restored"
        m.journal.append("restored", restore_s=running_s, running_s=running_s, mode="postcopy")
        # Where the downtime's restore part goes (benchmarks/results/lazy.md).
        steps = RestoreSteps(
            images=t_copied - t0,
            daemon=t_daemon - t_copied,
            docker_start=t_started - t_daemon,
            until_running=t_running - t_started,
        )
        return RestoreResult(
            container_id=m.container_id,
            restore_s=running_s,
            running_s=running_s,
            restore_mode="postcopy",
            restore_steps=steps,
        )

    def _supervise(self, m: MigrationState, pc: PostcopyRun) -> None:
        """Wait for the last page; on any failure stop the destination copy (its memory is
        incomplete) before anything else; journal the outcome; clean up."""
        try:
            try:
                rc: int | None = pc.daemon.proc.wait(timeout=POSTCOPY_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - TimeoutExpired, or anything: a failure
                rc = None
            t_end = time.monotonic()
            if rc == 0 and not pc.relay.broken:
                stats = postcopy.page_stats(pc.daemon.log_path)
                took = t_end - pc.t_running
                if stats is None:
                    pc.result = PostcopyResult(postcopy_s=took, bytes=pc.relay.bytes_down)
                else:
                    pc.result = PostcopyResult(
                        postcopy_s=took,
                        bytes=pc.relay.bytes_down,
                        pages_total=stats.total,
                        pages_copied=stats.copied,
                        pages_on_demand=stats.faults,
                        pages_background=stats.background,
                    )
                if m.journal is not None:
                    m.journal.append("postcopy_done", **pc.result.to_wire())
                return
            why = pc.relay.broken or (
                f"the lazy-pages daemon did not finish in {POSTCOPY_TIMEOUT_S:.0f} s"
                if rc is None
                else f"the lazy-pages daemon failed (exit {rc})"
            )
            self.stop_copy(m, why)
            tail = log_tail_safe(pc.daemon.log_path)
            pc.error = PostcopyFailed(
                f"post-copy on the destination failed: {why}; the destination copy was "
                f"stopped (its memory is incomplete)\nlazy-pages log, last lines:\n{tail}",
                details={"criu_log": tail},
            )
            if m.journal is not None:
                m.journal.append("postcopy_failed", reason=why)
        finally:
            pc.daemon.kill()
            pc.relay.close()
            criu.keep_logs(pc.daemon.work, f"{m.id}-dest")
            shutil.rmtree(pc.daemon.work, ignore_errors=True)
            shutil.rmtree(pc.full, ignore_errors=True)
            pc.done.set()

    def stop_copy(self, m: MigrationState, why: str) -> None:
        """Kill the destination copy whose memory can no longer be completed. Runs from the
        relay's thread too: a fresh engine client, and only once."""
        pc = m.postcopy
        if pc is not None:
            with pc.lock:
                if pc.stopped:
                    return
                pc.stopped = True
        log.error("stopping %s: post-copy failed (%s)", m.name, why)
        try:
            self.s.engine_factory().kill(m.container_id)
        except MigrateError as e:
            log.error("could not stop %s: %s", m.name, e.message)

    def h_postcopy_wait(self, req: PostcopyWait) -> PostcopyResult:
        migration_id, timeout_s = req.migration_id, req.timeout_s
        m = self.s.mig(migration_id)
        pc = m.postcopy
        if pc is None:
            raise ProtocolError(f"migration {migration_id} has no post-copy running")
        if not pc.done.wait(max(0.0, min(timeout_s, POSTCOPY_TIMEOUT_S))):
            self.stop_copy(m, f"not finished after {timeout_s:.0f} s")
            pc.daemon.kill()  # the supervisor journals and cleans up
            pc.done.wait(30)
        if pc.error is not None:
            raise pc.error
        if pc.result is None:
            raise PostcopyFailed("post-copy did not finish", hint="see the agent's log")
        return pc.result

    def stop_all(self) -> None:
        """The agent is leaving while a post-copy still runs (the source went away): stop the
        container first, then the daemon (never the other way round: postcopy.py)."""
        for m in self.s.migrations.values():
            pc = m.postcopy
            if pc is None or pc.done.is_set():
                continue
            self.stop_copy(m, "the agent is exiting before the last page arrived")
            pc.daemon.kill()
            pc.done.wait(30)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def log_tail_safe(path: Path) -> str:
    try:
        return criu.log_tail(path)
    except OSError:
        return ""
