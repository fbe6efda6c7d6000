"""What `migrate lab status` reports: each host's namespaces and daemons, checked (a daemon
counts only when its pidfile names it, it runs in the host's namespaces and it answers)."""

from __future__ import annotations

from dataclasses import dataclass

from migrate.lab.config import HOSTS, LabConfig
from migrate.lab.dockerd import docker_ping, dockerd_pid
from migrate.lab.namespaces import in_host_ns, local_bound
from migrate.lab.sshd import ssh_banner, sshd_pid
from migrate.lab.system import NETNS_DIR, mntns_at


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


def lab_status(c: LabConfig) -> LabStatus:
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
                dockerd=dockerd_status(c, h),
                sshd=sshd_status(c, h, present),
                mntns_present=mntns,
                local_bound=mntns and local_bound(c, h),
            )
        )
    return LabStatus(c.name, c.subnet, tuple(hosts))


def dockerd_status(c: LabConfig, h: str) -> DaemonStatus:
    pid = dockerd_pid(c, h)
    if pid is None:
        return DaemonStatus("dockerd", None, False, "not running")
    if not in_host_ns(c, pid, h):
        return DaemonStatus("dockerd", pid, False, "running outside the host's namespaces")
    ok, detail = docker_ping(c.docker_host(h))
    return DaemonStatus("dockerd", pid, ok, detail)


def sshd_status(c: LabConfig, h: str, netns_present: bool) -> DaemonStatus:
    pid = sshd_pid(c, h)
    if pid is None:
        return DaemonStatus("sshd", None, False, "not running")
    if not netns_present or not in_host_ns(c, pid, h):
        return DaemonStatus("sshd", pid, False, "running outside the host's namespaces")
    ok, detail = ssh_banner(c, h)
    return DaemonStatus("sshd", pid, ok, detail)
