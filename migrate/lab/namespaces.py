"""A lab host's namespaces: its network namespace (made by `ip netns`) and its mount namespace
(kept by a bind mount of it, no process), how a daemon is started in both, and how a PID is
checked to be in them."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from migrate.core.errors import LabError
from migrate.lab.config import LOCAL_DIR, LabConfig
from migrate.lab.system import (
    CMD_TIMEOUT_S,
    MOUNT,
    NETNS_DIR,
    UNSHARE,
    in_netns,
    in_ns,
    mntns_at,
    mounts,
    unmount_under,
)

log = logging.getLogger(__name__)

NSENTER = Path("/usr/bin/nsenter")
# runc finds criu on PATH: the daemons must see /usr/local/sbin (CRIU 4.2 lives there) first.
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_argv(c: LabConfig, h: str, argv: Sequence[str]) -> list[str]:
    """A daemon's argv, started in the host's network and mount namespaces."""
    return [
        str(NSENTER),
        f"--net={NETNS_DIR / c.netns(h)}",
        f"--mount={c.paths(h).mntns}",
        "--",
        *argv,
    ]


def in_host_ns(c: LabConfig, pid: int, h: str) -> bool:
    return in_netns(pid, NETNS_DIR / c.netns(h)) and in_ns(pid, "mnt", c.paths(h).mntns)


def ensure_mntns(c: LabConfig, h: str) -> None:
    """The host's mount namespace, kept by a bind mount of it (no process), with the
    host's own directory bound at LOCAL_DIR. A handle that is not a mount namespace
    (a plain file left by an earlier boot) is replaced; daemons still running in an
    older namespace are then replaced by the checks of ensure_dockerd / ensure_sshd."""
    p = c.paths(h)
    _ensure_private_dir(c.mntns_dir)
    if mntns_at(p.mntns) is None:
        unmount_under((p.mntns,))  # whatever else is mounted there
        p.mntns.touch()
        # slave: the host sees the machine's mounts made before, and unmounts made
        # later; its own mounts (dockerd's, LOCAL_DIR) never leak out.
        _run([str(UNSHARE), f"--mount={p.mntns}", "--propagation", "slave", "--", "true"])
        log.info("lab %s/%s: created mount namespace %s", c.name, h, mntns_at(p.mntns))
    LOCAL_DIR.mkdir(parents=True, exist_ok=True, mode=0o755)
    p.local.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not local_bound(c, h):
        _run(
            [
                str(NSENTER),
                f"--mount={p.mntns}",
                "--",
                str(MOUNT),
                "--bind",
                str(p.local),
                str(LOCAL_DIR),
            ]
        )


def local_bound(c: LabConfig, h: str) -> bool:
    """LOCAL_DIR inside the host's mount namespace is the host's own directory."""
    p = c.paths(h)
    try:
        want = os.stat(p.local)
    except OSError:
        return False
    r = subprocess.run(
        [str(NSENTER), f"--mount={p.mntns}", "--", "stat", "-c", "%d:%i", str(LOCAL_DIR)],
        check=False,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode == 0 and r.stdout.strip() == f"{want.st_dev}:{want.st_ino}"


def _ensure_private_dir(d: Path) -> None:
    """``d`` as a mount of its own that propagates nowhere (what `ip netns` does for
    /run/netns): a mount namespace bind-mounted where mounts propagate could end up inside
    itself, and the kernel refuses that."""
    d.mkdir(parents=True, exist_ok=True, mode=0o755)
    if str(d) not in mounts():
        _run([str(MOUNT), "--bind", str(d), str(d)])
    _run([str(MOUNT), "--make-private", str(d)])


def _run(argv: Sequence[str]) -> None:
    r = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise LabError(
            f"{' '.join(argv)} failed: {r.stderr.strip()[-500:]}",
            hint="see the message; `migrate lab down` then `up` starts afresh",
        )


def daemon_env() -> dict[str, str]:
    return {"PATH": DAEMON_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
