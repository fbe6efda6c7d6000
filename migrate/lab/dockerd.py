"""Each lab host's dockerd: started in the host's namespaces, waited for, checked, stopped by
the PID in its pidfile with what a killed one leaves behind (containerd, shims); and the
Docker SDK client the lab and the tests reach a daemon with."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from migrate.core.errors import LabError
from migrate.lab.config import LabConfig, dockerd_argv
from migrate.lab.namespaces import daemon_env, host_argv, in_host_ns
from migrate.lab.system import (
    KILL_TIMEOUT_S,
    POLL_S,
    cmdline,
    pid_alive,
    ppid,
    proc_is,
    read_pid,
    send_signal,
    stop_pid,
    tail,
    thaw,
    wait_gone,
)

log = logging.getLogger(__name__)

# /usr/bin/docker is the CLI that matches Debian's daemon (another CLI may shadow it on PATH).
DOCKER_CLI = Path("/usr/bin/docker")
DOCKERD_START_TIMEOUT_S = 60.0
DOCKER_API_TIMEOUT_S = 10


def dockerd_pid(c: LabConfig, h: str) -> int | None:
    p = c.paths(h)
    pid = read_pid(p.docker_pidfile)
    if pid is None or not proc_is(pid, "dockerd", str(p.socket)):
        return None
    return pid


def ensure_dockerd(c: LabConfig, h: str) -> bool:
    """Start dockerd unless a healthy one with the right arguments runs; True if started."""
    p = c.paths(h)
    argv = dockerd_argv(c, h)
    pid = dockerd_pid(c, h)
    if pid is not None:
        same = cmdline(pid) == argv and in_host_ns(c, pid, h)
        if same and docker_ping(c.docker_host(h))[0]:
            log.debug("lab %s/%s: dockerd %d is healthy", c.name, h, pid)
            return False
        log.info("lab %s/%s: replacing dockerd %d (stale or unhealthy)", c.name, h, pid)
        stop_dockerd(c, h)
    # With live-restore the shims of a daemon that stopped keep its containers running and
    # the new daemon adopts them: only the containerd goes.
    stop_leftover_containerd(c, h, keep_shims=c.live_restore)
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
            host_argv(c, h, argv),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=daemon_env(),
            start_new_session=True,
            close_fds=True,
        )
    log.info("lab %s/%s: started dockerd %d", c.name, h, proc.pid)
    return True


def wait_dockerd(c: LabConfig, h: str) -> None:
    p = c.paths(h)
    deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
    detail = ""
    while time.monotonic() < deadline:
        pid = read_pid(p.docker_pidfile)
        if pid is not None and not pid_alive(pid):
            break
        ok, detail = docker_ping(c.docker_host(h))
        if ok:
            return
        time.sleep(POLL_S * 2)
    raise LabError(
        f"lab {c.name}/{h}: dockerd did not come up ({detail or 'exited'})",
        hint=f"see {p.dockerd_log}",
        details={"log_tail": tail(p.dockerd_log)},
    )


def stop_dockerd(c: LabConfig, h: str) -> None:
    pid = dockerd_pid(c, h)
    if pid is None:
        return
    # dockerd stops running containers on SIGTERM with their stop timeout (10 s for a
    # shell that ignores SIGTERM): kill them first, it is a sandbox.
    kill_containers(c.docker_host(h))
    stop_pid(pid, f"dockerd {c.name}/{h}")


def stop_leftover_containerd(c: LabConfig, h: str, keep_shims: bool = False) -> None:
    """containerd and shims outlive a dockerd that was killed; stop them by pidfile."""
    p = c.paths(h)
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
        stop_pid(pid, f"containerd {c.name}/{h}")
    # dockerd trusts this pidfile when kill(pid, 0) succeeds, which it does for a zombie;
    # PID 1 here reaps orphans late, so dockerd would wait for a containerd that is dead.
    with contextlib.suppress(FileNotFoundError):
        p.containerd_pidfile.unlink()


def docker_client(docker_host: str, timeout: int = DOCKER_API_TIMEOUT_S) -> Any:
    """A Docker SDK client for one lab daemon (never pulls unless asked)."""
    import docker

    return docker.DockerClient(base_url=docker_host, timeout=timeout)


def docker_ping(docker_host: str) -> tuple[bool, str]:
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


def kill_containers(docker_host: str) -> None:
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
