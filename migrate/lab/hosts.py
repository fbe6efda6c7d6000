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
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.core.errors import LabError
from migrate.fs.files import atomic_write
from migrate.lab.config import (
    DEFAULT_NAME,
    DEFAULT_RUN_ROOT,
    DEFAULT_STATE_ROOT,
    DEFAULT_SUBNET,
    DOCKERD,
    HOSTS,
    LOCAL_DIR,
    SSH_PORT,
    SSHD,
    HostPaths,
    LabConfig,
    check_host,
    dockerd_argv,
    lab_env,
    migrate_executable,
    resolve_config,
    shell_exports,
    sshd_argv,
    sshd_config_text,
)
from migrate.lab.system import (
    CMD_TIMEOUT_S,
    IP,
    KILL_TIMEOUT_S,
    MOUNT,
    NETNS_DIR,
    POLL_S,
    SSH_KEYGEN,
    UMOUNT,
    UNSHARE,
    cmdline,
    ensure_netns,
    in_netns,
    in_ns,
    ip,
    ip_json,
    is_under,
    keygen,
    link_exists,
    mntns_at,
    mounts,
    pid_alive,
    ppid,
    proc_is,
    read_pid,
    send_signal,
    stop_pid,
    tail,
    thaw,
    unmount_under,
    wait_gone,
)

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_RUN_ROOT",
    "DEFAULT_STATE_ROOT",
    "DEFAULT_SUBNET",
    "DOCKER_CLI",
    "HOSTS",
    "LOCAL_DIR",
    "NETNS_DIR",
    "DaemonStatus",
    "HostPaths",
    "HostStatus",
    "Lab",
    "LabConfig",
    "LabHost",
    "LabStatus",
    "docker_client",
    "lab_env",
    "migrate_executable",
    "pid_alive",
    "resolve_config",
    "shell_exports",
]

log = logging.getLogger(__name__)


LINK_IFACE = "lab0"  # host <-> host
MGMT_IFACE = "mgmt0"  # host <-> root namespace
PRIVSEP_DIR = Path("/run/sshd")
PIPE_MAX_SIZE = 4194304  # CRIU lazy pages need pipes this big (PLATFORM.md)
PIPE_MAX_SIZE_FILE = Path("/proc/sys/fs/pipe-max-size")

NSENTER = Path("/usr/bin/nsenter")
SSH = Path("/usr/bin/ssh")
SSH_KEYSCAN = Path("/usr/bin/ssh-keyscan")
# /usr/bin/docker is the CLI that matches Debian's daemon (another CLI may shadow it on PATH).
DOCKER_CLI = Path("/usr/bin/docker")
# runc finds criu on PATH: the daemons must see /usr/local/sbin (CRIU 4.2 lives there) first.
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DOCKERD_START_TIMEOUT_S = 60.0
SSHD_START_TIMEOUT_S = 15.0
DOCKER_API_TIMEOUT_S = 10


# --- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonStatus:
    kind: str  # "dockerd" | "sshd"
    pid: int | None
    healthy: bool
    detail: str


@dataclass(frozen=True)
class HostStatus:
    host: str
    netns: str
    addr: str
    netns_present: bool
    dockerd: DaemonStatus
    sshd: DaemonStatus
    mntns_present: bool = False  # the host's mount namespace handle is there
    local_bound: bool = False  # and LOCAL_DIR shows this host's own directory in it

    @property
    def healthy(self) -> bool:
        return (
            self.netns_present
            and self.mntns_present
            and self.local_bound
            and self.dockerd.healthy
            and self.sshd.healthy
        )


@dataclass(frozen=True)
class LabStatus:
    name: str
    subnet: str
    hosts: tuple[HostStatus, ...]

    @property
    def healthy(self) -> bool:
        return all(h.healthy for h in self.hosts)

    @property
    def down(self) -> bool:
        """Nothing of the lab is left: no namespace, no daemon."""
        return not any(
            h.netns_present
            or h.mntns_present
            or h.dockerd.pid is not None
            or h.sshd.pid is not None
            for h in self.hosts
        )


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
            self._check_subnet_free()
            _ensure_pipe_max_size()
            for d in (c.state_dir, c.run_dir, c.ssh_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o755)
            atomic_write(c.saved_config, json.dumps(c.to_json(), indent=2) + "\n")
            self._ensure_keys()
            self._ensure_network()
            # A host whose mount namespace is missing (a lab from before them, a reboot) has
            # its daemons replaced anyway: stop them first, so that what they have mounted
            # in the root namespace is gone before a new namespace copies the mount table.
            for h in HOSTS:
                if mntns_at(c.paths(h).mntns) is None:
                    self._stop_host(h)
            for h in HOSTS:
                self._ensure_mntns(h)
            started = [h for h in HOSTS if self._ensure_dockerd(h)]
            for h in HOSTS:
                self._ensure_sshd(h)
            for h in started:
                self._wait_dockerd(h)
            self._write_known_hosts()
            st = self._status()
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
            self._remove_network()
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
            st = self._status()
        if purge:
            with contextlib.suppress(FileNotFoundError):
                c.lock_file.unlink()
        return st

    def status(self) -> LabStatus:
        return self._status()

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

    # -- status

    def _status(self) -> LabStatus:
        c = self.config
        hosts = []
        for h in HOSTS:
            present = (NETNS_DIR / c.netns(h)).exists()
            mntns = mntns_at(c.paths(h).mntns) is not None
            hosts.append(
                HostStatus(
                    host=h,
                    netns=c.netns(h),
                    addr=c.addr(h),
                    netns_present=present,
                    dockerd=self._dockerd_status(h),
                    sshd=self._sshd_status(h, present),
                    mntns_present=mntns,
                    local_bound=mntns and self._local_bound(h),
                )
            )
        return LabStatus(c.name, c.subnet, tuple(hosts))

    def _dockerd_pid(self, h: str) -> int | None:
        p = self.config.paths(h)
        pid = read_pid(p.docker_pidfile)
        if pid is None or not proc_is(pid, "dockerd", str(p.socket)):
            return None
        return pid

    def _sshd_pid(self, h: str) -> int | None:
        p = self.config.paths(h)
        pid = read_pid(p.sshd_pidfile)
        if pid is None or not proc_is(pid, "sshd", str(p.sshd_config)):
            return None
        return pid

    def _dockerd_status(self, h: str) -> DaemonStatus:
        pid = self._dockerd_pid(h)
        if pid is None:
            return DaemonStatus("dockerd", None, False, "not running")
        if not self._in_host_ns(pid, h):
            return DaemonStatus("dockerd", pid, False, "running outside the host's namespaces")
        ok, detail = _docker_ping(self.config.docker_host(h))
        return DaemonStatus("dockerd", pid, ok, detail)

    def _sshd_status(self, h: str, netns_present: bool) -> DaemonStatus:
        pid = self._sshd_pid(h)
        if pid is None:
            return DaemonStatus("sshd", None, False, "not running")
        if not netns_present or not self._in_host_ns(pid, h):
            return DaemonStatus("sshd", pid, False, "running outside the host's namespaces")
        ok, detail = self._ssh_banner(h)
        return DaemonStatus("sshd", pid, ok, detail)

    def _ssh_banner(self, h: str) -> tuple[bool, str]:
        """Scan the host key from inside the namespace: proves sshd answers on the lab
        address with the key that known_hosts lists."""
        c = self.config
        try:
            want = c.paths(h).host_key.with_suffix(".pub").read_text().split()[1]
        except (OSError, IndexError):
            return False, "host key missing"
        cmd = [
            str(NSENTER),
            f"--net={NETNS_DIR / c.netns(h)}",
            "--",
            str(SSH_KEYSCAN),
            "-T",
            "3",
            "-t",
            "ed25519",
            "-p",
            str(SSH_PORT),
            c.addr(h),
        ]
        try:
            r = subprocess.run(
                cmd,
                check=False,
                timeout=10,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False, "ssh-keyscan timed out"
        keys = [ln.split()[2] for ln in r.stdout.splitlines() if len(ln.split()) >= 3]
        if want in keys:
            return True, f"ssh {c.addr(h)}:{SSH_PORT}"
        if keys:
            return False, "answers with an unexpected host key"
        return False, f"no SSH banner on {c.addr(h)}:{SSH_PORT}"

    # -- subnet, keys, network

    def _check_subnet_free(self) -> None:
        c = self.config
        ours = {c.root_iface(h) for h in HOSTS}
        net = c.network
        for route in ip_json(["-4", "route", "show"]):
            dst, dev = str(route.get("dst", "")), str(route.get("dev", ""))
            if not dst or dst == "default" or dev in ours:
                continue
            try:
                other = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if other.overlaps(net):
                raise LabError(
                    f"lab subnet {c.subnet} overlaps route {dst} on {dev or '?'}",
                    hint="choose another --subnet (each lab needs its own)",
                )

    def _ensure_keys(self) -> None:
        c = self.config
        if not c.client_key.exists():
            keygen(c.client_key, f"migrate-lab-{c.name}")
        pub = c.client_key.with_suffix(".pub").read_text()
        if not c.authorized_keys.exists() or c.authorized_keys.read_text() != pub:
            atomic_write(c.authorized_keys, pub)
        for h in HOSTS:
            p = c.paths(h)
            p.state.mkdir(parents=True, exist_ok=True)
            p.run.mkdir(parents=True, exist_ok=True)
            if not p.host_key.exists():
                keygen(p.host_key, f"migrate-lab-{c.name}-{h}")

    def _write_known_hosts(self) -> None:
        c = self.config
        lines = []
        for h in HOSTS:
            kind, blob = c.paths(h).host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{c.addr(h)} {kind} {blob}\n")
        text = "".join(lines)
        if not c.known_hosts.exists() or c.known_hosts.read_text() != text:
            atomic_write(c.known_hosts, text)

    def _ensure_network(self) -> None:
        c = self.config
        a, b = c.netns("a"), c.netns("b")
        for h in HOSTS:
            ensure_netns(c.netns(h))
        # host <-> host
        if not (link_exists(LINK_IFACE, a) and link_exists(LINK_IFACE, b)):
            for ns in (a, b):
                if link_exists(LINK_IFACE, ns):
                    ip(["link", "del", LINK_IFACE], netns=ns)
            ip(
                [
                    "link",
                    "add",
                    LINK_IFACE,
                    "netns",
                    a,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    LINK_IFACE,
                    "netns",
                    b,
                ]
            )
        prefix = c.network.prefixlen
        for h in HOSTS:
            ns, addr = c.netns(h), c.addr(h)
            ip(["link", "set", "lo", "up"], netns=ns)
            ip(["addr", "replace", f"{addr}/{prefix}", "dev", LINK_IFACE], netns=ns)
            ip(["link", "set", LINK_IFACE, "up"], netns=ns)
        # root <-> each host: point-to-point /32 routes, no bridge, no forwarding
        for h in HOSTS:
            ns, addr, rif = c.netns(h), c.addr(h), c.root_iface(h)
            if not (link_exists(rif) and link_exists(MGMT_IFACE, ns)):
                if link_exists(rif):
                    ip(["link", "del", rif])
                if link_exists(MGMT_IFACE, ns):
                    ip(["link", "del", MGMT_IFACE], netns=ns)
                ip(["link", "add", rif, "type", "veth", "peer", "name", MGMT_IFACE, "netns", ns])
            ip(["link", "set", MGMT_IFACE, "up"], netns=ns)
            ip(["route", "replace", f"{c.root_addr}/32", "dev", MGMT_IFACE, "src", addr], netns=ns)
            ip(["addr", "replace", f"{c.root_addr}/32", "dev", rif])
            ip(["link", "set", rif, "up"])
            ip(["route", "replace", f"{addr}/32", "dev", rif, "src", c.root_addr])

    def _remove_network(self) -> None:
        c = self.config
        for h in HOSTS:
            # Delete links explicitly: a namespace still held by some process would keep
            # them (and their root-side peers) alive after `ip netns del`.
            ns = c.netns(h)
            if link_exists(c.root_iface(h)):
                ip(["link", "del", c.root_iface(h)])
            if (NETNS_DIR / ns).exists():
                if link_exists(LINK_IFACE, ns):
                    ip(["link", "del", LINK_IFACE], netns=ns)
                ip(["netns", "del", ns])

    # -- mount namespaces

    def _host_argv(self, h: str, argv: Sequence[str]) -> list[str]:
        """A daemon's argv, started in the host's network and mount namespaces."""
        c = self.config
        return [
            str(NSENTER),
            f"--net={NETNS_DIR / c.netns(h)}",
            f"--mount={c.paths(h).mntns}",
            "--",
            *argv,
        ]

    def _in_host_ns(self, pid: int, h: str) -> bool:
        c = self.config
        return in_netns(pid, NETNS_DIR / c.netns(h)) and in_ns(pid, "mnt", c.paths(h).mntns)

    def _ensure_mntns(self, h: str) -> None:
        """The host's mount namespace, kept by a bind mount of it (no process), with the
        host's own directory bound at LOCAL_DIR. A handle that is not a mount namespace
        (a plain file left by an earlier boot) is replaced; daemons still running in an
        older namespace are then replaced by the checks of _ensure_dockerd / _ensure_sshd."""
        c = self.config
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
        if not self._local_bound(h):
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

    def _local_bound(self, h: str) -> bool:
        """LOCAL_DIR inside the host's mount namespace is the host's own directory."""
        p = self.config.paths(h)
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

    # -- dockerd

    def _ensure_dockerd(self, h: str) -> bool:
        """Start dockerd unless a healthy one with the right arguments runs; True if started."""
        c = self.config
        p = c.paths(h)
        argv = dockerd_argv(c, h)
        pid = self._dockerd_pid(h)
        if pid is not None:
            same = cmdline(pid) == argv and self._in_host_ns(pid, h)
            if same and _docker_ping(c.docker_host(h))[0]:
                log.debug("lab %s/%s: dockerd %d is healthy", c.name, h, pid)
                return False
            log.info("lab %s/%s: replacing dockerd %d (stale or unhealthy)", c.name, h, pid)
            self._stop_dockerd(h)
        # With live-restore the shims of a daemon that stopped keep its containers running and
        # the new daemon adopts them: only the containerd goes.
        self._stop_leftover_containerd(h, keep_shims=c.live_restore)
        for stale in (p.docker_pidfile, p.socket):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        for d in (p.data_root, p.exec_root):
            d.mkdir(parents=True, exist_ok=True, mode=0o710)
        # An empty config file shields the lab from /etc/docker/daemon.json.
        if not p.daemon_json.exists():
            p.daemon_json.write_text("{}\n")
        with open(p.dockerd_log, "ab") as logf:
            proc = subprocess.Popen(
                self._host_argv(h, argv),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=_daemon_env(),
                start_new_session=True,
                close_fds=True,
            )
        log.info("lab %s/%s: started dockerd %d", c.name, h, proc.pid)
        return True

    def _wait_dockerd(self, h: str) -> None:
        c = self.config
        p = c.paths(h)
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
        detail = ""
        while time.monotonic() < deadline:
            pid = read_pid(p.docker_pidfile)
            if pid is not None and not pid_alive(pid):
                break
            ok, detail = _docker_ping(c.docker_host(h))
            if ok:
                return
            time.sleep(POLL_S * 2)
        raise LabError(
            f"lab {c.name}/{h}: dockerd did not come up ({detail or 'exited'})",
            hint=f"see {p.dockerd_log}",
            details={"log_tail": tail(p.dockerd_log)},
        )

    def _stop_dockerd(self, h: str) -> None:
        c = self.config
        pid = self._dockerd_pid(h)
        if pid is None:
            return
        # dockerd stops running containers on SIGTERM with their stop timeout (10 s for a
        # shell that ignores SIGTERM): kill them first, it is a sandbox.
        _kill_containers(c.docker_host(h))
        stop_pid(pid, f"dockerd {c.name}/{h}")

    def _stop_leftover_containerd(self, h: str, keep_shims: bool = False) -> None:
        """containerd and shims outlive a dockerd that was killed; stop them by pidfile."""
        p = self.config.paths(h)
        address = str(p.containerd_socket)
        if p.shim_dir.is_dir() and not keep_shims:
            # This containerd writes no shim.pid: the shim is the parent of the container's
            # init (init.pid), which it must be to count as ours.
            for bundle in sorted(p.shim_dir.glob("*/*")):
                init = read_pid(bundle / "init.pid")
                shim = ppid(init) if init is not None and pid_alive(init) else None
                if init is None or shim is None or not proc_is(shim, "containerd-shim", address):
                    continue
                if bundle.name not in cmdline(shim):
                    continue
                thaw(init)
                send_signal(init, signal.SIGKILL)
                wait_gone(init, KILL_TIMEOUT_S)
                stop_pid(shim, f"containerd-shim {bundle.name[:12]}")
        pid = read_pid(p.containerd_pidfile)
        if pid is not None and proc_is(pid, "containerd", str(p.exec_root)):
            stop_pid(pid, f"containerd {self.config.name}/{h}")
        # dockerd trusts this pidfile when kill(pid, 0) succeeds, which it does for a zombie;
        # PID 1 here reaps orphans late, so dockerd would wait for a containerd that is dead.
        with contextlib.suppress(FileNotFoundError):
            p.containerd_pidfile.unlink()

    def _stop_host(self, h: str) -> None:
        c = self.config
        p = c.paths(h)
        self._stop_dockerd(h)
        self._stop_leftover_containerd(h)
        pid = self._sshd_pid(h)
        if pid is not None:
            stop_pid(pid, f"sshd {c.name}/{h}")
        # What a killed dockerd left mounted (container rootfs, shm, netns files).
        unmount_under((p.data_root, p.exec_root))
        for stale in (p.docker_pidfile, p.socket, p.sshd_pidfile):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    # -- sshd

    def _ensure_sshd(self, h: str) -> None:
        c = self.config
        p = c.paths(h)
        text = sshd_config_text(c, h)
        changed = not p.sshd_config.exists() or p.sshd_config.read_text() != text
        if changed:
            atomic_write(p.sshd_config, text)
        pid = self._sshd_pid(h)
        if pid is not None:
            if not changed and self._in_host_ns(pid, h) and self._ssh_banner(h)[0]:
                return
            stop_pid(pid, f"sshd {c.name}/{h}")
        with contextlib.suppress(FileNotFoundError):
            p.sshd_pidfile.unlink()
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        proc = subprocess.Popen(
            self._host_argv(h, sshd_argv(c, h)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_daemon_env(),
            start_new_session=True,
            close_fds=True,
        )
        deadline = time.monotonic() + SSHD_START_TIMEOUT_S
        detail = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last = " ".join(tail(p.sshd_log).strip().splitlines()[-2:])
                detail = f"exited with {proc.returncode}: {last}"
                break
            # sshd writes its pidfile once it listens: only then is the banner surely its own.
            if read_pid(p.sshd_pidfile) == proc.pid:
                ok, detail = self._ssh_banner(h)
                if ok:
                    log.info("lab %s/%s: started sshd %d", c.name, h, proc.pid)
                    return
            time.sleep(POLL_S)
        raise LabError(
            f"lab {c.name}/{h}: sshd did not come up ({detail})",
            hint=f"see {p.sshd_log}; if the address is in use, find the listener with "
            f"`nsenter --net={NETNS_DIR / c.netns(h)} ss -ltnp`",
            details={"log_tail": tail(p.sshd_log)},
        )


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


def _ensure_private_dir(d: Path) -> None:
    """``d`` as a mount of its own that propagates nowhere (what `ip netns` does for
    /run/netns): a mount namespace bind-mounted where mounts propagate could end up inside
    itself, and the kernel refuses that."""
    d.mkdir(parents=True, exist_ok=True, mode=0o755)
    if str(d) not in mounts():
        _run([str(MOUNT), "--bind", str(d), str(d)])
    _run([str(MOUNT), "--make-private", str(d)])


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


def _daemon_env() -> dict[str, str]:
    return {"PATH": DAEMON_PATH, "HOME": "/root", "LANG": "C.UTF-8"}


# --- helpers: docker ---------------------------------------------------------------------


def docker_client(docker_host: str, timeout: int = DOCKER_API_TIMEOUT_S) -> Any:
    """A Docker SDK client for one lab daemon (never pulls unless asked)."""
    import docker

    return docker.DockerClient(base_url=docker_host, timeout=timeout)


def _docker_ping(docker_host: str) -> tuple[bool, str]:
    sock = docker_host.removeprefix("unix://")
    if not os.path.exists(sock):
        return False, "no socket"
    try:
        client = docker_client(docker_host, timeout=5)
        try:
            info = client.info()
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy"; say which
        return False, f"no answer: {type(e).__name__}: {e}"[:200]
    version = info.get("ServerVersion", "?")
    if not info.get("ExperimentalBuild"):
        return False, f"docker {version} without --experimental"
    return True, f"docker {version}, experimental, {info.get('Driver', '?')}"


def _kill_containers(docker_host: str) -> None:
    try:
        client = docker_client(docker_host)
    except Exception as e:  # noqa: BLE001
        log.debug("cannot reach %s to kill containers: %s", docker_host, e)
        return
    try:
        for ctr in client.containers.list():
            with contextlib.suppress(Exception):
                if ctr.status == "paused":
                    ctr.unpause()
                ctr.kill()
    except Exception as e:  # noqa: BLE001 - the daemon is going away anyway
        log.debug("listing containers on %s failed: %s", docker_host, e)
    finally:
        client.close()
