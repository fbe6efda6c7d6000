"""The sandbox lab: two "hosts" on this machine, each a network namespace with its own
dockerd and sshd, joined by a veth pair on a private subnet.

Layout (lab name ``mlab``, subnet ``10.213.7.0/24``, the defaults)::

    netns mlab-a  lab0 10.213.7.1/24 ====veth==== lab0 10.213.7.2/24  netns mlab-b
                  mgmt0 --veth-- mlab-a (root ns)      mlab-b (root ns) --veth-- mgmt0
                                 10.213.7.254/32       10.213.7.254/32

``lab0`` is the link between the hosts. The two ``mgmt0`` links are point-to-point routes
(/32, no bridge, no forwarding) that let the root namespace reach both hosts at their lab
address from 10.213.7.254, so a test process can talk to either host without nsenter.

Each host runs ``dockerd --experimental`` (its own data root, exec root, socket, pidfile and
containerd) and ``sshd`` (its own host key; key-only root login; ``SetEnv DOCKER_HOST`` so remote
commands reach that host's daemon), both started with ``nsenter --net --mount`` and stopped by
the PID in their pidfiles. ``ip netns exec`` is never used: it remounts /sys and dockerd then
loses the cgroup v1 mounts.

Each host also has a mount namespace of its own (``unshare --mount --propagation slave``, kept
by a bind mount of it at ``RUN/mntns/<host>``, no process needed) in which its directory
``STATE/<host>/local`` is bound at LOCAL_DIR (``/srv/migrate-lab-local``): the one path whose
content differs between the hosts, as on two machines. dockerd, sshd (hence the agent) and
whatever :meth:`LabHost.run` starts run in it; everything else is the shared filesystem.

Persistent state (data roots, keys, logs) lives in the state dir, runtime state (sockets,
pidfiles, exec roots) in the run dir; see :class:`LabConfig`. Everything here needs root.

This module is the orchestration (:class:`Lab`) and the handle on one host (:class:`LabHost`);
the parts live beside it: network.py, namespaces.py, dockerd.py, sshd.py, status.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.core.errors import LabError
from migrate.fs.files import atomic_write
from migrate.lab.config import DOCKERD, HOSTS, SSHD, LabConfig, check_host, lab_env
from migrate.lab.dockerd import ensure_dockerd, stop_dockerd, stop_leftover_containerd, wait_dockerd
from migrate.lab.namespaces import NSENTER, ensure_mntns
from migrate.lab.network import check_subnet_free, ensure_network, remove_network
from migrate.lab.sshd import SSH_KEYSCAN, ensure_keys, ensure_sshd, sshd_pid, write_known_hosts
from migrate.lab.status import LabStatus, lab_status
from migrate.lab.system import (
    CMD_TIMEOUT_S,
    IP,
    MOUNT,
    NETNS_DIR,
    SSH_KEYGEN,
    UMOUNT,
    UNSHARE,
    is_under,
    mntns_at,
    mounts,
    stop_pid,
    unmount_under,
)

log = logging.getLogger(__name__)

PIPE_MAX_SIZE = 4194304  # CRIU lazy pages need pipes this big (PLATFORM.md)
PIPE_MAX_SIZE_FILE = Path("/proc/sys/fs/pipe-max-size")
SSH = Path("/usr/bin/ssh")


# --- hosts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabHost:
    """One sandbox host: run commands in its network and mount namespaces with its
    DOCKER_HOST (as its sshd's sessions do)."""

    lab: str
    name: str
    netns: str
    addr: str
    docker_host: str
    mntns_path: Path

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def url(self) -> str:
        return f"ssh://root@{self.addr}"

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` wrapped to run inside this host's network and mount namespaces. Entering
        a mount namespace moves to its root: ``--wd=.`` keeps the caller's directory (the
        path is opened before the switch; the filesystem is the same)."""
        return [
            str(NSENTER),
            f"--net={self.netns_path}",
            f"--mount={self.mntns_path}",
            "--wd=.",
            "--",
            *cmd,
        ]

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.docker_host
        env.update(extra or {})
        return env

    def run(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = CMD_TIMEOUT_S,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this host's netns with its DOCKER_HOST (plus ``env``); text output
        captured. Raises CalledProcessError when ``check`` and it fails."""
        return subprocess.run(
            self.argv(cmd),
            env=self.environ(env),
            check=check,
            timeout=timeout,
            input=input,
            capture_output=True,
            text=True,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(
        self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(cmd), env=self.environ(env), **kwargs)


# --- the lab -----------------------------------------------------------------------------


class Lab:
    """``Lab(config).up()`` brings both hosts up (idempotent), ``.down()`` tears them down,
    ``.status()`` checks them, ``.env()`` says how to use them, ``.host("a")`` runs commands."""

    def __init__(self, config: LabConfig | None = None) -> None:
        self.config = config or LabConfig()

    # -- public API

    def host(self, name: str) -> LabHost:
        c = self.config
        return LabHost(
            c.name,
            check_host(name),
            c.netns(name),
            c.addr(name),
            c.docker_host(name),
            c.paths(name).mntns,
        )

    def env(self) -> dict[str, str]:
        return lab_env(self.config)

    def ssh_argv(self, host: str, *cmd: str) -> list[str]:
        """OpenSSH client argv to ``host`` as root, with the lab's key and strict host keys."""
        c = self.config
        return [
            str(SSH),
            "-F",
            "/dev/null",
            "-i",
            str(c.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={c.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            f"root@{c.addr(host)}",
            *cmd,
        ]

    def up(self) -> LabStatus:
        """Bring the lab up; reuse what is healthy, replace what is stale or dead."""
        _require_root()
        _require_tools()
        with self._locked():
            c = self.config
            check_subnet_free(c)
            _ensure_pipe_max_size()
            for d in (c.state_dir, c.run_dir, c.ssh_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o755)
            atomic_write(c.saved_config, json.dumps(c.to_json(), indent=2) + "\n")
            ensure_keys(c)
            ensure_network(c)
            # A host whose mount namespace is missing (a lab from before them, a reboot) has
            # its daemons replaced anyway: stop them first, so that what they have mounted
            # in the root namespace is gone before a new namespace copies the mount table.
            for h in HOSTS:
                if mntns_at(c.paths(h).mntns) is None:
                    self._stop_host(h)
            for h in HOSTS:
                ensure_mntns(c, h)
            started = [h for h in HOSTS if ensure_dockerd(c, h)]
            for h in HOSTS:
                ensure_sshd(c, h)
            for h in started:
                wait_dockerd(c, h)
            write_known_hosts(c)
            st = lab_status(c)
            if not st.healthy:
                bad = "; ".join(
                    f"{h.host}: {d.kind} {d.detail}"
                    for h in st.hosts
                    for d in (h.dockerd, h.sshd)
                    if not d.healthy
                )
                raise LabError(
                    f"lab {c.name} is not healthy after up: {bad}",
                    hint=f"see the logs in {c.state_dir}/a and /b",
                )
            return st

    def down(self, purge: bool = False) -> LabStatus:
        """Stop every daemon by its pidfile, unmount what they left, remove the namespaces.
        ``purge`` also deletes the state (data roots with their images, keys, logs)."""
        _require_root()
        with self._locked():
            c = self.config
            for h in HOSTS:
                self._stop_host(h)
            # Dropping the handles frees the namespaces and every mount left in them (the
            # daemons and their containers are gone by now).
            unmount_under((c.mntns_dir,))
            remove_network(c)
            leftover = [m for m in mounts() if is_under(m, (c.state_dir, c.run_dir))]
            if leftover:
                raise LabError(
                    f"lab {c.name}: still mounted after down: {', '.join(leftover[:5])}",
                    hint="unmount them (umount -l PATH) and run down again",
                )
            if c.run_dir.exists():
                shutil.rmtree(c.run_dir)
            if purge and c.state_dir.exists():
                shutil.rmtree(c.state_dir)
            st = lab_status(c)
        if purge:
            with contextlib.suppress(FileNotFoundError):
                c.lock_file.unlink()
        return st

    def status(self) -> LabStatus:
        return lab_status(self.config)

    # -- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One up/down at a time per lab (tests in parallel sessions share a lab)."""
        lf = self.config.lock_file
        lf.parent.mkdir(parents=True, exist_ok=True)
        with open(lf, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _stop_host(self, h: str) -> None:
        c = self.config
        p = c.paths(h)
        stop_dockerd(c, h)
        stop_leftover_containerd(c, h)
        pid = sshd_pid(c, h)
        if pid is not None:
            stop_pid(pid, f"sshd {c.name}/{h}")
        # What a killed dockerd left mounted (container rootfs, shm, netns files).
        unmount_under((p.data_root, p.exec_root))
        for stale in (p.docker_pidfile, p.socket, p.sshd_pidfile):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


# --- helpers: environment ---------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, dockerd, sshd)", hint="run it as root")


def _require_tools() -> None:
    missing = [
        str(t)
        for t in (DOCKERD, SSHD, NSENTER, IP, SSH_KEYGEN, SSH_KEYSCAN, UMOUNT, MOUNT, UNSHARE)
        if not t.exists()
    ]
    if missing:
        raise LabError(f"missing: {', '.join(missing)}", hint="run `make setup` (as root)")


def _ensure_pipe_max_size() -> None:
    try:
        cur = int(PIPE_MAX_SIZE_FILE.read_text())
        if cur < PIPE_MAX_SIZE:
            PIPE_MAX_SIZE_FILE.write_text(f"{PIPE_MAX_SIZE}\n")
            log.info("raised fs.pipe-max-size from %d to %d", cur, PIPE_MAX_SIZE)
    except (OSError, ValueError) as e:
        raise LabError(
            f"cannot raise fs.pipe-max-size to {PIPE_MAX_SIZE}: {e}",
            hint=f"echo {PIPE_MAX_SIZE} > {PIPE_MAX_SIZE_FILE}",
        ) from e
