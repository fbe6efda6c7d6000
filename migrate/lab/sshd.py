"""Each lab host's sshd and the lab's keys: the client key, the host keys, known_hosts;
sshd started in the host's namespaces and proven up by the host key it answers with."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from pathlib import Path

from migrate.core.errors import LabError
from migrate.fs.files import atomic_write
from migrate.lab.config import HOSTS, SSH_PORT, LabConfig, sshd_argv, sshd_config_text
from migrate.lab.namespaces import NSENTER, daemon_env, host_argv, in_host_ns
from migrate.lab.system import (
    NETNS_DIR,
    POLL_S,
    keygen,
    proc_is,
    read_pid,
    stop_pid,
    tail,
)

log = logging.getLogger(__name__)

PRIVSEP_DIR = Path("/run/sshd")
SSH_KEYSCAN = Path("/usr/bin/ssh-keyscan")
SSHD_START_TIMEOUT_S = 15.0


def sshd_pid(c: LabConfig, h: str) -> int | None:
    p = c.paths(h)
    pid = read_pid(p.sshd_pidfile)
    if pid is None or not proc_is(pid, "sshd", str(p.sshd_config)):
        return None
    return pid


def ssh_banner(c: LabConfig, h: str) -> tuple[bool, str]:
    """Scan the host key from inside the namespace: proves sshd answers on the lab
    address with the key that known_hosts lists."""
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


def ensure_keys(c: LabConfig) -> None:
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


def write_known_hosts(c: LabConfig) -> None:
    lines = []
    for h in HOSTS:
        kind, blob = c.paths(h).host_key.with_suffix(".pub").read_text().split()[:2]
        lines.append(f"{c.addr(h)} {kind} {blob}\n")
    text = "".join(lines)
    if not c.known_hosts.exists() or c.known_hosts.read_text() != text:
        atomic_write(c.known_hosts, text)


def ensure_sshd(c: LabConfig, h: str) -> None:
    p = c.paths(h)
    text = sshd_config_text(c, h)
    changed = not p.sshd_config.exists() or p.sshd_config.read_text() != text
    if changed:
        atomic_write(p.sshd_config, text)
    pid = sshd_pid(c, h)
    if pid is not None:
        if not changed and in_host_ns(c, pid, h) and ssh_banner(c, h)[0]:
            return
        stop_pid(pid, f"sshd {c.name}/{h}")
    with contextlib.suppress(FileNotFoundError):
        p.sshd_pidfile.unlink()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        host_argv(c, h, sshd_argv(c, h)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=daemon_env(),
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
            ok, detail = ssh_banner(c, h)
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
