"""runc's host-wide CRIU configuration file: the lazy-restore rewrite, its host-wide lock, and
the per-dump options that need no global change.

runc reads CRIU options from RUNC_CRIU_CONF for every checkpoint and restore on the host (Docker
20.10 cannot set the per-container ``org.criu.config`` annotation). For the instant Docker
starts a lazy restore we add our options to it, under an exclusive lock that our own
checkpoints and plain restores take shared. The administrator's file (make setup writes
`file-locks` there) is kept: copied aside first, its options kept in ours, and put back
by an atomic rename. Our file carries a marker, so a leftover from a killed agent is
recognised and the administrator's file restored by the next migrate on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from migrate.core.errors import EngineError
from migrate.engines.docker.procscan import flock_holders
from migrate.fs.files import atomic_write

log = logging.getLogger(__name__)

RUNC_CRIU_CONF = Path("/etc/criu/runc.conf")
_CONF_MARKER = "# written by migrate, pid"
_CONF_LOCK = Path("/run/lock/migrate-runc-criu-conf.lock")
CONF_LOCK_WAIT_S = 120.0  # a restore holds it exclusively for about a second


# CRIU options for the dumps we start, in a file of the dump's own work directory: runc passes
# its environment to its CRIU, which reads the file CRIU_CONFIG_FILE names before runc's RPC
# options and runc.conf (those still win). Nothing global is written.
DUMP_CONF = "criu-dump.conf"


def dump_env(work_dir: Path) -> dict[str, str] | None:
    """Environment for a runc checkpoint: CRIU's network lock skipped, when that is safe.

    The lock drops every packet of the container's network namespace while CRIU dumps it, so
    that an established TCP connection's state cannot move under the dump, and the restore
    lifts it again with iptables-restore in the new namespace: 50-60 ms inside the downtime
    here (benchmarks/results/lazy-floor.md), the dump's side ~5 ms. migrate carries no
    established TCP connection: runc is never given --tcp-established, so CRIU refuses to dump
    one and the migration rolls back (tests/e2e/test_run_lazy.py). The lock then protects
    nothing: a listening socket queues what arrives, paused or not. The restore follows the
    dump's choice (CRIU records it in inventory.img), so no restore-side setting is needed.

    Kept (None: runc's own environment) when runc.conf asks for tcp-established (there the
    lock is what keeps those connections intact) or sets its own network-lock, when runc.conf
    cannot be read, or when the administrator already points CRIU_CONFIG_FILE somewhere."""
    if os.environ.get("CRIU_CONFIG_FILE"):
        return None
    try:
        text = RUNC_CRIU_CONF.read_text()
    except FileNotFoundError:
        text = ""
    except OSError:
        return None
    if _conf_options(text) & {"tcp-established", "network-lock"}:
        return None
    conf = work_dir / DUMP_CONF
    conf.write_text("network-lock skip\n")
    return {**os.environ, "CRIU_CONFIG_FILE": str(conf)}


def _conf_saved() -> Path:
    return RUNC_CRIU_CONF.with_name(RUNC_CRIU_CONF.name + ".migrate-saved")


def _conf_options(text: str) -> set[str]:
    """Option names of a CRIU configuration file (one option per line, `#` comments)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split()[0].removeprefix("--"))
    return names


def _write_lazy_conf(work_dir: Path) -> str | None:
    """Called with the lock held exclusively: make runc's CRIU restore lazily with its
    work directory in ``work_dir``. Returns the administrator's file content (None if there
    was none), which :func:`_restore_conf` puts back."""
    try:
        original: str | None = RUNC_CRIU_CONF.read_text()
    except FileNotFoundError:
        original = None
    RUNC_CRIU_CONF.parent.mkdir(parents=True, exist_ok=True)
    if original is not None:
        atomic_write(_conf_saved(), original)  # durable before the file changes
    kept = "" if original is None else original.rstrip("\n") + "\n"
    atomic_write(
        RUNC_CRIU_CONF,
        f"{_CONF_MARKER} {os.getpid()}: put back as soon as the restore has started\n"
        f"{kept}lazy-pages\nwork-dir {work_dir}\n",
    )
    return original


def _restore_conf(original: str | None) -> None:
    """Put the administrator's runc.conf back (or remove ours when there was none)."""
    saved = _conf_saved()
    if original is not None and saved.exists():
        os.replace(saved, RUNC_CRIU_CONF)
    else:
        RUNC_CRIU_CONF.unlink(missing_ok=True)
        saved.unlink(missing_ok=True)


@contextlib.contextmanager
def criu_config_lock(*, exclusive: bool) -> Iterator[None]:
    """Host-wide lock around runc's CRIU configuration file (see RUNC_CRIU_CONF)."""
    lock = _CONF_LOCK if _CONF_LOCK.parent.is_dir() else Path("/tmp") / _CONF_LOCK.name
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Bounded: a stuck holder (a hung restore on this host) must not hang every later
        # checkpoint and restore here without a word.
        deadline = time.monotonic() + CONF_LOCK_WAIT_S
        attempt = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holders = flock_holders(lock)
                    raise EngineError(
                        f"runc's CRIU configuration ({RUNC_CRIU_CONF}) has been locked for "
                        f"{CONF_LOCK_WAIT_S:.0f} s by "
                        + (f"pid {', '.join(map(str, holders))}" if holders else "another process"),
                        hint="a restore on this host is stuck: see that process (ps -p PID), "
                        "then retry",
                    ) from None
                time.sleep(lock_backoff(attempt))
                attempt += 1
        _remove_stale_conf()
        if not exclusive:
            fcntl.flock(fd, fcntl.LOCK_SH)  # downgrade: dumps and plain restores may overlap
        yield
    finally:
        os.close(fd)


def lock_backoff(attempt: int) -> float:
    """Seconds to wait before retrying the runc.conf lock. Every checkpoint and restore on the
    host takes it, the lazy restore inside the downtime: short waits first (a dump holds it
    shared for ~0.1-0.3 s), then at most 50 ms between attempts."""
    return min(0.05, 0.002 * 2.0 ** min(attempt, 5))


def _remove_stale_conf() -> None:
    """Called with the lock held exclusively: a writer puts the administrator's file back
    before it lets the lock go, so a file carrying our marker now is a leftover of an agent
    killed mid-restore. Left there it would turn every later checkpoint on this host into a
    lazy one: put the administrator's file back (or remove ours)."""
    saved = _conf_saved()
    try:
        first = RUNC_CRIU_CONF.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        first = ""
    except OSError:
        return
    if first.startswith(_CONF_MARKER):
        log.warning("putting back %s left behind by a migrate that was killed", RUNC_CRIU_CONF)
        _restore_conf(None if not saved.exists() else "")
    elif saved.exists():
        saved.unlink(missing_ok=True)  # killed before its own file was written: a spare copy


def lazy_restore_blocker() -> str:
    """Why a lazy restore cannot be done here ("" when it can)."""
    try:
        text = RUNC_CRIU_CONF.read_text()
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"{RUNC_CRIU_CONF} is unreadable: {e}"
    if text.startswith(_CONF_MARKER):
        return ""  # a leftover of ours: put right under the lock
    if _conf_options(text) & {"lazy-pages", "work-dir"}:
        # The administrator's own lazy settings would fight ours for the same restore.
        return f"{RUNC_CRIU_CONF} sets lazy-pages or work-dir itself"
    return ""


def settle() -> None:
    """Put the administrator's file back if an agent killed mid-restore left ours there."""
    try:
        first = RUNC_CRIU_CONF.read_text().split("\n", 1)[0]
    except OSError:
        return
    if first.startswith(_CONF_MARKER):
        # Ours, from a live writer or a killed one: taking the lock exclusively waits for
        # the former and puts the latter's back. Only then: the lock also waits for every
        # dump on the host, which a rollback should not when there is nothing to settle.
        with criu_config_lock(exclusive=True):
            pass


@contextlib.contextmanager
def lazy_restore_conf(work_dir: Path) -> Iterator[None]:
    """runc's CRIU restores lazily, its work directory in ``work_dir``, inside the block only
    (the exclusive lock held throughout)."""
    with criu_config_lock(exclusive=True):
        original = _write_lazy_conf(work_dir)
        try:
            yield
        finally:
            _restore_conf(original)
